"""PPO update throughput: length-aware minibatches against batch-1 micro-steps, same buffer, same run.

Three ways through one buffer, all with the same optimizer steps (batch-1 accumulates ``--minibatch``
micro-steps per step) and the same loss values:
- ``rl4vlm``: RL4VLM's update: batch-1 micro-steps over each response padded to ``--pad-to`` tokens (its
  buffer stores padded outputs); the pads are masked out of the log-prob but computed;
- ``batch1``: batch-1 micro-steps over the real tokens only (isolates the effect of batching);
- ``ours``: minibatches of ``--minibatch`` transitions grouped by length, real tokens only.
Tokens/s counts real tokens (prompt + response) in every case.

    python tools/bench_update.py                                  # CPU, tiny LLaVA-NeXT
    python tools/bench_update.py --device cuda --dtype bfloat16 --model /path/to/llava-v1.6-mistral-7b-hf
    python tools/bench_update.py --device cuda --dtype bfloat16 --model full:llava_next_mistral_7b \
        --buffer 32 --minibatch 8 --new-tokens 256 --lora-r 128 --gradient-checkpointing   # random 7B, no download

Prints a table, then one JSON line (``speedup_vs_batch1``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from datetime import date

import numpy as np
import torch

from selu_lightning.cli import quiet_noise
from selu_lightning.data.rollout import collect_rollout

try:
    from selu_lightning.rl.minibatches import PPOEpochSampler, collate_transitions, sample_tokens
except ImportError:  # before these moved out of data.rollout
    from selu_lightning.data.rollout import PPOEpochSampler, collate_transitions, sample_tokens
from selu_lightning.envs.pool import EnvPool
from selu_lightning.rl.advantages import gae, normalize_advantages
from bench_common import FULL_PREFIX, build_text_module, gpu_ceilings


def make_buffer(module, env: str, n: int, steps: int) -> list[dict]:
    pool = EnvPool(env, n, seed=0)
    pool.reset()
    rollout = collect_rollout(module, pool, max(steps // n, 1), np.random.default_rng(0))
    adv, ret = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.truncated, 0.9, 0.95)
    adv = normalize_advantages(adv)
    return [
        {"sample": d.sample, "old_logprobs": float(rollout.logprobs[t, i]), "old_values": float(rollout.values[t, i]),
         "advantages": float(adv[t, i]), "returns": float(ret[t, i])}
        for t, row in enumerate(rollout.decisions) for i, d in enumerate(row)
    ]  # fmt: skip


def padded(items: list[dict], pad_id: int, pad_to: int) -> list[dict]:
    """The same transitions as RL4VLM stores them: each response right-padded to ``pad_to`` tokens."""
    out = []
    for it in items:
        sample = dict(it["sample"])
        n = int(sample["response"].numel())
        sample["response"] = torch.cat([sample["response"], torch.full((pad_to - n,), pad_id, dtype=torch.long)])
        sample["weights"] = torch.cat([sample["weights"], torch.zeros(pad_to - n)])
        out.append(dict(it, sample=sample, real_tokens=sample_tokens(it["sample"])))
    return out


def run_update(module, items: list[dict], micro: int, accumulate: int, group: int) -> dict[str, float]:
    """One pass over the buffer; returns tokens/s and peak memory."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    batches = list(PPOEpochSampler([sample_tokens(it["sample"]) for it in items], micro, 1,
                                   torch.Generator().manual_seed(0), group=group))  # fmt: skip
    device = module.policy.device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens, start = 0, time.perf_counter()
    for k, idx in enumerate(batches):
        batch = collate_transitions([items[i] for i in idx])
        batch = {key: (v.to(device) if torch.is_tensor(v) else v) for key, v in batch.items()}
        losses, _ = module.ppo_losses(batch)
        (torch.stack(list(losses.values())).sum() / accumulate).backward()
        tokens += sum(items[i].get("real_tokens") or sample_tokens(items[i]["sample"]) for i in idx)
        if (k + 1) % accumulate == 0 or k + 1 == len(batches):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "peak_gib": peak}


def main() -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:llava_next",
                        help=f"checkpoint folder, hub id, tiny:<arch>, or {FULL_PREFIX}<name> (see bench_common.py)")
    parser.add_argument("--env", default="ezpoints")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--buffer", type=int, default=128, help="transitions in the buffer")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--minibatch", type=int, default=16)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--pad-to", type=int, default=512, help="RL4VLM's padded response length")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="GPU peak bf16 dense TFLOP/s (default: by GPU name; H100/H200 SXM 989)")
    parser.add_argument("--measured-tflops", type=float, default=None,
                        help="measured bf16 matmul TFLOP/s, for a second fraction (default: H200 790, else none)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.device.startswith("cuda"):
        _, _, spec_tflops, measured_tflops = gpu_ceilings(args.device)
        args.peak_tflops = args.peak_tflops or spec_tflops
        args.measured_tflops = args.measured_tflops or measured_tflops
    module = build_text_module(args)
    items = make_buffer(module, args.env, min(args.buffer, 32), args.buffer)
    module.train()
    run_update(module, items[: args.minibatch], args.minibatch, 1, 8)  # warm-up
    rl4vlm = run_update(module, padded(items, module.policy._pad_id, args.pad_to), 1, args.minibatch, 1)
    batch1 = run_update(module, items, 1, args.minibatch, 1)
    ours = run_update(module, items, args.minibatch, 1, 8)
    speedup = ours["tokens_per_s"] / rl4vlm["tokens_per_s"]
    print(f"model {args.model}  device {args.device}  dtype {args.dtype}  buffer {len(items)} transitions")
    print(f"{'update':>24} {'tokens/s':>10} {'seconds':>8} {'peak GiB':>9}")
    for name, row in ((f"rl4vlm: batch-1, pad {args.pad_to}", rl4vlm), ("batch-1, real tokens", batch1),
                      (f"minibatch {args.minibatch}, by length", ours)):  # fmt: skip
        print(f"{name:>24} {row['tokens_per_s']:>10.0f} {row['seconds']:>8.2f} {row['peak_gib']:>9.2f}")
    print(f"speed-up vs RL4VLM's batch-1 update {speedup:.2f}x; from batching alone "
          f"{ours['tokens_per_s'] / batch1['tokens_per_s']:.2f}x" + ("" if args.device.startswith("cuda") else
          "  (CPU peak = process max RSS)"))  # fmt: skip
    result = {
        "bench": "update", "date": date.today().isoformat(), "machine": platform.node(), "device": args.device,
        "model": args.model, "dtype": args.dtype, "transitions": len(items), "minibatch": args.minibatch,
        "rl4vlm_batch1_padded": rl4vlm, "batch1": batch1, "ours": ours, "speedup_vs_batch1": speedup,
        "speedup_vs_batch1_unpadded": ours["tokens_per_s"] / batch1["tokens_per_s"],
    }  # fmt: skip
    if args.device.startswith("cuda"):
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in module.parameters())
        # forward 2PT + backward through activations 2PT (+ 2PT for weight grads of trained params)
        flops_per_token = 4 * total + 2 * trainable
        result["update_fraction_of_peak_flops"] = ours["tokens_per_s"] * flops_per_token / (args.peak_tflops * 1e12)
        result.update(gpu=torch.cuda.get_device_name(torch.device(args.device)), peak_tflops=args.peak_tflops,
                      parameters=total, trainable_parameters=trainable, flops_per_token=flops_per_token,
                      gradient_checkpointing=args.gradient_checkpointing, new_tokens=args.new_tokens)  # fmt: skip
        line = f"update: {result['update_fraction_of_peak_flops']:.3f} of {args.peak_tflops:.0f} TFLOP/s peak bf16"
        if args.measured_tflops:
            result["measured_tflops"] = args.measured_tflops
            result["update_fraction_of_measured_flops"] = (
                ours["tokens_per_s"] * flops_per_token / (args.measured_tflops * 1e12)
            )
            line += f", {result['update_fraction_of_measured_flops']:.3f} of measured {args.measured_tflops:.0f}"
        print(line + f" (model FLOPs, recomputation not counted); peak memory {ours['peak_gib']:.1f} GiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
