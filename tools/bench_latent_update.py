"""Update cost of RL over latent codes against RL over tokens: same model, same env, same response length, same run.

Two ``ActorPPO`` modules on one backbone differ only in ``model.action_space``: ``TextActionSpace`` (the VLM trains:
every weight, or its LoRA adapters with ``--lora-r``) and ``LatentActionSpace`` (only the code policy, the final norm
and the value head train; latent weights random, which does not change the cost). Each fills a buffer with its own
rollout (responses of exactly ``--new-tokens`` tokens), then one PPO pass over it in length-grouped minibatches
(``tools/bench_update.py``'s update loop). The figure is update seconds per transition, latent over token (the
paper reports x0.86), and the trainable parameters of each. ``--algorithms ppo grpo`` adds the GRPO recipes'
update (no value head; the k3 KL to the frozen start at ``kl_coef`` 0.01, which costs a reference pass), each row
as a ratio to token PPO; latent rows are named by their code-policy layers (``latent L2 ppo``). The latent
reference reuses the live pass's frozen backbone states; its ``2nd pass`` row times the same update with the
backbone run again (``LatentActionSpace.reuse_frozen_pass = False``).

    python tools/bench_latent_update.py                         # CPU, tiny LLaVA, full fine-tuning
    python tools/bench_latent_update.py --lora-r 8 --model tiny:llava_next
    python tools/bench_latent_update.py --device cuda --dtype bfloat16 --model full:llava_next_mistral_7b --lora-r 128
    python tools/bench_latent_update.py --codes 32 --policy-layers 2 0   # the recipes' space vs a linear code head

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

from selu_lightning.action_spaces import LatentActionSpace, TextActionSpace
from selu_lightning.cli import quiet_noise
from selu_lightning.modules import ActorPPO
from selu_lightning.policy.vlm import LoraSettings, PolicyConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_update import make_buffer, run_update  # noqa: E402
from latent_helpers import TINY_LATENT, latent_checkpoint  # noqa: E402  (a pretraining checkpoint, random weights)

#: What each algorithm's recipe (configs/rl4vlm_cpu/ppo_*, configs/group/grpo_*) sets beyond the defaults.
RECIPE = {"ppo": {}, "grpo": {"algorithm": "grpo", "kl_coef": 0.01}}


def latent_name(layers: int) -> str:
    return f"latent L{layers}"


def _module(policy: PolicyConfig, space, device: str, dtype: str, algorithm: str) -> ActorPPO:
    module = ActorPPO(policy, space, minibatch_size=16, ppo_epochs=1, **RECIPE[algorithm])
    module.configure_model()
    module.to(device=device, dtype=getattr(torch, dtype))
    module.train()
    return module


def main() -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:llava")
    parser.add_argument("--env", default="numberline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--buffer", type=int, default=64, help="transitions in each buffer")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per response (fixed)")
    parser.add_argument("--minibatch", type=int, default=16)
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank of the token run (0: full fine-tuning)")
    parser.add_argument("--repeats", type=int, default=3, help="update passes timed per space (the fastest is kept)")
    parser.add_argument("--codes", type=int, default=TINY_LATENT["num_codes"], help="latent codes K")
    parser.add_argument("--policy-layers", type=int, nargs="+", default=[TINY_LATENT["policy_layers"]],
                        help="code-policy layers; several: one latent row each (0: a linear code head)")
    parser.add_argument("--algorithms", nargs="+", default=["ppo"], choices=sorted(RECIPE),
                        help="update rules to time (ratios are to token PPO, which always runs)")  # fmt: skip
    args = parser.parse_args()
    algorithms = ["ppo", *(a for a in args.algorithms if a != "ppo")]
    torch.manual_seed(0)
    lora = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r) if args.lora_r else None
    n = args.new_tokens
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in algorithms:
            heads = [64] if algorithm == "ppo" else None  # the group algorithms have no value head
            policy = PolicyConfig(args.model, lora=lora, freeze=[] if lora else ["vision_tower"], value_head_widths=heads)
            spaces = {"token": TextActionSpace(temperature=1.0, max_new_tokens=n, min_new_tokens=n)}
            for layers in args.policy_layers:
                ckpt = latent_checkpoint(Path(tmp) / f"latent_{algorithm}_{layers}.ckpt", policy, num_codes=args.codes,
                                         policy_layers=layers)  # fmt: skip
                spaces[latent_name(layers)] = LatentActionSpace(str(ckpt), max_new_tokens=n, min_new_tokens=n)
            for name, space in spaces.items():
                module = _module(policy, space, args.device, args.dtype, algorithm)
                items = make_buffer(module, args.env, min(args.buffer, 16), args.buffer)
                trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
                # With a KL reference the latent space reuses the live pass below the final norm; the row
                # "latent <algorithm> 2nd pass" times the same update running the frozen backbone again.
                variants = [("", True), (" 2nd pass", False)] if name != "token" and algorithm != "ppo" else [("", True)]
                for suffix, reuse in variants:
                    if isinstance(space, LatentActionSpace):
                        space.reuse_frozen_pass = reuse
                    run_update(module, items[: args.minibatch], args.minibatch, 1, 8)  # warm-up
                    seconds = min(run_update(module, items, args.minibatch, 1, 8)["seconds"] for _ in range(args.repeats))
                    rows[f"{name} {algorithm}{suffix}"] = {"transitions": len(items), "trainable_parameters": trainable,
                                                           "update_s_per_transition": seconds / len(items)}  # fmt: skip
    base, first = rows["token ppo"], rows[f"{latent_name(args.policy_layers[0])} ppo"]
    for row in rows.values():
        row["time_ratio_to_token_ppo"] = row["update_s_per_transition"] / base["update_s_per_transition"]
    ratio = first["time_ratio_to_token_ppo"]
    params = base["trainable_parameters"] / first["trainable_parameters"]
    print(f"model {args.model}  device {args.device}  dtype {args.dtype}  {n} tokens per response  "
          f"token run: {'LoRA r=' + str(args.lora_r) if args.lora_r else 'full fine-tuning'}")
    layers = " / ".join(map(str, args.policy_layers))
    print(f"latent spaces: {args.codes} codes, code-policy layers {layers} (rows 'latent L<layers>')")
    print(f"{'run':>24} {'ms per transition':>18} {'ratio to token ppo':>19} {'trainable parameters':>21}")
    for name, row in rows.items():
        print(f"{name:>24} {1000 * row['update_s_per_transition']:>18.2f} {row['time_ratio_to_token_ppo']:>18.2f}x "
              f"{row['trainable_parameters']:>21,}")  # fmt: skip
    print(f"latent / token PPO update time {ratio:.2f}x; token / latent PPO trainable parameters {params:.1f}x")
    print(json.dumps({"bench": "latent_update", "date": date.today().isoformat(), "machine": platform.node(),
                      "threads": torch.get_num_threads(), **vars(args), "rows": rows, "update_time_ratio": ratio,
                      "trainable_parameter_ratio": params}))  # fmt: skip


if __name__ == "__main__":
    main()
