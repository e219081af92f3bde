"""Test double: an env whose episodes end at every step or never, by the parity of its first reset seed.

Under DDP each rank's envs get their own seeds, so one rank can end episodes every step while the other
never ends one: what each rank's rollout sees differs, and every collective must still line up."""

from __future__ import annotations

import numpy as np

from selu_lightning.envs.base import TextVisualEnv


class UnevenStubEnv(TextVisualEnv):
    task_description = "Say go."

    def __init__(self) -> None:
        super().__init__(image_size=32)
        self.short: bool | None = None

    def _obs(self):
        return {"image": np.zeros((32, 32, 3), np.uint8), "text": "short" if self.short else "long"}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if self.short is None:
            self.short = bool(seed % 2)
        return self._obs(), {"legal_actions": ["go", "stay"], "goal": "go", "success": False}

    def step(self, action):
        done = bool(self.short)
        return self._obs(), 1.0, done, False, {"legal_actions": ["go", "stay"], "goal": "go", "success": done}
