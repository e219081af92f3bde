"""The ALFWorld expert: Fast Downward's plan from ``info["expert_plan"]``, explained step by step.

Privileged (demonstration only, see :mod:`selu_lightning.experts.base`): the plan knows where unseen objects are.
The expert reads it from ``info["expert_plan"]``, which :class:`~selu_lightning.envs.alfworld.AlfWorldEnv` gives every
step: the game's stored plan while the commands follow it, or, with ``replan=True``, a fresh plan from the current
state. A noisy step leaves the stored plan, so a noisy expert asks for ``replan=True`` (:meth:`env_kwargs`). Its
thoughts state only what the policy is shown (the task, the last feedback, and where it is and what it holds, which
the frame draws and the admissible commands imply) and hedge what the plan knows ("a mug could be at the
cabinet 3").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from selu_lightning.errors import ConfigError
from selu_lightning.experts.base import Expert, ExpertStep

__all__ = ["AlfWorldExpert"]

# "take mug 1 from cabinet 3", "move mug 1 to sinkbasin 1", "heat mug 1 with microwave 1", ...
_COMMAND = re.compile(r"^(take|move|heat|cool|clean|slice) (.+?) (from|to|with) (.+)$")
_STATE_WORD = {"heat": "hot", "cool": "cold", "clean": "clean"}


def _kind(name: str) -> str:
    """"cabinet 3" -> "cabinet"."""
    return name.rsplit(" ", 1)[0] if name.rsplit(" ", 1)[-1].isdigit() else name


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


@dataclass(frozen=True)
class _Situation:
    goal: str
    feedback: str
    plan: tuple[str, ...]
    location: tuple[str, ...]  # the receptacle(s) the agent stands at (two can share a spot); () mid-room
    held: tuple[str, ...]
    receptacles: tuple[str, ...]  # the receptacles it can go to


@lru_cache(maxsize=1)
def _fixed_receptacle_kinds() -> frozenset[str]:
    """ALFRED's receptacle types that never move ("cabinet", "sinkbasin"), lower-cased as ALFWorld names them;
    empty without the alfworld package (the admissible commands then decide alone)."""
    try:
        from selu_lightning.envs.alfworld_tasks import alfworld_data_dir

        alfworld_data_dir()  # before importing alfworld (it creates that folder on import)
        import alfworld.gen.constants as constants
    except ImportError:
        return frozenset()
    return frozenset(r.lower() for r in set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES))


def _where_and_what(legal: list[str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Location, held objects and reachable receptacles, read off the admissible commands (the frame draws the
    first two).

    "go to R" lists every receptacle but those at the agent's spot; "examine X" lists those and what the agent
    holds. A receptacle is told from an object by its type (every "go to" target's type, ALFRED's fixed receptacle
    types) or by a command that names it as one (take from, move to, heat with, open, close)."""
    goto = tuple(c[len("go to ") :] for c in legal if c.startswith("go to "))
    examined = [c[len("examine ") :] for c in legal if c.startswith("examine ")]
    examined = [x for x in examined if x not in goto]
    named: set[str] = set()
    for command in legal:
        match = _COMMAND.match(command)
        if match:
            named.add(match.group(4))
        elif command.startswith(("open ", "close ")):
            named.add(command.split(" ", 1)[1])
    kinds = {_kind(r) for r in goto} | _fixed_receptacle_kinds()
    location = tuple(x for x in examined if x in named or _kind(x) in kinds)
    held = tuple(x for x in examined if x not in location)
    return location, held, goto


def _purpose(plan: tuple[str, ...], start: int) -> str | None:
    """The first command from ``start`` on that does something other than walking or opening: what they serve."""
    return next((c for c in plan[start:] if not c.startswith(("go to ", "open "))), None)


class AlfWorldExpert(Expert):
    """Play Fast Downward's plan (``info["expert_plan"]``); explain each command by the step it serves.

    Noise picks another admissible command, of the same verb when there is one ("go to cabinet 4" for "go to
    cabinet 3"), with thoughts arguing for it; the env must then replan (``env_kwargs`` sets ``replan=True``).
    """

    fields: ClassVar[tuple[str, ...]] = ("thoughts", "action")

    def env_kwargs(self, given: dict[str, Any]) -> dict[str, Any]:
        """A noisy expert leaves the stored plan: it needs the env's ``replan=True`` to be told a plan again."""
        kwargs = super().env_kwargs(given)
        if self.noise > 0:
            if kwargs.get("replan") is False:
                raise ConfigError("the ALFWorld expert with noise > 0 needs the env's replan=True (got replan=False)")
            kwargs["replan"] = True
        return kwargs

    def read(self, obs_text: str, info: dict[str, Any]) -> _Situation:
        if not obs_text:
            raise ValueError("the ALFWorld expert reads the engine's text: build the env with text_state=True")
        plan = info.get("expert_plan")
        if plan is None:
            raise ValueError(
                "info['expert_plan'] is None: the commands left the game's stored plan; build the env with "
                "replan=True (the collection command does when noise > 0)"
            )
        location, held, receptacles = _where_and_what(list(info.get("legal_actions", [])))
        return _Situation(str(info.get("goal", "")), obs_text.strip(), tuple(plan), location, held, receptacles)

    # -- the words ---------------------------------------------------------------------------------------------
    def _opening(self, s: _Situation) -> str:
        where = f"I am at the {' and the '.join(s.location)}" if s.location else "I am in the middle of the room"
        hands = f"holding the {' and the '.join(s.held)}" if s.held else "with empty hands"
        text = f"My task is to {s.goal}. {where}, {hands}."
        if "Looking quickly around you" in s.feedback:
            kinds: dict[str, int] = {}
            for r in s.receptacles:
                kinds[_kind(r)] = kinds.get(_kind(r), 0) + 1
            listed = [f"{n} {k}s" if n > 1 else _article(k) for k, n in kinds.items()]
            if listed:
                text += f" Around me are {', '.join(listed[:-1]) + ' and ' if len(listed) > 1 else ''}{listed[-1]}."
        else:
            seen = [s_.strip() for s_ in re.split(r"(?<=\.)\s+", s.feedback) if "you see" in s_]
            if seen:
                text += " " + " ".join(x.replace("you see", "I see") for x in seen)
            elif s.feedback and s.feedback != "Nothing happens.":
                text += " " + re.sub(r"(^|(?<=\. ))You ", r"\1I ", s.feedback)
        return text

    @staticmethod
    def _aim(purpose: str | None, held: tuple[str, ...]) -> str:
        """What a walk serves, in words: "find a mug", "heat the mug 1", "put the mug 1 there"."""
        if purpose is None:
            return "look around"
        match = _COMMAND.match(purpose)
        if match:
            verb, obj = match.group(1, 2)
            if verb == "take":
                return f"find {_article(_kind(obj))}"
            if verb == "move":
                return f"put the {obj}"
            return f"{verb} the {obj}"
        if purpose.startswith("use "):
            return f"switch on the {purpose[4:]} and look at the {held[0] if held else 'object'} under its light"
        return purpose

    def _explain(self, command: str, s: _Situation, purpose: str | None, right: bool) -> str:
        """Why ``command`` is the next step; ``right=False`` argues for a command the plan does not have."""
        if command.startswith("go to "):
            place = command[len("go to ") :]
            match = _COMMAND.match(purpose or "")
            if match and match.group(1) == "take":
                kind = _kind(match.group(2))
                one = _article(kind)
                return f"The task needs {one}. {one.capitalize()} could be at the {place}, so I go there to look."
            if right and match and match.group(1) == "move":
                return f"I hold the {match.group(2)} and the task wants it at the {place}, so I go to the {place}."
            if right:
                return f"Next I need to {self._aim(purpose, s.held)}, which I can do at the {place}, so I go there."
            return f"The {place} may be where I can {self._aim(purpose, s.held)}, so I go there."
        if command.startswith("open "):
            thing = command[len("open ") :]
            aim = self._aim(purpose, s.held)
            return f"The {thing} is closed; I open it to {aim}{' in it' if aim.startswith('put ') else ''}."
        if command.startswith("close "):
            return f"I do not need the {command[len('close ') :]} open, so I close it."
        if command.startswith("use "):
            lamp = command[len("use ") :]
            if right:
                held = ", ".join(s.held) or "object"
                return f"The task is to look at something under a lamp; I hold the {held}, so I switch on the {lamp}."
            return f"Switching on the {lamp} may show me what I need, so I use it."
        match = _COMMAND.match(command)
        if match:
            verb, obj, _, place = match.groups()
            if verb == "take":
                if right:
                    kind = _article(_kind(obj))
                    return f"Here is the {obj}, {kind} as the task needs, so I take it from the {place}."
                return f"The {obj} may be what the task needs, so I take it from the {place}."
            if verb == "move":
                if right:
                    last = len(s.plan) == 1
                    return f"The {obj} is ready and this is where the task wants it, so I move it to the {place}" + (
                        "; that completes the task." if last else "."
                    )
                return f"The {obj} belongs at the {place}, so I move it there."
            word = _STATE_WORD.get(verb, verb + "ed")
            return f"The task wants the {_kind(obj)} {word}, so I {verb} the {obj} with the {place}."
        if command.startswith("examine "):
            return f"I examine the {command[len('examine ') :]} to see it more closely."
        if command == "look":
            return "I look around to see where I am and what is here."
        if command == "inventory":
            return "I check what I am carrying."
        if command == "help":
            return "I read the help to see which commands I can use."
        return f"Next I {command}."

    # -- the choices -------------------------------------------------------------------------------------------
    def best(self, state: _Situation, legal_actions: list[str]) -> ExpertStep:
        if not state.plan:
            raise ValueError("the ALFWorld plan is empty: the task is already done")
        command = state.plan[0]
        reason = self._explain(command, state, _purpose(state.plan, 1), right=True)
        return ExpertStep(command, f"{self._opening(state)} {reason}", {}, True)

    def wrong(
        self, state: _Situation, best: ExpertStep, legal_actions: list[str], rng: np.random.Generator
    ) -> ExpertStep:
        others = [a for a in legal_actions if a != best.action and a != "help"] or [
            a for a in legal_actions if a != best.action
        ]
        verb = best.action.split(" ", 1)[0]
        same = [a for a in others if a.split(" ", 1)[0] == verb]
        pool = same or others
        command = pool[int(rng.integers(len(pool)))]
        purpose = _purpose(state.plan, 0 if command.startswith("go to ") else 1)
        reason = self._explain(command, state, purpose, right=False)
        return ExpertStep(command, f"{self._opening(state)} {reason}", {}, False)
