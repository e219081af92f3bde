"""Task structure: what an instruction asks (verb + objects) and what an observation shows (objects + states).

SELU's critic builds its own questions from this: "Is the <object> open?" from "Open the fridge.", and the objects
a free-text hindsight answer may name. Every env that SELU runs on answers three class methods, all read from the
text the policy saw (an instruction, a recorded observation), never from the simulator's verdict:

- ``task_spec(instruction) -> TaskSpec | None``: the verb and object names (None: an instruction of a shape the
  critic does not ask about, e.g. BabyAI's composite "... and then ..." missions);
- ``task_instruction(spec) -> str``: the instruction the env itself would write for a spec (relabeled goals);
- ``scene_objects(observation) -> list[SceneObject]``: the objects an observation's text lists, with the states
  it gives ("open", "off", "held", "in fridge", ...).

and lists its verbs in ``task_verbs``. Nothing here reveals whether a task succeeded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Protocol

from selu_lightning.errors import ConfigError

__all__ = ["TaskSpec", "SceneObject", "TaskStructure", "task_structure", "split_listing", "name_and_details",
           "normalize_name", "merge_objects"]


@dataclass(frozen=True)
class TaskSpec:
    """What an instruction asks: ``verb`` (one of the env's ``task_verbs``) and its object names, the acted-on
    object first, then any target ("put in": ``("apple", "fridge")``). Names are spelled as the env writes them."""

    verb: str
    objects: tuple[str, ...]

    @property
    def object(self) -> str:
        return self.objects[0]

    @property
    def target(self) -> str | None:
        return self.objects[1] if len(self.objects) > 1 else None


@dataclass(frozen=True)
class SceneObject:
    """One object an observation shows, with the states its text gives (e.g. ``{"closed", "off"}``)."""

    name: str
    states: frozenset[str] = field(default_factory=frozenset)


class TaskStructure(Protocol):
    """What an env class offers SELU's critic (see the module docstring)."""

    task_verbs: ClassVar[tuple[str, ...]]

    @classmethod
    def task_spec(cls, instruction: str) -> TaskSpec | None: ...

    @classmethod
    def task_instruction(cls, spec: TaskSpec) -> str: ...

    @classmethod
    def scene_objects(cls, observation: str) -> list[SceneObject]: ...


def task_structure(env: str | type) -> type:
    """The env class registered as ``env`` (or the class itself), checked to offer the task structure."""
    if isinstance(env, str):
        from selu_lightning.envs.base import env_class

        cls = env_class(env)
    else:
        cls = env
    missing = [m for m in ("task_verbs", "task_spec", "task_instruction", "scene_objects") if not hasattr(cls, m)]
    if missing:
        raise ConfigError(
            f"env {getattr(cls, '__name__', env)!r} does not expose the task structure SELU's critic needs "
            f"(missing {', '.join(missing)}; see selu_lightning.critic.tasks)"
        )
    return cls


def household_instruction(spec: TaskSpec) -> str:
    """The instruction VirtualHome and AI2-THOR write for a spec: "Open the fridge.", "Put the apple in the
    fridge."."""
    if spec.verb in ("put in", "put on"):
        return f"Put the {spec.object} {spec.verb[4:]} the {spec.target}."
    return f"{spec.verb.capitalize()} the {spec.object}."


def split_listing(text: str, sep: str = ",") -> list[str]:
    """Split "a (x, y), b, c (z)" at top-level separators, leaving parenthesised details whole."""
    parts, depth, current = [], 0, []
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


_NAME_DETAIL = re.compile(r"^(.*?)\s*(?:\(([^()]*)\))?$")


def name_and_details(item: str) -> tuple[str, list[str]]:
    """``"microwave (closed, off)"`` -> ``("microwave", ["closed", "off"])``."""
    match = _NAME_DETAIL.match(item.strip())
    name, details = (match.group(1), match.group(2)) if match else (item.strip(), None)
    return name.strip(), [d.strip() for d in (details or "").split(",") if d.strip()]


def merge_objects(items: Iterable[tuple[str, Iterable[str]]]) -> list[SceneObject]:
    """Objects in first-seen order, each name once with the union of the states given for it."""
    states: dict[str, set[str]] = {}
    for name, given in items:
        if name:
            states.setdefault(name, set()).update(given)
    return [SceneObject(name, frozenset(s)) for name, s in states.items()]


_ARTICLES = {"the", "a", "an", "some"}


def normalize_name(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped: how answers and object names are compared."""
    words = re.sub(r"[^0-9a-z]+", " ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)
