"""Builders for the latent-action tests: a store of expert demonstrations and a latent checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from selu_lightning.action_spaces.latent import LATENT_CONFIG_KEY
from selu_lightning.data.collect import collect_expert_episodes
from selu_lightning.data.store import TrajectoryStore
from selu_lightning.export import CONFIG_KEY, policy_config_to_dict
from selu_lightning.latent import LatentActionModel, LatentConfig
from selu_lightning.policy.vlm import PolicyConfig, VLMPolicy

TINY_LATENT = dict(num_codes=8, idm_layers=1, policy_layers=1, merge_layers=1)


def demo_store(path: Path, episodes: int = 3, seed: int = 0) -> Path:
    TrajectoryStore(path, env="numberline").append(list(collect_expert_episodes("numberline", episodes, seed=seed)))
    return path


def latent_checkpoint(path: Path, policy: PolicyConfig, seed: int = 0, **sizes: int) -> Path:
    """What a LatentActionPretrain run saves, with random latent weights (no training needed for the tests
    that only act and score); ``sizes`` override TINY_LATENT (e.g. ``num_codes``)."""
    vlm = VLMPolicy(policy)
    vlm.load()
    config = LatentConfig(**{**TINY_LATENT, **sizes})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LatentActionModel.for_backbone(config, vlm.hf_model)
    torch.save({"state_dict": {f"latent.{k}": v for k, v in model.state_dict().items()},
                LATENT_CONFIG_KEY: config.to_dict(), CONFIG_KEY: policy_config_to_dict(policy)}, path)  # fmt: skip
    return path
