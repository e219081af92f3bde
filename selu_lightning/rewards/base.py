"""Reward sources: what a rollout's steps are rewarded with for learning.

The env's own reward is the default. An :class:`EpisodeEndReward` receives whole finished episodes and
assigns each one reward at its last step (every other step gets 0): the SELU critic's verdict plugs in here,
so the env's reward is then never used for learning. Swap with ``model.reward: {class_path: ...}``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from selu_lightning.data.rollout import Rollout
    from selu_lightning.data.trajectories import Trajectory

__all__ = ["RewardSource", "EnvReward", "EpisodeEndReward"]


class RewardSource(ABC):
    device: torch.device | None = None
    """The learning module's device, set by it before each ``rewards`` call (a model-based judge runs there)."""

    @abstractmethod
    def rewards(self, rollout: Rollout) -> torch.Tensor:
        """``[T, N]`` fp32 rewards for the rollout's buffer."""


class EnvReward(RewardSource):
    """The simulator's reward, step by step (RL4VLM)."""

    def rewards(self, rollout: Rollout) -> torch.Tensor:
        return rollout.rewards.float()


def judged_view(trajectory: Trajectory) -> Trajectory:
    """What a judge may see of an episode: frames, prompts, responses, actions, final observation. The
    simulator's verdict and its step rewards (in the card games the reward is the success signal) are
    hidden: ``ground_truth`` empty, every step reward NaN."""
    steps = [dataclasses.replace(s, reward=float("nan")) for s in trajectory.steps]
    return dataclasses.replace(trajectory, steps=steps, ground_truth={})


class EpisodeEndReward(RewardSource):
    """One reward per finished episode, at its last step; steps of unfinished episodes get 0 (GAE bootstraps
    them from the value). Subclasses judge episodes from what the policy saw and did: they receive
    :func:`judged_view`s, without ground truth or env rewards."""

    @abstractmethod
    def score_episodes(self, trajectories: Sequence[Trajectory]) -> list[float]:
        """One reward per finished trajectory, in one batched call."""

    def rewards(self, rollout: Rollout) -> torch.Tensor:
        out = torch.zeros_like(rollout.rewards, dtype=torch.float32)
        finished = list(rollout.trajectories)
        scores = self.score_episodes([judged_view(t) for t in finished]) if finished else []
        if len(scores) != len(finished):
            raise ValueError(f"{type(self).__name__} gave {len(scores)} rewards for {len(finished)} episodes")
        for traj, score in zip(finished, scores):
            t, i = traj.end
            out[t, i] = float(score)
        return out
