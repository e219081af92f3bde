"""What both benchmarks build: a policy that writes a fixed number of tokens per step."""

from __future__ import annotations

import argparse

from selu_lightning.action_spaces import TextActionSpace
from selu_lightning.modules.actor_ppo import ActorPPO
from selu_lightning.policy.vlm import LoraSettings, PolicyConfig


def build_text_module(args: argparse.Namespace) -> ActorPPO:
    """ActorPPO with LoRA on LM + vision tower + projector (as RL4VLM) and fixed-length generations."""
    space = TextActionSpace(temperature=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    lora = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, targets=["language_model", "vision_tower", "projector"])
    config = PolicyConfig(args.model, dtype=args.dtype, lora=lora,
                          gradient_checkpointing=getattr(args, "gradient_checkpointing", False))  # fmt: skip
    module = ActorPPO(config, action_space=space)
    module.configure_model()
    return module.to(args.device)
