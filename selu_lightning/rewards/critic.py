"""CriticReward: SELU's critic as ActorPPO's reward (beyond the paper, which improves the actor by SFT only).

Each finished episode gets the critic's verdict on its final observation at its last step, every other step 0; the
env's reward is never used for learning. The critic is a frozen ``SELUCritic`` (its trained weights through
``model.policy.init_from``), held outside the actor's modules: it is in no optimizer and no checkpoint of the actor.
It receives :func:`~selu_lightning.rewards.base.judged_view` episodes only (no ground truth, no env rewards)::

    model:
      reward:
        class_path: selu_lightning.rewards.CriticReward
        init_args:
          critic:
            class_path: selu_lightning.modules.SELUCritic
            init_args: {env: virtualhome, policy: {model_name_or_path: ..., value_head_widths: null,
                                                   init_from: runs/critic/last.ckpt}}
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from selu_lightning.data.trajectories import Trajectory
from selu_lightning.errors import ConfigError
from selu_lightning.modules.critic import SELUCritic
from selu_lightning.rewards.base import EpisodeEndReward

__all__ = ["CriticReward", "verdict_reward"]


def verdict_reward(p_yes: torch.Tensor, output: str, threshold: float) -> list[float]:
    """The reward per episode from the critic's p(yes): the probability itself, or 1/0 at the threshold."""
    if output == "probability":
        return [float(p) for p in p_yes]
    return [float(p >= threshold) for p in p_yes]


class CriticReward(EpisodeEndReward):
    def __init__(
        self,
        critic: SELUCritic,
        output: Literal["probability", "binary"] = "probability",
        threshold: float = 0.5,
        device: str | None = None,
    ) -> None:
        """
        Args:
            critic: The trained critic (set its ``policy.init_from`` to the critic run's checkpoint).
            output: ``probability``: reward p(yes); ``binary``: 1 when p(yes) >= threshold, else 0.
            threshold: The decision threshold of ``binary``.
            device: Where the critic runs (null: the actor's device on this rank).
        """
        if output not in ("probability", "binary"):
            raise ConfigError(f"model.reward.output must be probability or binary (got {output!r})")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"model.reward.threshold must be in (0, 1) (got {threshold})")
        self.critic, self.output, self.threshold, self.critic_device = critic, output, threshold, device
        self._ready = False

    def _prepare(self) -> None:
        """Load the critic's weights on first use (after the actor's, on this rank's device), frozen."""
        if self._ready:
            return
        device = self.critic_device or self.device or "cpu"
        self.critic.configure_model()
        self.critic.requires_grad_(False)
        self.critic.to(device)
        self._ready = True

    def score_episodes(self, trajectories: Sequence[Trajectory]) -> list[float]:
        self._prepare()
        return verdict_reward(self.critic.judge_episodes(trajectories), self.output, self.threshold)
