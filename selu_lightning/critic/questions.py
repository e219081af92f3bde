"""The questions SELU's critic asks itself, and how a free-text answer is mapped onto an object in the scene.

Per verb two templates (fields ``{object}`` and ``{target}``, the spec's first and second object):

- ``ask``: the yes/no self-asking question about the final observation ("Is the {object} open?");
- ``hindsight``: which object is now in the verb's state ("Which object is open?"); its answer replaces the
  spec's first object (the target, as in "Which object is in the {target}?", is kept).

``style: direct`` asks "did the agent do <instruction>?" instead of the per-verb question (the paper's "without
self-asking" ablation). Defaults exist for the envs SELU runs on; ``templates`` overrides them verb by verb.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Sequence

from selu_lightning.critic.tasks import TaskSpec, normalize_name
from selu_lightning.errors import ConfigError

__all__ = ["VerbQuestions", "CriticQuestions", "DEFAULT_TEMPLATES", "match_object", "replace_object", "fill_question"]


@dataclass
class VerbQuestions:
    ask: str
    """Yes/no question about the final observation, e.g. "Is the {object} open?"."""
    hindsight: str
    """Which object is in the verb's state now, e.g. "Which object is open?" (may use ``{target}``)."""


def _q(ask: str, hindsight: str) -> VerbQuestions:
    return VerbQuestions(ask, hindsight)


_PUT = {
    "put in": _q("Is the {object} in the {target}?", "Which object is in the {target}?"),
    "put on": _q("Is the {object} on the {target}?", "Which object is on the {target}?"),
}
#: Per env (the registry name), per verb of its ``task_verbs``.
DEFAULT_TEMPLATES: dict[str, dict[str, VerbQuestions]] = {
    "virtualhome": {
        "pick up": _q("Is the person holding the {object}?", "Which object is the person holding?"),
        "open": _q("Is the {object} open?", "Which object is open?"),
        "switch on": _q("Is the {object} switched on?", "Which object is switched on?"),
        "sit on": _q("Is the person sitting on the {object}?", "What is the person sitting on?"),
        **_PUT,
    },
    "ai2thor": {
        "pick up": _q("Is the robot holding the {object}?", "Which object is the robot holding?"),
        "open": _q("Is the {object} open?", "Which object is open?"),
        "toggle on": _q("Is the {object} turned on?", "Which object is turned on?"),
        **_PUT,
    },
    "babyai": {
        "go to": _q("Is the {object} right in front of the agent?", "Which object is right in front of the agent?"),
        "pick up": _q("Is the agent carrying the {object}?", "Which object is the agent carrying?"),
        "open": _q("Is the {object} open?", "Which door is open?"),
        "put next to": _q("Is the {object} next to the {target}?", "Which object is next to the {target}?"),
    },
}


@dataclass
class CriticQuestions:
    """How the critic words its questions (``model.questions``)."""

    style: Literal["self_ask", "direct"] = "self_ask"
    """``self_ask``: the verb's yes/no question about objects (SELU); ``direct``: ``direct`` below (ablation)."""
    templates: dict[str, VerbQuestions] = field(default_factory=dict)
    """Per-verb templates overriding the env's defaults (``DEFAULT_TEMPLATES``); an env without defaults needs
    one for every verb."""
    direct: str = "The instruction was: {instruction} Did the agent complete it?"
    """The question of ``style: direct``, and the fallback for instructions whose verb cannot be read."""
    answer_prompt: str = "{question} Answer yes or no."
    """The user turn for yes/no questions."""
    hindsight_prompt: str = "{question} Answer with the object's name."
    """The user turn for hindsight questions (free text, short greedy generation)."""
    answer_yes: str = "Yes"
    """The answer word for yes; the critic's p(yes) reads the first token of this and of ``answer_no`` (not
    named ``yes``/``no``: YAML reads those keys as booleans)."""
    answer_no: str = "No"

    def resolved(self, env: str, verbs: Sequence[str]) -> dict[str, VerbQuestions]:
        """The env's defaults with this config's overrides; every verb must have its templates."""
        templates = {**DEFAULT_TEMPLATES.get(env, {}), **self.templates}
        missing = [v for v in verbs if v not in templates]
        if missing:
            raise ConfigError(
                f"model.questions.templates has no question for verb(s) {missing} of env {env!r}: add "
                "{ask: ..., hindsight: ...} for each"
            )
        for verb, t in templates.items():
            for kind, text in (("ask", t.ask), ("hindsight", t.hindsight)):
                try:
                    text.format(object="x", target="y")
                except (KeyError, IndexError) as err:
                    raise ConfigError(
                        f"model.questions.templates[{verb!r}].{kind} {text!r} uses an unknown field {err}; "
                        "only {object} and {target}"
                    ) from None
        return templates

    def ask(self, templates: dict[str, VerbQuestions], spec: TaskSpec | None, instruction: str) -> str:
        """The yes/no question for one instruction (the direct one under ``style: direct`` or when unread)."""
        if self.style == "direct" or spec is None:
            return self.direct.format(instruction=instruction)
        return fill_question(templates[spec.verb].ask, spec)

    def hindsight(self, templates: dict[str, VerbQuestions], spec: TaskSpec) -> str:
        return fill_question(templates[spec.verb].hindsight, spec)


def fill_question(template: str, spec: TaskSpec) -> str:
    return template.format(object=spec.object, target=spec.target or "")


def match_object(answer: str, names: Sequence[str], exclude: Sequence[str] = ()) -> str | None:
    """The scene object a free-text answer names first, or None when it names none.

    Names and the answer compare lower-cased, without punctuation or articles, as whole words; at each word the
    longest name starting there wins ("kitchencabinet 2" over "kitchencabinet"). Names in ``exclude`` (the
    question's own target: "Which object is in the fridge?" -> "The apple is in the fridge.") are skipped."""
    words = normalize_name(answer).split()
    keys: dict[tuple[str, ...], str] = {}
    for name in names:
        keys.setdefault(tuple(normalize_name(name).split()), name)
    keys.pop((), None)
    skipped = {tuple(normalize_name(n).split()) for n in exclude}
    start = 0
    while start < len(words):
        here = [k for k in keys if tuple(words[start : start + len(k)]) == k]
        if not here:
            start += 1
            continue
        best = max(here, key=len)
        if best not in skipped:
            return keys[best]
        start += len(best)
    return None


def replace_object(spec: TaskSpec, name: str) -> TaskSpec:
    """The spec with its first object replaced (a hindsight relabel)."""
    return dataclasses.replace(spec, objects=(name, *spec.objects[1:]))
