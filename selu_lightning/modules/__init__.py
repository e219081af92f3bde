"""LightningModules: one per training method, sharing policy, action spaces and rollout data."""

from selu_lightning.modules.actor_ppo import ActorPPO
from selu_lightning.modules.actor_sft import ActorSFT
from selu_lightning.modules.critic import SELUCritic
from selu_lightning.modules.latent_pretrain import LatentActionPretrain

__all__ = ["ActorPPO", "ActorSFT", "SELUCritic", "LatentActionPretrain"]
