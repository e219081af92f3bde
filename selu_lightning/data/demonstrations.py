"""DemonstrationDataModule: the env runner whose training data is a TrajectoryStore's episodes, not rollouts.

Held-out evaluation, seeds and checkpoints are the runner's (``RolloutDataModule``); the module (``ActorSFT``,
``LatentActionPretrain``) turns the stored episodes into its examples once (``build_train_data``). More stores,
from any env, may join as text-only episodes (``text_only``: their frames dropped), which is how transcripts of
other tasks widen a latent action space's text coverage. The stores' ground-truth field is never read here.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator
from typing import Any

from selu_lightning.data.rollout import RolloutDataModule
from selu_lightning.data.store import TrajectoryStore
from selu_lightning.data.trajectories import Trajectory
from selu_lightning.errors import ConfigError

__all__ = ["DemonstrationDataModule"]


class DemonstrationDataModule(RolloutDataModule):
    def __init__(
        self, demonstrations: str, max_episodes: int | None = None, text_only: list[str] | None = None, **kwargs: Any
    ) -> None:
        """
        Args:
            demonstrations: A TrajectoryStore folder (e.g. written by ``python -m selu_lightning.data.collect``).
            max_episodes: Train on the first this many stored episodes (null: all).
            text_only: More TrajectoryStore folders, any env (e.g. ALFWorld transcripts), whose episodes join
                the training data without their frames: text-only examples for ``LatentActionPretrain``'s
                ``joint`` and ``policy_bc`` stages. ``ActorSFT`` with an image action space refuses them.
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
        self.text_only = list(text_only or [])
        if os.path.abspath(demonstrations) in map(os.path.abspath, self.text_only):
            raise ConfigError("data.text_only must not list data.demonstrations (its steps would count twice)")
        self._demo_loader: Any = None

    def train_dataloader(self) -> Any:
        """The stored episodes as the module's examples, built once (the loader reshuffles every epoch). The
        episodes stream from the stores into ``build_train_data``, so a step's frame is dropped once it is encoded
        and the whole store's frames are never in memory together."""
        if self._demo_loader is None:
            store = TrajectoryStore(self.demonstrations)
            episodes = _episodes(store, "data.demonstrations")
            recorded_env = store.metadata.get("env")
            if recorded_env not in (None, self.env):
                raise ConfigError(f"data.demonstrations were recorded in env {recorded_env!r}, data.env is {self.env!r}")
            if self.max_episodes is not None:
                episodes = itertools.islice(episodes, self.max_episodes)
            transcripts = [map(without_frames, _episodes(TrajectoryStore(p), "data.text_only")) for p in self.text_only]
            module = self.trainer.lightning_module
            self._demo_loader = module.build_train_data(itertools.chain(episodes, *transcripts))
        return self._demo_loader


def _episodes(store: TrajectoryStore, option: str) -> Iterator[Trajectory]:
    """The store's episodes without ground truth, streamed; a missing store is a one-line config error naming
    the option (raised here, before anything is read)."""
    try:
        store.data_files()
    except FileNotFoundError as err:
        raise ConfigError(f"{option}: {err}") from None
    return store.iter_trajectories()


def without_frames(trajectory: Trajectory, keep_final_frame: bool = False) -> Trajectory:
    """The episode as a transcript: every step's frame (and the final frame, unless kept) removed, the text kept."""
    steps = [dataclasses.replace(step, frame=None) for step in trajectory.steps]
    final = trajectory.final_frame if keep_final_frame else None
    return dataclasses.replace(trajectory, steps=steps, final_frame=final)
