"""LightningModules: one per training method, sharing policy, action spaces and rollout data."""

from selu_lightning.modules.actor_ppo import ActorPPO
from selu_lightning.modules.actor_sft import ActorSFT

__all__ = ["ActorPPO", "ActorSFT"]
