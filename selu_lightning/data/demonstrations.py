"""DemonstrationDataModule: the env runner whose training data is a TrajectoryStore's episodes, not rollouts.

Held-out evaluation, seeds and checkpoints are the runner's (``RolloutDataModule``); each epoch the module
(``ActorSFT``) turns the stored episodes into its examples (``build_train_data``). The store's ground-truth
field is never read here.
"""

from __future__ import annotations

import os
from typing import Any

from selu_lightning.data.rollout import RolloutDataModule
from selu_lightning.data.store import TrajectoryStore
from selu_lightning.errors import ConfigError

__all__ = ["DemonstrationDataModule"]


class DemonstrationDataModule(RolloutDataModule):
    def __init__(self, demonstrations: str, max_episodes: int | None = None, **kwargs: Any) -> None:
        """
        Args:
            demonstrations: A TrajectoryStore folder (e.g. written by ``python -m selu_lightning.data.collect``).
            max_episodes: Train on the first this many stored episodes (null: all).
            **kwargs: The runner's options for held-out evaluation (``env``, ``env_kwargs``, ``eval_env_kwargs``,
                ``val_episodes``, ``test_episodes``, ``eval_num_envs``, ``eval_greedy``, ``seed``, workers), and
                ``record_to``, which here stores only what ``selu predict`` plays (must differ from
                ``demonstrations``). The rollout options (``num_envs``, ``steps_per_epoch``, ``keep_frames``)
                have no effect: nothing is rolled out for training.
        """
        record_to = kwargs.get("record_to")
        if record_to is not None and os.path.abspath(record_to) == os.path.abspath(demonstrations):
            raise ConfigError("data.record_to must not be the demonstrations' folder (predictions would mix in)")
        super().__init__(**kwargs)
        self.demonstrations = demonstrations
        self.max_episodes = max_episodes
        self._demo_loader: Any = None

    def train_dataloader(self) -> Any:
        """The stored episodes as the module's examples, built once (the loader reshuffles every epoch)."""
        if self._demo_loader is None:
            try:
                store = TrajectoryStore(self.demonstrations)
            except FileNotFoundError as err:
                raise ConfigError(f"data.demonstrations: {err}") from None
            recorded_env = store.metadata.get("env")
            if recorded_env not in (None, self.env):
                raise ConfigError(f"data.demonstrations were recorded in env {recorded_env!r}, data.env is {self.env!r}")
            episodes = list(store.iter_trajectories())  # without ground truth
            if self.max_episodes is not None:
                episodes = episodes[: self.max_episodes]
            self._demo_loader = self.trainer.lightning_module.build_train_data(episodes)
        return self._demo_loader
