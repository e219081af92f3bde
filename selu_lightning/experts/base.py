"""The expert interface: read what the policy reads, choose an action, explain it in the text an action space
expects (RL4VLM's JSON chain-of-thought, or the bare candidate string).

An expert sees exactly what a policy is shown: the observation text (envs built with ``text_state=True``),
``info["goal"]`` and the legal actions. It never touches the env object, so its demonstrations carry no
information the policy could not have.

Noise: before each step the expert draws once from the given ``rng``; with probability ``noise`` it plays a
wrong legal action (one its own policy would not play) and writes thoughts that argue for that action, so a
demonstration stays self-consistent while being imperfect. ``ExpertStep.correct`` records which it was.

Privileged planners (demonstration only). The household envs hide what a planner needs: where an unseen object
is (ALFWorld, VirtualHome), the grid beyond the agent's view (BabyAI). Their experts may therefore choose with
more than the policy sees, while their thoughts only state what the observation shows and why the step is useful:

- ``info`` keys the env already gives every rollout (ALFWorld's ``expert_plan``, Fast Downward's plan);
- ``env_kwargs``: settings the env must be built with for the planner (ALFWorld's ``replan`` when noisy);
- ``observe_env``: the env object, handed over after each reset by the collection command only (BabyAI's bot,
  VirtualHome's graph program). Nothing else calls it, and no training code ever builds an expert.

Each such expert's docstring says which of these it uses.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from selu_lightning.errors import ConfigError

__all__ = ["Expert", "ExpertStep", "format_json", "format_candidate"]


@dataclass(frozen=True)
class ExpertStep:
    """One decision: the action, the reasoning that leads to it, and the state read off the observation."""

    action: str
    thoughts: str
    #: State fields RL4VLM's prompts ask for before "thoughts" (e.g. ``{"current number": "1"}``), keyed by the
    #: JSON field name, values as they go into the JSON.
    fields: dict[str, Any] = field(default_factory=dict)
    #: False when the noise setting replaced the expert's choice with a wrong action.
    correct: bool = True


class Expert(ABC):
    """A scripted player for one env. Subclasses implement ``best`` (the right action and why) and ``wrong``
    (a wrong action and an argument for it); ``act`` mixes them by ``noise``."""

    #: The JSON fields this game's prompt asks for, in order (configs/rl4vlm/<game>.yaml); "action" is last.
    fields: ClassVar[tuple[str, ...]] = ("thoughts", "action")

    def __init__(self, noise: float = 0.0) -> None:
        """
        Args:
            noise: Probability of playing a wrong legal action (with thoughts that argue for it) at each step.
        """
        if not 0.0 <= noise <= 1.0:
            raise ConfigError(f"{type(self).__name__}: noise must be in [0, 1] (got {noise})")
        self.noise = float(noise)

    def env_kwargs(self, given: dict[str, Any]) -> dict[str, Any]:
        """The env's kwargs for demonstrations: ``given`` plus what this expert's planner needs from the env.
        Experts read the observation text, so ``text_state=False`` is refused here, before any episode runs."""
        if given.get("text_state", True) is False:
            raise ConfigError(f"{type(self).__name__} reads the observation text: build the env with text_state=True")
        return dict(given)

    def observe_env(self, env: Any) -> None:
        """Demonstration-only hook, called by the collection command after every ``reset`` with the env about to
        be played. Experts whose planner reads the simulator keep what it needs (see the module docstring) and
        raise RuntimeError from ``act`` without it; the default ignores it."""

    def act(
        self, obs_text: str, info: dict[str, Any], legal_actions: Sequence[str], rng: np.random.Generator
    ) -> ExpertStep:
        """The expert's step for this observation. Draws from ``rng`` the same way whatever ``noise`` is, so
        a run is reproducible from the generator's seed."""
        legal = list(legal_actions) or list(info.get("legal_actions", []))
        if not legal:
            raise ValueError(f"{type(self).__name__}: no legal actions given")
        state = self.read(obs_text, info)
        step = self.best(state, legal)
        if step.action not in legal:
            raise ValueError(f"{type(self).__name__} chose {step.action!r}, not among the legal actions {legal}")
        if rng.random() < self.noise:
            step = self.wrong(state, step, legal, rng)
        return step

    @abstractmethod
    def read(self, obs_text: str, info: dict[str, Any]) -> Any:
        """Parse the observation text (and goal) into the state this expert reasons about; raise ValueError on
        text it cannot read (e.g. an env built with ``text_state=False``)."""

    @abstractmethod
    def best(self, state: Any, legal_actions: list[str]) -> ExpertStep:
        """The right action and the reasoning for it."""

    @abstractmethod
    def wrong(self, state: Any, best: ExpertStep, legal_actions: list[str], rng: np.random.Generator) -> ExpertStep:
        """A wrong legal action (never ``best.action``) with thoughts that argue for it; ``correct=False``."""


def format_json(step: ExpertStep, fields: Sequence[str] | None = None) -> str:
    """RL4VLM's reply: one JSON object with ``fields`` in order (default: every state field, then "thoughts",
    then "action"). "action" must be the last field: RL4VLM's parser reads from ``"action":`` to the end of the
    text, so anything after it would be read as part of the action."""
    if fields is None:
        fields = (*step.fields, "thoughts", "action")
    fields = list(fields)
    if not fields or fields[-1] != "action" or fields.count("action") != 1:
        raise ValueError(f"format_json: 'action' must be the last field, once (got {fields})")
    values = {"thoughts": step.thoughts, "action": step.action, **step.fields}
    missing = [f for f in fields if f not in values]
    if missing:
        raise ValueError(f"format_json: this step has no field(s) {missing}; it has {sorted(values)}")
    # json.dumps escapes every quote inside a value, so no value can spell the '"action":' key the parser seeks
    return json.dumps({f: values[f] for f in fields}, ensure_ascii=False)


def format_candidate(step: ExpertStep) -> str:
    """The reply for ``CandidateActionSpace``: the action string alone."""
    return step.action
