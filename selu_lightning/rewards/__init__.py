"""Reward sources: the env's reward (default) or a judge of whole episodes. Swap with ``model.reward``."""

from selu_lightning.rewards.base import EnvReward, EpisodeEndReward, RewardSource

__all__ = ["RewardSource", "EnvReward", "EpisodeEndReward", "CriticReward"]


def __getattr__(name: str):
    # CriticReward imports the critic module (and through it the modules package, which imports this one):
    # loaded on first use so that neither import order cycles.
    if name == "CriticReward":
        from selu_lightning.rewards.critic import CriticReward

        return CriticReward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
