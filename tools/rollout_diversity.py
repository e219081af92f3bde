"""Rollout diversity of a trained policy: distinct responses (and actions) per state when it samples as in training.

For each of ``--states`` held-out start states, ``--samples`` copies of the state are answered together with
the action space's training-time sampling (``greedy=False``), and the distinct response texts and env actions
among them are counted. The latent-action table's "distinct responses per state" row is the mean.

    python tools/rollout_diversity.py -c configs/rl4vlm_cpu/ppo_numberline.yaml --ckpt_path <run>/checkpoints/last.ckpt \\
        --states 32 --samples 8 -- --model.policy.init_from=<sft>/checkpoints/last.ckpt

Everything after ``--`` goes to the config as ``selu fit`` options would. Prints one JSON line; ``--out`` also
writes it to a file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
import torch

from selu_lightning.cli import quiet_noise
from selu_lightning.envs.pool import EnvPool, seed_stream

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as `python tools/<tool>.py` has it, for importers too
from config_tool import build, emit, split_argv  # noqa: E402


def diversity(module: Any, data: Any, states: int, samples: int, seed: int) -> dict[str, float]:
    """Mean distinct responses per state, distinct actions the policy wrote (replies that parse; a failed one
    plays a random fallback, not the policy's choice), and the samples' mean parse-failure rate."""
    pool = EnvPool(data.env, samples, seed=seed, stream="diversity", env_kwargs=data.eval_env_kwargs)
    rng = np.random.default_rng(seed_stream(seed, "diversity", 0, 0, 1))
    responses, actions, failures = [], [], []
    for i in range(states):
        start = int(seed_stream(seed, "diversity", 0, i).generate_state(1)[0])
        pool.reset_to([start] * samples)
        decisions = module.decide(pool.states, pool.task_description, greedy=False, rng=rng)
        responses.append(len({d.text for d in decisions}))
        actions.append(len({d.env_action for d in decisions if not d.parse_failed}))  # not the random fallback
        failures.append(mean(float(d.parse_failed) for d in decisions))
    return {
        "distinct_responses_per_state": float(mean(responses)),
        "distinct_actions_per_state": float(mean(actions)),
        "parse_failure_rate": mean(failures),
        "states": states,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    own, overrides = split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--ckpt_path", default=None, help="weights to load (default: the config's own start)")
    parser.add_argument("--states", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(own)
    if args.states < 1 or args.samples < 2:
        parser.error("--states must be >= 1 and --samples >= 2")
    module, data = build(args.config, args.ckpt_path, overrides)
    with torch.no_grad():
        result = diversity(module, data, args.states, args.samples, args.seed)
    emit({"config": args.config, "ckpt_path": args.ckpt_path, **result}, args.out)


if __name__ == "__main__":
    main()
