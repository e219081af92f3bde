"""The BabyAI expert: MiniGrid's own bot (``minigrid.utils.baby_ai_bot.BabyAIBot``) behind our text actions.

Privileged (demonstration only, see :mod:`selu_lightning.experts.base`): the bot reads the MiniGrid env itself (the
cells it has seen so far, remembered across steps, and the mission's parsed instruction), so the expert needs
``observe_env`` after every reset; the collection command calls it. Its thoughts state only what the policy is
shown (the mission and the text view: what is in front, what is in sight, what is carried) and the subgoal the
bot is on ("I am heading to the purple box").

The bot is an advisor: each ``replan`` is told the action actually taken, so after a noisy step it plans its way
back (it drops a wrongly picked object, closes a door it should not have opened, ...). ``act`` must therefore be
called exactly once per env step, in order. A noisy step never toggles a box: the bot cannot recover from an
opened (vanished) box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from selu_lightning.experts.base import Expert, ExpertStep

__all__ = ["BabyAIExpert"]

_LINES = {"In front of you": "front", "You see": "seen", "You carry": "carry"}
_TARGET = re.compile(r"(?:the|a) ((?:(?:red|green|blue|purple|yellow|grey) )?(?:box|ball|key|door))")


@dataclass(frozen=True)
class _View:
    mission: str
    front: str  # "a wall", "nothing (empty floor)", "a red door, closed", "a grey ball"
    seen: str  # "a purple box (2 ahead, 1 left); a red door, closed (3 ahead)" or "nothing"
    carry: str  # "nothing" or "a yellow key"


def _describe(obj: Any) -> str:
    """A bot subgoal's object (an ``ObjDesc`` or a ``WorldObj``) in words: "the purple box", "a door"."""
    color, kind = getattr(obj, "color", None), getattr(obj, "type", None)
    return "the " + " ".join(w for w in (color, kind or "object") if w)


class BabyAIExpert(Expert):
    """BabyAI's bot picks the action; the thoughts say what is in view and which subgoal the action serves.

    Needs ``observe_env(env)`` with a :class:`~selu_lightning.envs.babyai.BabyAIEnv` after every reset (the bot
    is built on its ``minigrid_env``). Noise plays another action that changes something (no walking into a wall,
    no dropping with empty hands, no toggling a box), with thoughts that argue for it.
    """

    fields: ClassVar[tuple[str, ...]] = ("thoughts", "action")

    def __init__(self, noise: float = 0.0) -> None:
        super().__init__(noise)
        self._bot = None
        self._grid = None  # the MiniGrid env the bot plays
        self._taken = None  # the MiniGrid action taken last (told to the bot at its next replan)

    def observe_env(self, env: Any) -> None:
        """A fresh bot for the episode ``env`` (a ``BabyAIEnv``) was just reset to."""
        from minigrid.utils.baby_ai_bot import BabyAIBot

        self._grid = env.minigrid_env
        self._bot = BabyAIBot(self._grid)
        self._taken = None

    def act(
        self, obs_text: str, info: dict[str, Any], legal_actions: Sequence[str], rng: np.random.Generator
    ) -> ExpertStep:
        """The base class's step; remembers the action played, which the bot's next replan must be told."""
        from selu_lightning.envs.babyai import ACTIONS

        step = super().act(obs_text, info, legal_actions, rng)
        self._taken = ACTIONS[step.action]
        return step

    def read(self, obs_text: str, info: dict[str, Any]) -> _View:
        parts: dict[str, str] = {}
        for line in obs_text.splitlines():
            head, _, rest = line.partition(": ")
            if head in _LINES:
                parts[_LINES[head]] = rest.rstrip(".")
        if len(parts) != len(_LINES):
            raise ValueError(f"cannot read the BabyAI view {obs_text!r} (build the env with text_state=True)")
        return _View(str(info.get("goal", "")), parts["front"], parts["seen"], parts["carry"])

    # -- the bot -----------------------------------------------------------------------------------------------
    def _replan(self) -> tuple[str, Any]:
        """The bot's action (as text) and the subgoal it serves; a bot confused by a noisy step is rebuilt from
        the current state (it then re-explores what it had seen)."""
        from minigrid.utils.baby_ai_bot import BabyAIBot, DisappearedBoxError

        from selu_lightning.envs.babyai import ACTIONS

        if self._bot is None:
            raise RuntimeError("BabyAIExpert needs observe_env(env) after every reset (its bot reads the grid)")
        try:
            action = self._bot.replan(self._taken)
        except (AssertionError, DisappearedBoxError):
            self._bot = BabyAIBot(self._grid)
            action = self._bot.replan()
        text = {int(a): t for t, a in ACTIONS.items()}.get(int(action))
        if text is None:
            raise ValueError(f"the BabyAI bot suggests {action!r}, which has no text action (mission done?)")
        return text, (self._bot.stack[-1] if self._bot.stack else None)

    # -- the words ---------------------------------------------------------------------------------------------
    @staticmethod
    def _opening(v: _View) -> str:
        front = "empty floor" if v.front.startswith("nothing") else v.front
        return f"The mission is to {v.mission}. In front of me is {front}. I see {v.seen}. I carry {v.carry}."

    @staticmethod
    def _subgoal(goal: Any, v: _View) -> str:
        kind = type(goal).__name__
        if kind == "GoNextToSubgoal":
            datum, reason = goal.datum, goal.reason
            if reason == "Explore":
                return f"To find {BabyAIExpert._target(v)}, I explore the part of the grid I have not seen yet"
            if isinstance(datum, (tuple, np.ndarray)):
                return "I go back to the cell I was heading for"
            if reason == "PutNext":
                return f"I carry {v.carry} and must put it next to {_describe(datum)}, so I go next to it"
            if reason == "Open":
                return f"I need to open {_describe(datum)}, so I go to it"
            return f"I am heading to {_describe(datum)}"
        if kind == "OpenSubgoal":
            return "The door in front of me is closed and I need it open"
        if kind == "CloseSubgoal":
            return "The door in front of me should be closed again"
        if kind == "PickupSubgoal":
            return f"I need {v.front}, which is right in front of me"
        if kind == "DropSubgoal":
            return f"I should put down {v.carry} in front of me"
        return "I follow my plan"

    @staticmethod
    def _because(action: str, v: _View, target: str, right: bool) -> str:
        """Why ``action``, as a sentence; ``right=False`` argues for an action the bot did not choose, toward
        ``target``."""
        if action == "go forward":
            return "The way ahead is free, so I go forward." if right else (
                f"Going forward should bring me closer to {target}, so I go forward."
            )
        if action in ("turn left", "turn right"):
            side = action.split()[1]
            return f"My way turns to the {side}, so I {action}." if right else (
                f"{target[0].upper()}{target[1:]} may be on my {side}, so I {action}."
            )
        if action == "pick up":
            if right:
                return "I pick it up."
            return f"{v.front[0].upper()}{v.front[1:]} may help with the mission, so I pick it up."
        if action == "drop":
            return "I drop it." if right else f"I do not need {v.carry} now, so I drop it."
        if action == "toggle":
            if right:
                return "I toggle it."
            return "Opening the door in front of me leads on, so I toggle it." if "closed" in v.front else (
                "The open door in front of me should be closed, so I toggle it."
            )
        return f"I {action}."

    @staticmethod
    def _target(v: _View) -> str:
        match = _TARGET.search(v.mission)
        return f"the {match.group(1)}" if match else "what the mission asks for"

    def best(self, state: _View, legal_actions: list[str]) -> ExpertStep:
        action, goal = self._replan()
        thoughts = f"{self._opening(state)} {self._subgoal(goal, state)}. {self._because(action, state, '', True)}"
        return ExpertStep(action, thoughts, {}, True)

    def wrong(self, state: _View, best: ExpertStep, legal_actions: list[str], rng: np.random.Generator) -> ExpertStep:
        front = state.front
        blocked = not (front.startswith("nothing") or front.endswith(", open"))
        door = " door" in front
        useless = {
            "go forward": blocked,
            "pick up": state.carry != "nothing" or front.startswith("nothing") or door or front == "a wall",
            "drop": state.carry == "nothing" or not front.startswith("nothing"),
            "toggle": not door or "locked" in front,  # never a box: toggling one makes it vanish
        }
        options = [a for a in legal_actions if a != best.action and not useless.get(a, False)]
        options = options or [a for a in legal_actions if a != best.action]
        action = options[int(rng.integers(len(options)))]
        reason = self._because(action, state, self._target(state), False)
        return ExpertStep(action, f"{self._opening(state)} {reason}", {}, False)
