"""The VLM policy and the tiny offline checkpoints used by tests and the CPU quickstart."""

from selu_lightning.policy.vlm import LoraSettings, PolicyConfig, VLMPolicy

__all__ = ["VLMPolicy", "PolicyConfig", "LoraSettings"]
