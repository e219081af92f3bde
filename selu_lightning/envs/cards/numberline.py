"""NumberLine: move a number on 0..5 to a target one step at a time (RL4VLM's simplest task)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.envs.cards.render import BLACK, CANVAS, WHITE, font, to_array
from selu_lightning.errors import ConfigError

__all__ = ["NumberLineEnv"]


@lru_cache(maxsize=64)
def _frame(target: int, position: int) -> Image.Image:
    # 36 possible states: cache whole frames.
    img = Image.new("RGB", (CANVAS, CANVAS), WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((30, 60), f"Target: {target}", fill=BLACK, font=font(44))
    draw.text((30, 180), f"Current: {position}", fill=BLACK, font=font(44))
    return img


@register_env("numberline")
class NumberLineEnv(TextVisualEnv):
    """Positions 0..5; actions "+" (right) and "-" (left); RL4VLM's ``gym-cards/gym_cards/envs/numberline.py``.

    Start (``start="rl4vlm"``, RL4VLM's ``reset``): position and target each uniform on 0..5; if they are
    equal, the target becomes ``(target + 1) % 5`` (sic, not % 6). So start 0..3 gets the next number as its
    target with probability 2/6 (each other target 1/6), start 4 gets 0 and start 5 gets 1 that often; the
    target is never equal to the start. ``start="uniform"``: the target uniform over the five other positions.

    Reward +1 on reaching the target (terminates), -1 for a move that does not reduce the distance (including
    bumping into 0 or 5), 0 otherwise. Truncated after 10 steps. ``success`` is RL4VLM's (``VLM_PPO/main.py``):
    the episode's return is above 0, i.e. the target was reached without a wasted move.

    An action string that is not exactly "+" or "-" moves nothing: -1, and it counts as a step (as an action
    other than left/right does in RL4VLM's env; its parser never sends one).
    ``reset(options={"state": {"position": p, "target": g}})`` starts from a given state.

    obs text: ``"Target: 3\\nCurrent: 1"``.
    """

    task_description = (
        "You are playing NumberLine. The image shows a target number and your current number, both between 0 "
        'and 5. Each action moves the current number by one: "+" adds 1 and "-" subtracts 1 (it cannot go below 0 '
        "or above 5). Reach the target: a move that does not bring you closer costs a point, reaching it scores a "
        "point, and you have at most 10 moves."
    )
    ACTIONS = ("+", "-")
    MAX_POSITION = 5
    MAX_STEPS = 10
    STARTS = ("rl4vlm", "uniform")

    def __init__(self, text_state: bool = True, image_size: int = 300, start: str = "rl4vlm") -> None:
        """
        Args:
            text_state: Also give the state as text in ``obs["text"]``.
            image_size: Side of the square frame in pixels.
            start: How a reset draws position and target: "rl4vlm" (RL4VLM's rule, see the class docstring) or
                "uniform" (every ordered pair of distinct positions equally likely).
        """
        if start not in self.STARTS:
            raise ConfigError(f"NumberLineEnv: start must be one of {self.STARTS} (got {start!r})")
        super().__init__(text_state=text_state, image_size=image_size)
        self.start = start
        self.render_mode = "rgb_array"
        self._over = True

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        state = (options or {}).get("state")
        if state is None:
            self.position = int(self.np_random.integers(0, self.MAX_POSITION + 1))
            if self.start == "rl4vlm":
                self.target = int(self.np_random.integers(0, self.MAX_POSITION + 1))
                if self.target == self.position:
                    self.target = (self.target + 1) % self.MAX_POSITION  # sic: % 5, not % 6
            else:  # uniform over the other five positions: draw among them, skipping the start
                self.target = int(self.np_random.integers(0, self.MAX_POSITION))
                if self.target >= self.position:
                    self.target += 1
        else:
            self.position, self.target = int(state["position"]), int(state["target"])
            if not (0 <= self.position <= self.MAX_POSITION and 0 <= self.target <= self.MAX_POSITION):
                raise ValueError(f"position and target must be in 0..{self.MAX_POSITION}; got {state}")
            if self.position == self.target:
                raise ValueError(f"position and target must differ; got {state}")
        self.steps = 0
        self.episode_return = 0.0
        self._over = False
        self._frame = to_array(_frame(self.target, self.position), self.image_size)
        return self._obs(), self._info()

    def step(self, action: str):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset()")
        self.steps += 1
        before = abs(self.position - self.target)
        if action == "+":
            self.position = min(self.position + 1, self.MAX_POSITION)
        elif action == "-":
            self.position = max(self.position - 1, 0)
        after = abs(self.position - self.target)
        terminated = after == 0
        reward = 1.0 if terminated else (0.0 if after < before else -1.0)
        truncated = not terminated and self.steps >= self.MAX_STEPS
        self.episode_return += reward
        self._over = terminated or truncated
        self._frame = to_array(_frame(self.target, self.position), self.image_size)
        return self._obs(), reward, terminated, truncated, self._info()

    def render(self) -> np.ndarray:
        return self._frame

    def _obs(self) -> dict[str, Any]:
        text = f"Target: {self.target}\nCurrent: {self.position}" if self.text_state else ""
        return {"image": self._frame, "text": text}

    def _info(self) -> dict[str, Any]:
        return {
            "legal_actions": list(self.ACTIONS),
            "goal": f"Move the current number to the target number {self.target}.",
            "success": self.episode_return > 0,
        }
