"""The action-space interface: how a policy's output becomes an env action, and its log-probability.

An action space owns three things and nothing else: the prompt wording, turning model output into an env
action (``act``, no grad, during rollout), and re-computing the log-probability of that same stored output
under the current weights (``evaluate``, with grad, in the PPO update). Swapping it is a config change:
``model.action_space: {class_path: selu_lightning.action_spaces.CandidateActionSpace}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from selu_lightning.errors import ConfigError
from selu_lightning.envs.base import TextVisualEnv
from selu_lightning.policy.vlm import PromptSample, VLMPolicy

__all__ = ["ActionSpace", "Decision", "Evaluation", "user_message"]


@dataclass
class Decision:
    """One env's step as the action space decided it during rollout."""

    env_action: str
    logprob: float
    """fp32 policy log-probability of the stored output (what PPO's ratio divides by)."""
    value: float
    sample: dict[str, Any]
    """Everything ``evaluate`` needs to score the same output again: prompt tensors + output ids."""
    text: str
    parse_failed: bool = False
    generated_tokens: int = 0


@dataclass
class Evaluation:
    logprobs: torch.Tensor
    """[B] fp32 log-probabilities under the current weights (with grad)."""
    values: torch.Tensor
    """[B] fp32 values (with grad)."""
    entropy: torch.Tensor | None = None
    """[B] fp32 policy entropy (per-token mean for generated text), if asked for."""


def user_message(text: str, with_image: bool) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


class ActionSpace(ABC):
    #: True when the space needs ``info["legal_actions"]`` to list every legal action.
    requires_legal_actions: ClassVar[bool] = False

    def check_env(self, env_cls: type[TextVisualEnv]) -> None:
        """Fail in one line when this action space cannot work with the env class."""
        if self.requires_legal_actions and not env_cls.has_legal_actions:
            raise ConfigError(
                f"{type(self).__name__} needs an env that lists its legal actions; "
                f"{env_cls.__name__} does not (use TextActionSpace)"
            )

    @abstractmethod
    def prompt_text(self, task: str, state: str, goal: str, legal_actions: Sequence[str]) -> str:
        """The user turn's text for one observation."""

    @abstractmethod
    def act(
        self,
        policy: VLMPolicy,
        prompts: Sequence[PromptSample],
        legal_actions: Sequence[Sequence[str]],
        *,
        greedy: bool,
        rng: np.random.Generator,
    ) -> list[Decision]:
        """Choose one action per prompt (no grad). ``rng`` draws any fallback action."""

    @abstractmethod
    def evaluate(self, policy: VLMPolicy, samples: Sequence[dict[str, Any]], *, with_entropy: bool) -> Evaluation:
        """Log-probabilities and values of stored decisions under the current weights."""
