"""SELU's critic data: self-asking and hindsight relabeling over recorded episodes, with the critic's own answers.

For each episode (its final observation and instruction):

1. self-asking: the critic is asked the verb's yes/no question ("Is the fridge open?"); p(yes) >= ``threshold``
   makes the episode a positive example ("yes") for that question;
2. hindsight (``hindsight: true``): an episode answered "no" is asked which object is now in the verb's state
   ("Which object is open?"); the free-text answer is mapped onto an object the final observation lists
   (:func:`~selu_lightning.critic.questions.match_object`); a match other than the instruction's own object
   gives a positive example for the relabeled instruction ("Open the cabinet."). Answers naming no listed
   object, or the instruction's own object again, are dropped and counted;
3. negatives (the paper does not say how they enter): ``none``; ``relabeled``: "no" to the original question of
   each relabeled episode (it achieved something else); ``rejected``: "no" to the original question of every
   episode answered "no".

Episodes are read through :func:`~selu_lightning.rewards.base.judged_view`: the builder cannot see ground truth
or env rewards (invariant 7). The critic's answering is passed in as two batched callables, so the builder is
tested with hand-written answers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np

from selu_lightning.critic.questions import CriticQuestions, VerbQuestions, match_object, replace_object
from selu_lightning.critic.tasks import TaskSpec
from selu_lightning.data.trajectories import Trajectory
from selu_lightning.errors import ConfigError
from selu_lightning.rewards.base import judged_view

__all__ = ["CriticQuery", "CriticExample", "CriticDataStats", "LabelingConfig", "build_critic_examples",
           "accepted_instructions"]

NEGATIVES = ("none", "relabeled", "rejected")


@dataclass
class CriticQuery:
    """One question about one final observation."""

    frame: np.ndarray | None
    observation: str
    question: str


@dataclass
class CriticExample:
    """One training example: the question about the final observation and the answer the critic should give."""

    episode_id: str
    frame: np.ndarray | None
    observation: str
    question: str
    answer: str
    """"yes" or "no"; for ``kind="which"`` (scene-prior questions) the object's name."""
    instruction: str
    """The instruction the example is about (the relabeled one for relabeled examples)."""
    verb: str
    kind: Literal["self_ask", "relabeled", "negative", "oracle", "which"]


@dataclass
class LabelingConfig:
    """How the critic labels its own data (``model.labeling``)."""

    threshold: float = 0.5
    """p(yes) at or above which the self-asked answer counts as yes."""
    hindsight: bool = True
    """Relabel episodes answered "no" with what the critic says they achieved (off: the ablation)."""
    negatives: Literal["none", "relabeled", "rejected"] = "relabeled"
    """Which "no" examples to add (see the module docstring)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"model.labeling.threshold must be in (0, 1) (got {self.threshold})")
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"model.labeling.negatives must be one of {NEGATIVES} (got {self.negatives!r})")


@dataclass
class CriticDataStats:
    episodes: int = 0
    unparsed: int = 0
    """Episodes whose instruction the env's task structure cannot read (skipped)."""
    accepted: int = 0
    """Episodes the critic answered "yes" for their own instruction."""
    rejected: int = 0
    relabeled: int = 0
    dropped_unmatched: int = 0
    """Hindsight answers naming no object of the final observation."""
    dropped_same: int = 0
    """Hindsight answers naming the instruction's own object (the critic contradicts its "no")."""
    examples_per_verb: Counter = field(default_factory=Counter)
    """Positive examples per verb (relabeled ones under their new verb: the same)."""
    negatives: int = 0

    @property
    def relabel_rate(self) -> float:
        """Relabeled among the episodes answered "no"."""
        return self.relabeled / self.rejected if self.rejected else 0.0

    def as_metrics(self, prefix: str = "critic_data/") -> dict[str, float]:
        metrics = {
            f"{prefix}{k}": float(getattr(self, k))
            for k in ("episodes", "unparsed", "accepted", "rejected", "relabeled", "dropped_unmatched",
                      "dropped_same", "negatives", "relabel_rate")
        }  # fmt: skip
        for verb, n in self.examples_per_verb.items():
            metrics[f"{prefix}positives_{verb.replace(' ', '_')}"] = float(n)
        return metrics


Judge = Callable[[Sequence[CriticQuery]], Sequence[float]]
"""p(yes) for each query, in one batched call."""
Asker = Callable[[Sequence[CriticQuery]], Sequence[str]]
"""A free-text answer for each query, in one batched call."""


def build_critic_examples(
    trajectories: Sequence[Trajectory],
    structure: Any,
    questions: CriticQuestions,
    templates: dict[str, VerbQuestions],
    judge: Judge,
    ask: Asker,
    labeling: LabelingConfig | None = None,
) -> tuple[list[CriticExample], CriticDataStats]:
    """The critic's training examples from recorded episodes (see the module docstring), and their statistics.

    ``structure`` is the env class (its ``task_spec``, ``task_instruction``, ``scene_objects``); ``templates``
    the resolved per-verb questions (``questions.resolved``). ``judge`` and ``ask`` are called at most once each."""
    labeling = labeling or LabelingConfig()
    stats = CriticDataStats()
    episodes: list[tuple[Trajectory, TaskSpec]] = []
    for traj in trajectories:
        view = judged_view(traj)  # invariant 7: no ground truth, no env rewards past this line
        stats.episodes += 1
        spec = structure.task_spec(view.goal)
        if spec is None or spec.verb not in templates:
            stats.unparsed += 1
            continue
        episodes.append((view, spec))

    def query(view: Trajectory, question: str) -> CriticQuery:
        return CriticQuery(view.final_frame, view.final_observation, question)

    def example(view: Trajectory, spec: TaskSpec, answer: str, kind: str, instruction: str) -> CriticExample:
        question = questions.ask(templates, spec, instruction)
        return CriticExample(view.episode_id, view.final_frame, view.final_observation, question, answer,
                             instruction, spec.verb, kind)  # fmt: skip

    asked = [query(v, questions.ask(templates, s, v.goal)) for v, s in episodes]
    p_yes = list(judge(asked)) if asked else []
    if len(p_yes) != len(asked):
        raise ValueError(f"the critic's judge gave {len(p_yes)} answers for {len(asked)} questions")
    examples: list[CriticExample] = []
    rejected: list[tuple[Trajectory, TaskSpec]] = []
    for (view, spec), p in zip(episodes, p_yes):
        if p >= labeling.threshold:
            stats.accepted += 1
            stats.examples_per_verb[spec.verb] += 1
            examples.append(example(view, spec, "yes", "self_ask", view.goal))
        else:
            rejected.append((view, spec))
    stats.rejected = len(rejected)

    relabeled: set[str] = set()
    if labeling.hindsight and rejected:
        answers = list(ask([query(v, questions.hindsight(templates, s)) for v, s in rejected]))
        if len(answers) != len(rejected):
            raise ValueError(f"the critic gave {len(answers)} hindsight answers for {len(rejected)} questions")
        for (view, spec), answer in zip(rejected, answers):
            names = [o.name for o in structure.scene_objects(view.final_observation)]
            name = match_object(answer, names, exclude=spec.objects[1:])
            if name is None:
                stats.dropped_unmatched += 1
                continue
            if name.lower() == spec.object.lower():
                stats.dropped_same += 1
                continue
            new = replace_object(spec, name)
            stats.relabeled += 1
            stats.examples_per_verb[new.verb] += 1
            relabeled.add(view.episode_id)
            examples.append(example(view, new, "yes", "relabeled", structure.task_instruction(new)))

    if labeling.negatives != "none":
        for view, spec in rejected:
            if labeling.negatives == "rejected" or view.episode_id in relabeled:
                stats.negatives += 1
                examples.append(example(view, spec, "no", "negative", view.goal))
    return examples, stats


def accepted_instructions(examples: Sequence[CriticExample]) -> dict[str, list[str]]:
    """Episode id -> the instructions its positive examples hold (its own when accepted, the relabeled one
    otherwise): what the critic's labels hand the actor's SFT (the paper's actor improvement)."""
    out: dict[str, list[str]] = {}
    for e in examples:
        if e.answer == "yes":
            out.setdefault(e.episode_id, []).append(e.instruction)
    return out
