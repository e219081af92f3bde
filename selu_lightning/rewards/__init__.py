"""Reward sources: the env's reward (default) or a judge of whole episodes. Swap with ``model.reward``."""

from selu_lightning.rewards.base import EnvReward, EpisodeEndReward, RewardSource

__all__ = ["RewardSource", "EnvReward", "EpisodeEndReward"]
