"""The action-space interface: how a policy's output becomes an env action, and its log-probability.

An action space owns three things and nothing else: the prompt (wording, chat messages, encoding, cached per
state), turning model output into an env action (``act``, no grad, during rollout), and re-computing the
log-probability of that same stored output under the current weights (``evaluate``, with grad, in the
update). It is an ``nn.Module``, so a learned action space (latent codes) trains, checkpoints and syncs under
DDP with the policy. SFT and the critic build prompts through the same :meth:`ActionSpace.encode`. Swapping it
is a config change: ``model.action_space: {class_path: selu_lightning.action_spaces.CandidateActionSpace}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from selu_lightning.errors import ConfigError
from selu_lightning.envs.base import TextVisualEnv
from selu_lightning.policy.vlm import PromptSample, VLMPolicy

if TYPE_CHECKING:
    from selu_lightning.envs.pool import EnvState

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
    prompt: str = ""
    """The user turn's text the decision answered (trajectories keep it)."""


@dataclass
class Evaluation:
    logprobs: torch.Tensor
    """[B] fp32 log-probabilities under the current weights (with grad)."""
    values: torch.Tensor
    """[B] fp32 values (with grad)."""
    entropy: torch.Tensor | None = None
    """[B] fp32 policy entropy (per-token mean for generated text), if asked for."""
    token_logprobs: list[torch.Tensor] | None = None
    """Per sample, fp32 log-probs of each scored unit (token, or the chosen candidate) for per-token KL."""
    loss_mask: torch.Tensor | None = None
    """[B] 1 for samples the policy loss learns from, 0 to leave out (e.g. unparsable text under
    ``parse_failure: mask_from_loss``); None: all."""
    frozen: Any = None
    """What this pass computed with weights the KL reference shares (detached), for
    :meth:`ActionSpace.evaluate_reference` to reuse; None: nothing to reuse."""


def user_message(text: str, with_image: bool) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


class ActionSpace(nn.Module, ABC):
    #: True when the space needs ``info["legal_actions"]`` to list every legal action.
    requires_legal_actions: ClassVar[bool] = False
    #: Prompt text with ``{task}``, ``{state}``, ``{goal}``, ``{actions}`` fields (set by subclasses).
    template: str
    #: Put the frame in the prompt.
    with_image: bool

    def prompt_text(self, task: str, state: str, goal: str, legal_actions: Sequence[str]) -> str:
        """The user turn's text for one observation."""
        return self.template.format(task=task, state=state, goal=goal, actions=", ".join(legal_actions))

    def state_prompt(self, state: EnvState, task: str) -> str:
        return self.prompt_text(task, state.text, state.goal, state.legal_actions)

    def messages(self, state: EnvState, task: str) -> list[dict[str, Any]]:
        """The chat messages for one observation (what SFT, the critic and the policy all send)."""
        return user_message(self.state_prompt(state, task), self.with_image)

    def encode(self, policy: VLMPolicy, states: Sequence[EnvState], task: str) -> list[PromptSample]:
        """Each state's prompt tensors, encoded once per state and action space (cached on the state)."""
        prompts = []
        for s in states:
            key = ("prompt", id(self), id(policy), task)  # a critic with its own processor encodes anew
            if key not in s.cache:
                s.cache[key] = policy.encode_prompt(self.messages(s, task), s.image if self.with_image else None)
            prompts.append(s.cache[key])
        return prompts

    def check_env(self, env_cls: type[TextVisualEnv]) -> None:
        """Fail in one line when this action space cannot work with the env class; warn when its prompt would
        never show the episode's instruction."""
        if getattr(env_cls, "has_goal", False) and "{goal}" not in self.template:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"{env_cls.__name__} gives each episode an instruction, but the action space's template has no "
                "{goal} field: the policy never sees the task (add {goal} to model.action_space.init_args.template)"
            )
        if self.requires_legal_actions and not env_cls.has_legal_actions:
            raise ConfigError(
                f"{type(self).__name__} needs an env that lists its legal actions; "
                f"{env_cls.__name__} does not (use TextActionSpace)"
            )

    def attach(self, policy: VLMPolicy) -> None:
        """Called once the policy's weights have loaded (``configure_model``), before the optimizer is built:
        a learned space builds its modules here and says which weights train. Text spaces need nothing."""

    def keep_reference(self, policy: VLMPolicy) -> None:
        """Keep what :meth:`reference` scores with (after :meth:`attach`): for text actions the policy's
        reference (LoRA off, or a frozen copy of the VLM). A learned space keeps its own trained parts."""
        policy.keep_reference()

    def reference(self, policy: VLMPolicy) -> AbstractContextManager[None]:
        """Inside it, :meth:`evaluate` scores with the frozen reference (the KL term of ``ActorPPO``)."""
        return policy.reference()

    def evaluate_reference(self, policy: VLMPolicy, samples: Sequence[dict[str, Any]], live: Evaluation) -> Evaluation:
        """Inside :meth:`reference` (and no_grad): the reference's scores of the samples ``live`` scored. By
        default a second :meth:`evaluate`; a space whose reference shares frozen layers with the live policy
        reuses what ``live.frozen`` kept of them."""
        return self.evaluate(policy, samples, with_entropy=False)

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
