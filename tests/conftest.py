"""Shared fixtures: tiny offline models built once per session in a private cache, tiny policies."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are built into a cache private to this test session, never the user's.
os.environ["SELU_CACHE"] = tempfile.mkdtemp(prefix="selu-test-cache-")


@pytest.fixture(scope="session")
def tiny_llava_policy():
    """A loaded tiny LLaVA policy with LoRA on language model + projector (fp32, CPU)."""
    from selu_lightning.policy.vlm import LoraSettings, PolicyConfig, VLMPolicy

    policy = VLMPolicy(
        PolicyConfig("tiny:llava", lora=LoraSettings(r=4, alpha=8, targets=["language_model", "projector"]),
                     value_head_widths=[32])
    )
    policy.load()
    return policy
