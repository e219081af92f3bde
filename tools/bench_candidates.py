"""Candidate scoring: every (prompt, candidate) pair in one forward against each prompt once + its KV cache.

Same inputs, same run, two ways to get ``sum log p(candidate tokens | prompt)`` and the prompt's value:
- ``full``: what CandidateActionSpace did before: ``policy.score`` over every (prompt, candidate) pair, image
  included, in one unchunked forward;
- ``prefix``: ``score_candidates``: one forward over the prompts, then the candidates on their prompt's KV cache,
  ``--chunk-size`` candidates per forward.
Inputs are ALFWorld-sized: ``--prompts`` prompts (an ALFWorld-like room description listing 30 commands, and a
300x300 frame; ~550 tokens on the tiny tokenizer) with ``--candidates`` admissible-style commands each ("go to
drawer 3", "take mug 2 from desk 1"), kept to 3-10 tokens with EOS (the shipped ALFWorld games give 4-14).

Throughput is candidate scores per second, forward + backward as in the PPO update (LoRA + value head train) and
forward only as in the rollout (no grad). Peak memory is measured in a fresh process per figure: on CUDA
``max_memory_allocated`` above what was allocated before the call; on CPU the rise of the process's peak resident
memory (VmHWM, reset just before the call) over its resident memory before the call.

    python tools/bench_candidates.py                              # CPU, tiny LLaVA-NeXT, 8 prompts x 30 candidates
    python tools/bench_candidates.py --device cuda --dtype bfloat16 --model /path/to/llava-v1.6-mistral-7b-hf

Prints a table, then one JSON line (``update_speedup``, ``rollout_speedup``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from typing import Callable

import numpy as np
import torch

from selu_lightning.action_spaces import CandidateActionSpace
from selu_lightning.action_spaces.base import user_message
from selu_lightning.cli import quiet_noise
from selu_lightning.policy.prefix import score_candidates
from selu_lightning.policy.vlm import LoraSettings, PolicyConfig, VLMPolicy

RECEPTACLES = ["countertop", "cabinet", "drawer", "fridge", "microwave", "sinkbasin", "shelf", "stoveburner", "desk"]
OBJECTS = ["mug", "apple", "knife", "plate", "egg", "bowl", "pencil", "book", "cellphone", "lettuce"]


def commands(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct ALFWorld-style admissible commands."""
    out: list[str] = []
    while len(out) < n:
        r, o = rng.choice(RECEPTACLES), rng.choice(OBJECTS)
        a, b = rng.integers(1, 6, size=2)
        cmd = rng.choice([f"go to {r} {a}", f"open {r} {a}", f"examine {r} {a}", f"take {o} {a} from {r} {b}",
                          f"put {o} {a} in/on {r} {b}", f"heat {o} {a} with microwave 1", "look", "inventory"])
        if cmd not in out:
            out.append(str(cmd))
    return out


def make_inputs(policy: VLMPolicy, n_prompts: int, n_candidates: int, seed: int = 0) -> tuple[list, list]:
    """Prompts (fixed whatever ``n_candidates``: each lists 30 commands) and each prompt's candidate ids."""
    rng, extra_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    space = CandidateActionSpace()

    def short(actions: list[str]) -> list[torch.Tensor]:
        return [ids for ids in space.candidate_ids(policy, actions) if 3 <= ids.numel() <= 10]

    task = "Your task is to: put a clean mug in coffeemachine."
    prompts, candidates = [], []
    for i in range(n_prompts):
        listed = commands(30, rng)
        seen = ", ".join(f"a {o} {k}" for k, o in enumerate(rng.choice(OBJECTS, size=6), 1))
        state = f"You arrive at {rng.choice(RECEPTACLES)} {i + 1}. On it, you see {seen}."
        frame = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
        prompts.append(policy.encode_prompt(user_message(space.prompt_text(task, state, "", listed), True), frame))
        cands = short(listed)
        while len(cands) < n_candidates:
            cands += [c for c in short(commands(n_candidates, extra_rng)) if not any(torch.equal(c, d) for d in cands)]
        candidates.append(cands[:n_candidates])
    return prompts, candidates


def full_path(policy: VLMPolicy, prompts: list, candidates: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous CandidateActionSpace scoring: one forward over every (prompt, candidate) pair."""
    flat_prompts = [p for p, cands in zip(prompts, candidates) for _ in cands]
    out = policy.score(flat_prompts, [c for cands in candidates for c in cands], temperature=1.0)
    firsts = np.cumsum([0] + [len(c) for c in candidates[:-1]]).tolist()
    return torch.stack([lp.sum() for lp in out.token_logprobs]), out.values[firsts]


def prefix_path(chunk_size: int) -> Callable:
    def run(policy: VLMPolicy, prompts: list, candidates: list) -> tuple[torch.Tensor, torch.Tensor]:
        out = score_candidates(policy, prompts, candidates, chunk_size=chunk_size)
        return torch.cat(out.logprobs), out.values

    return run


def step(policy: VLMPolicy, path: Callable, prompts: list, candidates: list, update: bool) -> None:
    """One scoring as the update (forward + backward) or the rollout (no grad) does it."""
    if update:
        scores, values = path(policy, prompts, candidates)
        (scores.sum() + values.sum()).backward()
        policy.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            path(policy, prompts, candidates)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(policy: VLMPolicy, path: Callable, prompts: list, candidates: list, update: bool, repeats: int) -> dict:
    step(policy, path, prompts, candidates, update)  # warm-up
    times = []
    for _ in range(repeats):
        sync(policy.device)
        start = time.perf_counter()
        step(policy, path, prompts, candidates, update)
        sync(policy.device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"scores_per_s": sum(len(c) for c in candidates) / seconds, "seconds": seconds}


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory_here(policy: VLMPolicy, path: Callable, prompts: list, candidates: list, update: bool) -> float:
    """MiB the call adds at its peak, in this (fresh) process."""
    device = policy.device
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(policy, path, prompts, candidates, update)
        sync(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        before = _proc_kib("VmRSS")
        step(policy, path, prompts, candidates, update)
        return (_proc_kib("VmHWM") - before) / 1024
    except OSError:  # no procfs: the process peak, including loading
        step(policy, path, prompts, candidates, update)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(args: argparse.Namespace, path: str, update: bool, n_candidates: int, chunk_size: int) -> float:
    """Run one measurement in a fresh process, so no earlier allocation hides or inflates the peak."""
    cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--device", args.device,
           "--dtype", args.dtype, "--prompts", str(args.prompts), "--lora-r", str(args.lora_r),
           "--threads", str(torch.get_num_threads()), "--child", f"{path},{int(update)},{n_candidates},{chunk_size}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def build_policy(args: argparse.Namespace) -> VLMPolicy:
    """LoRA on LM + vision tower + projector (as RL4VLM), value head; eval mode as in both update and rollout."""
    torch.manual_seed(0)
    lora = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, targets=["language_model", "vision_tower", "projector"])
    policy = VLMPolicy(PolicyConfig(args.model, dtype=args.dtype, lora=lora))
    policy.load()
    return policy.to(args.device).eval()


def main() -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:llava_next")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=30, help="candidates per prompt")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--small-chunk", type=int, default=8, help="a second chunk size for the memory sweep")
    parser.add_argument("--sweep", default="10,30,60", help="candidates per prompt for the memory sweep ('' skips it)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = build_policy(args)

    if args.child:  # one memory figure, in this fresh process
        path, update, n, chunk = args.child.split(",")
        prompts, candidates = make_inputs(policy, args.prompts, int(n))
        fn = full_path if path == "full" else prefix_path(int(chunk))
        print(json.dumps({"peak_mib": peak_memory_here(policy, fn, prompts, candidates, bool(int(update)))}))
        return

    prompts, candidates = make_inputs(policy, args.prompts, args.candidates)
    cand_tokens = [int(c.numel()) for cands in candidates for c in cands]
    prompt_tokens = [int(p["input_ids"].numel()) for p in prompts]
    rows, rows_modes = {}, ("update", "rollout")
    for mode, update in zip(rows_modes, (True, False)):
        for name, fn in (("full", full_path), ("prefix", prefix_path(args.chunk_size))):
            row = throughput(policy, fn, prompts, candidates, update, args.repeats)
            row["peak_mib"] = peak_memory(args, name, update, args.candidates, args.chunk_size)
            rows[f"{mode}_{name}"] = row
    sweep = {}
    for n in [int(x) for x in args.sweep.split(",") if x]:
        sweep[n] = {
            "full_mib": peak_memory(args, "full", True, n, args.chunk_size),
            "prefix_mib": peak_memory(args, "prefix", True, n, args.chunk_size),
            f"prefix_chunk{args.small_chunk}_mib": peak_memory(args, "prefix", True, n, args.small_chunk),
        }

    speedups = {m: rows[f"{m}_prefix"]["scores_per_s"] / rows[f"{m}_full"]["scores_per_s"] for m in rows_modes}
    print(f"model {args.model}  device {args.device}  dtype {args.dtype}  threads {torch.get_num_threads()}  "
          f"{args.prompts} prompts x {args.candidates} candidates")  # fmt: skip
    print(f"prompt tokens {min(prompt_tokens)}-{max(prompt_tokens)} (mean {np.mean(prompt_tokens):.0f}), candidate "
          f"tokens {min(cand_tokens)}-{max(cand_tokens)} (mean {np.mean(cand_tokens):.1f}, EOS included)")  # fmt: skip
    print(f"{'path':>26} {'mode':>8} {'scores/s':>10} {'seconds':>8} {'peak MiB':>9}")
    for mode in ("update", "rollout"):
        for name, label in (("full", "full: every pair"), ("prefix", f"prefix: chunk {args.chunk_size}")):
            row = rows[f"{mode}_{name}"]
            print(f"{label:>26} {mode:>8} {row['scores_per_s']:>10.0f} {row['seconds']:>8.3f} {row['peak_mib']:>9.1f}")
    print(f"speed-up: update (fwd+bwd) {speedups['update']:.1f}x, rollout (fwd) {speedups['rollout']:.1f}x")
    print(f"peak MiB of one update step (fwd+bwd) vs candidates per prompt ({args.prompts} prompts):")
    print(f"{'candidates':>10} {'full':>9} {f'prefix {args.chunk_size}':>10} {f'prefix {args.small_chunk}':>10}")
    for n, mem in sweep.items():
        print(f"{n:>10} {mem['full_mib']:>9.1f} {mem['prefix_mib']:>10.1f} "
              f"{mem[f'prefix_chunk{args.small_chunk}_mib']:>10.1f}")  # fmt: skip
    if not args.device.startswith("cuda"):
        print("(CPU peak = rise of the process's peak RSS during one call, each in a fresh process)")
    result = {
        "bench": "candidates", "date": date.today().isoformat(), "machine": platform.node(), "device": args.device,
        "model": args.model, "dtype": args.dtype, "threads": torch.get_num_threads(), "prompts": args.prompts,
        "candidates": args.candidates, "chunk_size": args.chunk_size,
        "prompt_tokens_mean": float(np.mean(prompt_tokens)), "candidate_tokens_mean": float(np.mean(cand_tokens)),
        **rows, "update_speedup": speedups["update"],
        "rollout_speedup": speedups["rollout"], "peak_mib_vs_candidates": {str(k): v for k, v in sweep.items()},
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
