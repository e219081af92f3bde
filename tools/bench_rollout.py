"""Rollout throughput: the batched rollout against an RL4VLM-style reference loop, same model, same run.

The reference loop is what RL4VLM does per step: one env, a batch-1 ``generate``, then a second full forward
over prompt + a fixed-length padded output (512 tokens) to get log-probs and the value. Ours: N envs, one
batched generate per step, one right-padded scoring forward over the real tokens only.

    python tools/bench_rollout.py                       # CPU, tiny LLaVA-NeXT, N in {1, 8, 32}
    python tools/bench_rollout.py --device cuda --dtype bfloat16 --model /path/to/llava-v1.6-mistral-7b-hf
    python tools/bench_rollout.py --device cuda --dtype bfloat16 --model full:llava_next_mistral_7b \
        --n 32 --steps 64 --ref-steps 2 --new-tokens 256 --lora-r 128   # random 7B weights, no download

Prints a table, then one JSON line (``speedup_vs_reference`` per N).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import numpy as np
import torch

from selu_lightning.cli import quiet_noise
from selu_lightning.action_spaces.parsing import parse_action
from selu_lightning.data.rollout import collect_rollout
from selu_lightning.envs.pool import EnvPool
from selu_lightning.modules.actor_ppo import ActorPPO, eval_mode

from bench_common import FULL_PREFIX, build_text_module, cuda_peak_gib, gpu_ceilings


def ours(module: ActorPPO, env: str, n: int, steps: int) -> dict[str, float]:
    pool = EnvPool(env, n, seed=0)
    pool.reset()
    rng = np.random.default_rng(0)
    collect_rollout(module, pool, 1, rng)  # warm-up
    _sync(module)
    start = time.perf_counter()
    rollout = collect_rollout(module, pool, max(steps // n, 1), rng)
    _sync(module)
    seconds = time.perf_counter() - start
    stats = rollout.stats()
    samples = [d.sample for row in rollout.decisions for d in row]
    stored = np.mean([_nbytes(s) for s in samples])
    # what the same transitions would hold with the processor's pixel values instead of uint8 frames
    with_pixels = np.mean([_nbytes(s) for s in _with_pixel_values(module, samples[: min(len(samples), 64)])])
    return {"env_steps_per_s": stats["steps"] / seconds, "gen_tokens_per_s": stats["generated_tokens"] / seconds,
            "host_bytes_per_transition": float(stored), "host_bytes_per_transition_pixel_values": float(with_pixels)}


def _nbytes(sample: dict) -> int:
    """Host bytes one stored transition keeps (prompt tensors, output ids, weights)."""
    total = 0
    for value in sample.values():
        if isinstance(value, dict):
            total += _nbytes(value)
        elif isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, list):
            total += sum(v.numel() * v.element_size() for v in value if isinstance(v, torch.Tensor))
    return total


def _with_pixel_values(module: ActorPPO, samples: list[dict]) -> list[dict]:
    return [dict(s, prompt=module.policy.materialize([s["prompt"]])[0]) for s in samples]


@torch.no_grad()
def reference(module: ActorPPO, env: str, steps: int, new_tokens: int, pad_to: int) -> dict[str, float]:
    """One env; batch-1 generate; then a full forward over prompt + response padded to ``pad_to`` tokens."""
    policy = module.policy
    pool = EnvPool(env, 1, seed=0)
    state = pool.reset()[0]
    tokens, rng = 0, np.random.default_rng(0)

    def step() -> int:
        nonlocal state
        prompt = policy.materialize([_prompt(module, state, pool.task_description)])[0]
        with eval_mode(module):
            response = policy.generate([prompt], max_new_tokens=new_tokens, temperature=1.0, greedy=False,
                                       min_new_tokens=new_tokens)[0]  # fmt: skip
            padded = torch.full((pad_to,), policy._pad_id, dtype=torch.long)
            padded[: response.numel()] = response
            ids = torch.cat([prompt["input_ids"], padded])[None].to(policy.device)
            extra = {k: v.to(policy.device) for k, v in prompt.items() if k not in ("input_ids", "attention_mask")}
            out = policy.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, **extra)
            logp = torch.log_softmax(out.logits[0, prompt["input_ids"].numel() - 1 : -1].float(), -1)
            logp.gather(-1, padded.to(logp.device)[:, None]).sum()
            policy.value_head(out.hidden_states[-1][0, prompt["input_ids"].numel() - 1])
        text = policy.tokenizer.decode(response, skip_special_tokens=True)
        action = parse_action(text, state.legal_actions) or str(rng.choice(state.legal_actions))
        pool.step([action])
        state = pool.states[0]
        return int(response.numel())

    step()  # warm-up
    _sync(module)
    start = time.perf_counter()
    for _ in range(steps):
        tokens += step()
    _sync(module)
    seconds = time.perf_counter() - start
    return {"env_steps_per_s": steps / seconds, "gen_tokens_per_s": tokens / seconds}


def _prompt(module: ActorPPO, state, task: str) -> dict:
    """One state's prompt tensors, as the module encodes them for ``decide``."""
    if hasattr(module, "_prompts"):  # before prompts were encoded by the action space
        return module._prompts([state], task)[0]
    return module.action_space.encode(module.policy, [state], task)[0]


def decode_fraction(module: ActorPPO, gen_tokens_per_s: float, n: int, hbm_gbps: float) -> float:
    """Decode throughput over the memory-bandwidth bound (every weight read once per decoding step)."""
    weight_bytes = sum(p.numel() * p.element_size() for p in module.policy.model.parameters())
    steps_per_s_bound = hbm_gbps * 1e9 / weight_bytes
    return (gen_tokens_per_s / n) / steps_per_s_bound


def _sync(module: ActorPPO) -> None:
    if module.policy.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:llava_next",
                        help=f"checkpoint folder, hub id, tiny:<arch>, or {FULL_PREFIX}<name> (see bench_common.py)")
    parser.add_argument("--env", default="numberline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=512, help="env steps measured per N (RL4VLM: 512 per update)")
    parser.add_argument("--ref-steps", type=int, default=32, help="env steps measured for the reference loop")
    parser.add_argument("--new-tokens", type=int, default=32, help="fixed generation length")
    parser.add_argument("--pad-to", type=int, default=512, help="the reference's padded output length")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--hbm-gbps", type=float, default=None,
                        help="GPU memory bandwidth, GB/s (default: by GPU name: H200 4800, H100 SXM 3350)")
    parser.add_argument("--measured-hbm-gbps", type=float, default=None,
                        help="measured copy bandwidth, GB/s, for a second fraction (default: H200 4300, else none)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.device.startswith("cuda"):
        spec_gbps, measured_gbps, _, _ = gpu_ceilings(args.device)
        args.hbm_gbps = args.hbm_gbps or spec_gbps
        args.measured_hbm_gbps = args.measured_hbm_gbps or measured_gbps
    module = build_text_module(args)

    ref = reference(module, args.env, args.ref_steps, args.new_tokens, args.pad_to)
    rows = {n: ours(module, args.env, n, args.steps) for n in args.n}
    print(f"model {args.model}  device {args.device}  dtype {args.dtype}  {args.new_tokens} new tokens/step")
    print(f"{'loop':>14} {'env steps/s':>12} {'gen tokens/s':>13} {'speed-up':>9} {'host KB/transition':>19}")
    print(f"{'reference':>14} {ref['env_steps_per_s']:>12.2f} {ref['gen_tokens_per_s']:>13.1f} {1.0:>9.2f}")
    speedup = {}
    for n, row in rows.items():
        speedup[str(n)] = row["env_steps_per_s"] / ref["env_steps_per_s"]
        print(f"{'ours N=' + str(n):>14} {row['env_steps_per_s']:>12.2f} {row['gen_tokens_per_s']:>13.1f} "
              f"{speedup[str(n)]:>9.2f} {row['host_bytes_per_transition'] / 1e3:>10.1f} "
              f"(pixel values: {row['host_bytes_per_transition_pixel_values'] / 1e3:.1f})")
    result = {
        "bench": "rollout", "date": date.today().isoformat(), "machine": platform.node(), "cpu": platform.processor(),
        "device": args.device, "model": args.model, "dtype": args.dtype, "new_tokens": args.new_tokens,
        "reference": ref, "ours": {str(n): r for n, r in rows.items()}, "speedup_vs_reference": speedup,
    }  # fmt: skip
    if args.device.startswith("cuda"):
        result["decode_fraction_of_bandwidth_bound"] = {
            str(n): decode_fraction(module, r["gen_tokens_per_s"], n, args.hbm_gbps) for n, r in rows.items()
        }
        result["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        result["hbm_gbps"] = args.hbm_gbps
        if args.measured_hbm_gbps:
            result["measured_hbm_gbps"] = args.measured_hbm_gbps
            result["decode_fraction_of_measured_bandwidth"] = {
                str(n): decode_fraction(module, r["gen_tokens_per_s"], n, args.measured_hbm_gbps) for n, r in rows.items()
            }
        result["peak_gib"] = cuda_peak_gib(args.device)
        result["parameters"] = sum(p.numel() for p in module.parameters())
        for n, frac in result["decode_fraction_of_bandwidth_bound"].items():
            print(f"decode N={n}: {frac:.3f} of the {args.hbm_gbps:.0f} GB/s weight-read bound"
                  + (f", {result['decode_fraction_of_measured_bandwidth'][n]:.3f} of measured {args.measured_hbm_gbps:.0f}"
                     if args.measured_hbm_gbps else ""))  # fmt: skip
        print(f"peak memory {result['peak_gib']:.1f} GiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
