"""BabyAI: real MiniGrid levels with language missions (go to, pick up, open, put next to) behind text actions.

Needs ``pip install minigrid==3.2.0``. Rendering is pure numpy; pygame is imported by minigrid but never opens a
window here (``SDL_VIDEODRIVER=dummy`` is set before the import, so headless machines work).

State key (GiGPO's anchor states, :meth:`BabyAIEnv.state_key`): the level, the agent's cell and direction, what it
carries and the whole grid's encoding (doors open or closed, objects moved): the full MiniGrid state, not the
agent's partial view (two cells can look alike).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from typing import Any, Literal, Sequence  # noqa: E402

import gymnasium as gym  # noqa: E402
import minigrid  # noqa: E402,F401  (registers the BabyAI-* ids with gymnasium)
import numpy as np  # noqa: E402
from minigrid.core.actions import Actions  # noqa: E402
from minigrid.minigrid_env import MiniGridEnv  # noqa: E402
from PIL import Image  # noqa: E402

from selu_lightning.critic.tasks import SceneObject, TaskSpec, merge_objects, split_listing  # noqa: E402
from selu_lightning.envs.base import TextVisualEnv, register_env  # noqa: E402

__all__ = ["BabyAIEnv", "ACTIONS", "DEFAULT_LEVELS"]

#: Text action -> MiniGrid action. "done" is left out: BabyAI levels verify missions on the other actions, so
#: MiniGrid's ``done`` does nothing (unless BABYAI_DONE_ACTIONS is set) and would only waste a step.
ACTIONS: dict[str, Actions] = {
    "turn left": Actions.left,
    "turn right": Actions.right,
    "go forward": Actions.forward,
    "pick up": Actions.pickup,
    "drop": Actions.drop,
    "toggle": Actions.toggle,
}

#: One level per mission kind, each in the agent's own room (the BabyAI paper's "Local" family).
DEFAULT_LEVELS = (
    "BabyAI-GoToLocal-v0",  # "go to the purple box" (8x8 room, 8 distractors)
    "BabyAI-PickupLoc-v0",  # "pick up the ball in front of you"
    "BabyAI-OpenDoor-v0",  # "open the red door" / "open the door on your left" (4 doors around the agent's room)
    "BabyAI-PutNextLocal-v0",  # "put the yellow key next to the purple box"
)

_NO_OP = Actions.done

# Single-clause missions (BabyAI's grammar): "<verb> the|a [colour] type [location]"; composite ones do not match.
_OBJ = (r"(?:the|a) (?:(red|green|blue|purple|yellow|grey) )?(box|ball|key|door)"
        r"(?: (?:in front of you|behind you|on your left|on your right))?")
_MISSIONS = {
    "go to": re.compile(rf"go to {_OBJ}"),
    "pick up": re.compile(rf"pick up {_OBJ}"),
    "open": re.compile(rf"open {_OBJ}"),
    "put next to": re.compile(rf"put {_OBJ} next to {_OBJ}"),
}


@register_env("babyai")
class BabyAIEnv(TextVisualEnv):
    """A real BabyAI level per episode, with MiniGrid's own dynamics, reward and success test.

    ``reset`` draws a level from ``levels`` with ``self.np_random`` and a seed for that level's generator from the
    same RNG, so one seed gives one mission and one grid. Actions are the strings in ``ACTIONS`` ("turn left",
    "turn right", "go forward", "pick up", "drop", "toggle"; toggle opens and closes doors); ``legal_actions``
    always lists all six. Reward is the level's: ``1 - 0.9 * steps / max_steps`` when the mission is completed
    (that ends the episode), else 0. ``success``: the episode ended with a positive reward. Truncated after
    ``max_steps`` (default: the level's own limit, e.g. 64 for GoToLocal, 576 for OpenDoor).

    An action string not in ``ACTIONS`` (after stripping and lower-casing) is a no-op that costs a step: the
    world does not change, reward 0, and it counts towards ``max_steps``. ``info["illegal_action"]`` is True
    for that step.

    Image (``view``): ``"full"`` (default) is MiniGrid's standard frame of the whole grid with the agent's 7x7
    field of view highlighted; ``"agent"`` is the agent's egocentric 7x7 view (agent at the bottom centre,
    facing up, occluded cells dark). Either is drawn with the largest whole-pixel tile that fits ``image_size``
    (37 px for an 8x8 room at 300, 13 px for OpenDoor's 22x22 grid) and centred on black, so cells stay sharp
    and square; only when even 4-pixel tiles do not fit is the frame resized.

    obs text (``text_state``): what the agent sees, from its own field of view, e.g.
    ``"In front of you: a wall.\\nYou see: a purple box (2 ahead, 1 left); a red door, closed (3 ahead).\\n"
    "You carry: nothing."``: at most ``max_listed`` visible objects, nearest first, with steps ahead and left/right.
    """

    has_goal = True
    task_description = (
        "You control an agent (the red triangle) in a BabyAI grid world, seen from above. Each action is one of: "
        '"turn left" or "turn right" (turn 90 degrees in place), "go forward" (move one cell in the direction the '
        'triangle points), "pick up" (take the object in the cell in front), "drop" (put the carried object in the '
        'cell in front) and "toggle" (open or close the door in front). You can carry one object at a time. '
        "Walls and objects block movement; closed doors must be opened first. Complete the mission in as few "
        "steps as you can: the reward shrinks with every step taken."
    )

    def __init__(
        self,
        levels: Sequence[str] | None = None,
        text_state: bool = True,
        image_size: int = 300,
        max_steps: int | None = None,
        view: Literal["full", "agent"] = "full",
        max_listed: int = 6,
    ) -> None:
        """
        Args:
            levels: BabyAI level ids to draw from (``gymnasium`` ids such as ``BabyAI-GoToLocal-v0``); default
                ``DEFAULT_LEVELS``, one per mission kind.
            text_state: Also describe the agent's view in ``obs["text"]``.
            image_size: Side of the square observation image.
            max_steps: Step limit per episode; ``None`` keeps each level's own.
            view: ``"full"`` grid or the ``"agent"``'s egocentric view as the image.
            max_listed: At most this many visible objects in the text.
        """
        super().__init__(text_state=text_state, image_size=image_size)
        self.levels = list(levels) if levels is not None else list(DEFAULT_LEVELS)
        if not self.levels:
            raise ValueError("levels must name at least one BabyAI level")
        unknown = [lvl for lvl in self.levels if lvl not in gym.registry]
        if unknown:
            raise ValueError(f"unknown BabyAI level(s) {unknown}; e.g. {', '.join(DEFAULT_LEVELS)}")
        if view not in ("full", "agent"):
            raise ValueError(f"view must be 'full' or 'agent' (got {view!r})")
        self.max_steps = max_steps
        self.view = view
        self.max_listed = max_listed
        self.render_mode = "rgb_array"
        self._envs: dict[str, gym.Env] = {}
        self._level: str | None = None
        self._over = True

    # -- episode ---------------------------------------------------------------------------------------------
    @property
    def minigrid_env(self) -> MiniGridEnv:
        """The MiniGrid level playing now (for experts such as ``minigrid.utils.baby_ai_bot.BabyAIBot``)."""
        if self._level is None:
            raise RuntimeError("no episode yet: call reset()")
        return self._envs[self._level].unwrapped

    @property
    def level(self) -> str | None:
        return self._level

    def _make(self, level: str) -> gym.Env:
        if level not in self._envs:
            kwargs: dict[str, Any] = {"render_mode": "rgb_array"}
            if self.max_steps is not None:
                kwargs["max_steps"] = int(self.max_steps)
            self._envs[level] = gym.make(level, disable_env_checker=True, **kwargs)
        return self._envs[level]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._level = self.levels[int(self.np_random.integers(len(self.levels)))]
        level_seed = int(self.np_random.integers(2**31 - 1))
        with contextlib.redirect_stdout(io.StringIO()):  # level generators print each rejected layout
            self._make(self._level).reset(seed=level_seed)
        self.steps = 0
        self._success = False
        self._over = False
        return self._obs(), self._info(illegal=False)

    def step(self, action: str):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset()")
        key = action.strip().lower() if isinstance(action, str) else ""
        illegal = key not in ACTIONS
        _, reward, terminated, truncated, _ = self._envs[self._level].step(_NO_OP if illegal else ACTIONS[key])
        self.steps += 1
        reward = float(reward)
        self._success = self._success or (terminated and reward > 0)
        self._over = terminated or truncated
        return self._obs(), reward, terminated, truncated, self._info(illegal=illegal)

    # -- observation -----------------------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        env = self.minigrid_env
        if self.view == "agent":
            cells = env.agent_view_size
            frame = env.get_frame(highlight=True, tile_size=self._tile(cells), agent_pov=True)
        else:
            frame = env.get_frame(highlight=True, tile_size=self._tile(max(env.width, env.height)), agent_pov=False)
        h, w = frame.shape[:2]
        side = max(h, w, self.image_size)
        if (h, w) != (side, side):  # centre on black: non-square grids keep square cells
            square = np.zeros((side, side, 3), np.uint8)
            square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = frame
            frame = square
        if side != self.image_size:  # only when even 4-pixel tiles do not fit
            frame = np.asarray(Image.fromarray(frame).resize((self.image_size, self.image_size), Image.BILINEAR))
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def _tile(self, cells: int) -> int:
        # The largest tile that fits image_size: no resampling (sharp cells, and resizing costs more than drawing).
        return max(4, self.image_size // cells)

    def describe(self) -> str:
        """The agent's view in words (see the class docstring)."""
        env = self.minigrid_env
        grid, vis = env.gen_obs_grid()
        size = grid.width
        me_x, me_y = size // 2, size - 1
        front = grid.get(me_x, me_y - 1)
        seen = []
        for x in range(size):
            for y in range(size):
                obj = grid.get(x, y)
                if obj is None or not vis[x, y] or (x, y) == (me_x, me_y) or obj.type in ("wall", "floor"):
                    continue
                ahead, side = me_y - y, x - me_x
                where = ([f"{ahead} ahead"] if ahead else []) + ([f"{abs(side)} {'right' if side > 0 else 'left'}"]
                                                                  if side else [])  # fmt: skip
                seen.append((ahead + abs(side), ahead, side, f"{_name(obj)} ({', '.join(where)})"))
        seen.sort()
        listed = "; ".join(s[-1] for s in seen[: self.max_listed]) or "nothing"
        if len(seen) > self.max_listed:
            listed += f"; and {len(seen) - self.max_listed} more"
        carry = _name(env.carrying) if env.carrying is not None else "nothing"
        in_front = _name(front) if front is not None else "nothing (empty floor)"
        return f"In front of you: {in_front}.\nYou see: {listed}.\nYou carry: {carry}."

    def _obs(self) -> dict[str, Any]:
        return {"image": self.render(), "text": self.describe() if self.text_state else ""}

    # -- task structure (SELU's critic: what a mission asks, what an observation shows; never success) ----
    task_verbs = ("go to", "pick up", "open", "put next to")

    @classmethod
    def task_spec(cls, instruction: str) -> TaskSpec | None:
        """Verb and object names ("red ball"; location phrases such as "in front of you" are dropped) of a
        single-clause mission; None for composite ones ("... and ...", "... then ...", "after you ...")."""
        text = " ".join(instruction.strip().lower().rstrip(".").split())
        for verb, pattern in _MISSIONS.items():
            match = pattern.fullmatch(text)
            if match:
                names = [" ".join(p for p in match.group(g, g + 1) if p) for g in range(1, match.re.groups, 2)]
                return TaskSpec(verb, tuple(names))
        return None

    @classmethod
    def task_instruction(cls, spec: TaskSpec) -> str:
        """A mission in BabyAI's wording for a spec."""
        if spec.verb == "put next to":
            return f"put the {spec.object} next to the {spec.target}"
        return f"{spec.verb} the {spec.object}"

    @classmethod
    def scene_objects(cls, observation: str) -> list[SceneObject]:
        """Objects ``describe`` lists: in front ("in front"), seen, carried ("carried"), with door states."""
        items: list[tuple[str, list[str]]] = []
        for line in observation.splitlines():
            head, _, rest = line.rstrip(".").partition(": ")
            extra = {"In front of you": ["in front"], "You carry": ["carried"], "You see": []}.get(head)
            if extra is None:
                continue
            for item in split_listing(rest, ";") if head == "You see" else [rest]:
                name, *states = [p.strip() for p in re.sub(r" \([^()]*\)$", "", item).split(",")]
                if name.startswith(("a ", "an ")) and name != "a wall":
                    items.append((name.split(" ", 1)[1], [*states, *extra]))
        return merge_objects(items)

    def state_key(self, obs: dict[str, Any], info: dict[str, Any]) -> tuple:
        """The full MiniGrid state: level, agent cell and direction, carried object, grid encoding (hashed)."""
        env = self.minigrid_env
        carrying = tuple(int(v) for v in env.carrying.encode()) if env.carrying is not None else None
        grid = hashlib.sha1(np.ascontiguousarray(env.grid.encode()).tobytes()).hexdigest()
        return (self._level, tuple(int(v) for v in env.agent_pos), int(env.agent_dir), carrying, grid)

    def _info(self, illegal: bool) -> dict[str, Any]:
        return {
            "legal_actions": list(ACTIONS),
            "goal": self.minigrid_env.mission,
            "success": self._success,
            "illegal_action": illegal,
            "level": self._level,
        }

    def close(self) -> None:
        for env in self._envs.values():
            env.close()


def _name(obj: Any) -> str:
    """"a red door, closed", "a wall", "a grey ball"."""
    if obj.type == "wall":
        return "a wall"
    name = f"a {obj.color} {obj.type}"
    if obj.type == "door":
        name += ", locked" if obj.is_locked else (", open" if obj.is_open else ", closed")
    return name
