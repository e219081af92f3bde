"""The VirtualHome expert: the env's graph program, replanned from the current graph and checked against the legal
actions, with a one-step lookahead when it stalls.

Privileged (demonstration only, see :mod:`selu_lightning.experts.base`): objects in another room or in a closed
container are out of the policy's sight, and only the graph says where they are. The expert therefore needs
``observe_env`` after every reset (the collection command calls it) and plans with
:meth:`~selu_lightning.envs.virtualhome.VirtualHomeEnv.expert_actions`, the program the env samples its tasks by
(stand up, walk to the room, open the container, act; for "put", then carry it to the destination). Its thoughts
state only what the observation text shows (room, posture, what is held, whether the task's objects are in
sight) and hedge what the graph knows ("the apple may be in the kitchen").

When the program's next action is not legal (a noisy step filled both hands, say), the expert looks one step
ahead over the legal actions on copies of the env and plays the one after which the program resumes with the
fewest steps.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from selu_lightning.experts.base import Expert, ExpertStep

__all__ = ["VirtualHomeExpert"]

_GOAL = re.compile(r"^(pick up|open|switch on|sit on|put) the (.+?)(?: (in|on) the (.+?))?\.?$", re.IGNORECASE)


@dataclass(frozen=True)
class _Scene:
    goal: str
    verb: str  # "pick up", "open", "switch on", "sit on", "put"
    obj: str
    dest: str | None
    room: str
    posture: str  # "standing" or "sitting on the sofa"
    held: tuple[str, ...]
    close: str  # the "Close to you" listing ("" when none)
    seen: str  # the "You see" listing
    others: tuple[str, ...]  # the other rooms


def _listed(listing: str, name: str) -> str | None:
    """``name``'s entry in a listing ("apple (in fridge)"), or None. Details in parentheses may hold commas."""
    match = re.search(rf"(?:^|, ){re.escape(name)}( \([^)]*\))?(?=, |$)", listing)
    return None if match is None else name + (match.group(1) or "")


class VirtualHomeExpert(Expert):
    """Follows the env's graph program (``expert_actions``); explains each action by what it is for.

    Needs ``observe_env(env)`` with a :class:`~selu_lightning.envs.virtualhome.VirtualHomeEnv` after every reset.
    Noise plays another legal action with thoughts that argue for it; the program replans from wherever that leads.
    """

    fields: ClassVar[tuple[str, ...]] = ("thoughts", "action")

    def __init__(self, noise: float = 0.0) -> None:
        super().__init__(noise)
        self._env = None

    def observe_env(self, env: Any) -> None:
        """Keep the env (a ``VirtualHomeEnv``) whose graph the program reads this episode."""
        self._env = env

    def read(self, obs_text: str, info: dict[str, Any]) -> _Scene:
        lines = obs_text.splitlines()
        pattern = r"You are in the (.+?), (standing|sitting on the .+?), holding (.+)\."
        head = re.fullmatch(pattern, lines[0]) if lines else None
        goal = str(info.get("goal", ""))
        task = _GOAL.match(goal.strip())
        if head is None or task is None:
            raise ValueError(
                f"cannot read the VirtualHome text {obs_text!r} / goal {goal!r} (build the env with text_state=True)"
            )
        parts = {k: v.rstrip(".") for k, _, v in (line.partition(": ") for line in lines[1:])}
        held = () if head.group(3) == "nothing" else tuple(head.group(3).split(" and "))
        verb, obj, _, dest = task.groups()
        return _Scene(goal, verb.lower(), obj, dest, head.group(1), head.group(2), held,
                      parts.get("Close to you", ""), parts.get("You see", ""),
                      tuple(r for r in parts.get("Other rooms", "").split(", ") if r))  # fmt: skip

    # -- the planner -------------------------------------------------------------------------------------------
    @staticmethod
    def _program(env: Any, close: str) -> list[str]:
        """The env's program from its current graph, without its leading walks to what is already close (the
        program is written from scratch, so replanning every step would otherwise walk to the same thing forever).
        ``close``: the observation's "Close to you" listing."""
        plan = env.expert_actions()
        while len(plan) > 1 and plan[0].startswith("walk to ") and _listed(close, plan[0][len("walk to ") :]):
            plan = plan[1:]
        return plan

    def _plan(self, state: _Scene, legal: list[str]) -> tuple[str, list[str]]:
        """The action to play and the program it starts (the rest of the plan, for the thoughts)."""
        if self._env is None:
            raise RuntimeError("VirtualHomeExpert needs observe_env(env) after every reset (it plans on the graph)")
        plan = self._program(self._env, state.close)
        if plan and plan[0] in legal:
            return plan[0], plan
        best: tuple[int, str, list[str]] | None = None
        for action in legal:  # one step ahead on copies: the action after which the program resumes soonest
            copy = pickle.loads(pickle.dumps(self._env))
            obs, *_, info = copy.step(action)
            if info["success"]:
                return action, [action]
            if info["action_error"]:
                continue
            rest = self._program(copy, self.read(obs["text"], info).close)
            if rest and rest[0] in info["legal_actions"] and (best is None or len(rest) < best[0]):
                best = (len(rest), action, [action, *rest])
        if best is None:
            raise ValueError(f"VirtualHome: no legal action leads back to a plan for {state.goal!r}")
        return best[1], best[2]

    # -- the words ---------------------------------------------------------------------------------------------
    def _opening(self, s: _Scene) -> str:
        hands = " and the ".join(s.held) if s.held else "nothing"
        text = f"The task: {s.goal} I am in the {s.room}, {s.posture}, holding {'the ' if s.held else ''}{hands}."
        for name in dict.fromkeys(n for n in (s.obj, s.dest) if n):
            if name in s.held:
                continue
            if (entry := _listed(s.close, name)) is not None:
                text += f" The {entry} is close to me."
            elif (entry := _listed(s.seen, name)) is not None:
                text += f" I see the {entry}."
            else:
                text += f" The {name} is not in sight."
        return text

    @staticmethod
    def _explain(action: str, s: _Scene, rest: list[str], right: bool) -> str:
        """Why ``action``; ``rest`` is the program after it. ``right=False`` argues for an action off the program."""
        need = next((n for n in (s.obj, s.dest) if n and n not in s.held), s.obj) if s.verb == "put" else s.obj
        if action.startswith("walk to "):
            place = action[len("walk to ") :]
            if place in s.others:
                if right:
                    return f"The {need} may be in the {place}, so I walk there."
                in_sight = _listed(s.close, need) or _listed(s.seen, need)
                what = "Something the task needs" if in_sight else f"The {need}"
                return f"{what} may be in the {place}, so I walk there to look."
            following = rest[0] if rest else ""
            if right and following.startswith("open ") and following != f"open {s.obj}":
                return f"The {need} may be inside the closed {place}, so I walk to it to open it."
            if right and place == need:
                return f"I need to be close to the {place} to use it, so I walk to it."
            return f"The {need} may be near the {place}, so I walk to it."
        if action.startswith("open "):
            thing = action[len("open ") :]
            if right and s.verb == "open" and thing == s.obj:
                return f"The {thing} is close and closed, and opening it is the task, so I open it."
            if right and s.verb == "put" and thing == s.dest:
                return f"I hold the {s.obj}, and the {thing} must be open to put it in, so I open it."
            return f"The {need} may be inside the {thing}, so I open it."
        if action.startswith("close "):
            return f"I do not need the {action[len('close ') :]} open, so I close it."
        if action.startswith("grab "):
            thing = action[len("grab ") :]
            if right:
                return f"The {thing} is within reach and the task needs it, so I grab it."
            return f"The {thing} may be useful for the task, so I grab it."
        if action.startswith("put "):
            if right:
                return f"I hold the {s.obj} next to the {s.dest}, so I {action}, as the task asks."
            return f"I do not need to carry this any more, so I {action}."
        if action.startswith(("switch on ", "switch off ", "sit on ")):
            first, second, thing = action.split(" ", 2)
            doing = f"{first} it {second}" if first == "switch" else f"{first} {second} it"
            if right:
                return f"The {thing} is close to me, so I {doing}, as the task asks."
            return f"It may help with the task to {first} {second} the {thing}, so I {doing}."
        if action == "stand up":
            if right:
                return "I cannot walk while sitting, so I stand up first."
            return "I stand up to move around."
        return f"Next I {action}."

    # -- the choices -------------------------------------------------------------------------------------------
    def best(self, state: _Scene, legal_actions: list[str]) -> ExpertStep:
        action, plan = self._plan(state, legal_actions)
        reason = self._explain(action, state, plan[1:], right=True)
        return ExpertStep(action, f"{self._opening(state)} {reason}", {}, True)

    def wrong(self, state: _Scene, best: ExpertStep, legal_actions: list[str], rng: np.random.Generator) -> ExpertStep:
        options = [a for a in legal_actions if a != best.action]
        if not options:  # a single legal action: nothing else to play
            return best
        action = options[int(rng.integers(len(options)))]
        return ExpertStep(action, f"{self._opening(state)} {self._explain(action, state, [], right=False)}", {}, False)
