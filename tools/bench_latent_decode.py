"""Latent-action decoding: a batch of prompts decoded together against one prompt at a time, same model, same run.

``LatentActionSpace.act`` decodes ``decode_batch_size`` responses together: one backbone step per token for the
whole batch (left-padded, KV-cached). Before, it decoded each prompt alone. Both paths here act on the same env
states with the same latent weights (random: speed does not depend on what they learned); greedy codes, so both
write the same tokens, a fixed number per response (EOS is banned until ``--new-tokens``).

    python tools/bench_latent_decode.py                        # CPU, tiny LLaVA, 16 prompts, 32 tokens each
    python tools/bench_latent_decode.py --model tiny:llava_next --prompts 32 --device cuda
    python tools/bench_latent_decode.py --batch-sizes 16 --logprobs code token   # the cost of logprob: token

``logprob: token`` reads out every code's token at each step (to score the decoded token's total probability);
``--logprobs`` times each setting in the same run.

Prints a table, then one JSON line (``speedup`` of the batch over one at a time).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from selu_lightning.action_spaces import LatentActionSpace
from selu_lightning.cli import quiet_noise
from selu_lightning.envs.pool import EnvPool
from selu_lightning.modules import ActorPPO
from selu_lightning.policy.vlm import PolicyConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from latent_helpers import latent_checkpoint  # noqa: E402  (random latent weights in a LatentActionPretrain checkpoint)


def _seconds(agent: ActorPPO, pool: EnvPool, repeats: int) -> float:
    agent.decide(pool.states, pool.task_description, greedy=True, rng=np.random.default_rng(0))  # warm-up
    if agent.policy.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        agent.decide(pool.states, pool.task_description, greedy=True, rng=np.random.default_rng(0))
    if agent.policy.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:llava")
    parser.add_argument("--env", default="blackjack")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--logprobs", nargs="+", default=["code"], choices=["code", "token"])
    parser.add_argument("--codes", type=int, default=8, help="K, the codebook size (the CPU recipes: 32)")
    args = parser.parse_args()
    policy = PolicyConfig(args.model, lora=None, value_head_widths=[16])
    pool = EnvPool(args.env, args.prompts, seed=0)
    pool.reset()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(latent_checkpoint(Path(tmp) / "latent.ckpt", policy, num_codes=args.codes))
        print(f"{'decode_batch_size':>17} {'logprob':>8} {'s per act':>10} {'tokens/s':>9} {'speedup':>8}")
        first = None
        for logprob in args.logprobs:
            for size in args.batch_sizes:
                space = LatentActionSpace(ckpt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                          decode_batch_size=size, logprob=logprob)  # fmt: skip
                agent = ActorPPO(policy, space)
                agent.configure_model()
                agent.to(args.device)
                seconds = _seconds(agent, pool, args.repeats)
                key = f"{size}/{logprob}"
                first = first or seconds
                rows[key] = {"s_per_act": round(seconds, 3), "tokens_per_s": round(args.prompts * args.new_tokens / seconds, 1),
                             "speedup": round(first / seconds, 2)}  # fmt: skip
                print(f"{size:>17} {logprob:>8} {seconds:>10.3f} {rows[key]['tokens_per_s']:>9.1f} {rows[key]['speedup']:>8.2f}",
                      flush=True)  # fmt: skip
    print(json.dumps({"bench": "latent_decode", "date": str(date.today()), "machine": platform.processor() or
                      platform.machine(), "threads": torch.get_num_threads(), **vars(args), "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
