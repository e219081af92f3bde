"""CriticDataModule: the runner of SELU's critic. Training episodes come from TrajectoryStores read WITHOUT ground
truth; held-out episodes come with their success label kept apart from them (``JudgedEpisodes``).

This module and :func:`judged_batches` are evaluation code: the only place the critic's ground truth is read
(invariant 7). The critic (``SELUCritic.build_train_data``) turns the training episodes into its own examples.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import lightning as L
from torch.utils.data import DataLoader

from selu_lightning.data.store import TrajectoryStore
from selu_lightning.data.trajectories import Trajectory
from selu_lightning.errors import ConfigError
from selu_lightning.rewards.base import judged_view

__all__ = ["CriticDataModule", "JudgedEpisodes", "judged_batches"]


class JudgedEpisodes:
    """One evaluation batch: episodes as a judge sees them (no ground truth, no env rewards) and, apart, whether
    each succeeded. A plain object, so Lightning neither copies nor moves it."""

    def __init__(self, trajectories: list[Trajectory], labels: list[bool] | None) -> None:
        """``labels``: each episode's ground-truth success (None for prediction, which needs none)."""
        if labels is not None and len(trajectories) != len(labels):
            raise ValueError(f"{len(trajectories)} episodes but {len(labels)} labels")
        self.trajectories, self.labels = trajectories, labels

    def __len__(self) -> int:
        return len(self.trajectories)


def judged_batches(trajectories: Sequence[Trajectory], batch_size: int) -> list[JudgedEpisodes]:
    """Episodes read WITH ground truth, split into judged views and success labels (evaluation only)."""
    missing = [t.episode_id for t in trajectories if "success" not in t.ground_truth]
    if missing:
        raise ConfigError(f"held-out episodes without a ground-truth success (e.g. {missing[0]}): was the store "
                          "written by a rollout or collector that records it?")  # fmt: skip
    out = []
    for k in range(0, len(trajectories), batch_size):
        chunk = trajectories[k : k + batch_size]
        out.append(JudgedEpisodes([judged_view(t) for t in chunk], [bool(t.ground_truth["success"]) for t in chunk]))
    return out


def _identity(batch: Any) -> Any:
    return batch


def _listed(paths: str | list[str]) -> list[str]:
    """One store folder or several (a recording by several ranks writes one per rank)."""
    return [paths] if isinstance(paths, str) else list(paths)


class CriticDataModule(L.LightningDataModule):
    def __init__(
        self,
        trajectories: str | list[str],
        val_trajectories: str | list[str] | None = None,
        test_trajectories: str | list[str] | None = None,
        env: str | None = None,
        max_episodes: int | None = None,
        eval_batch_size: int = 16,
        labels: Literal["self", "scene", "oracle"] = "self",
    ) -> None:
        """
        Args:
            trajectories: TrajectoryStore folder(s) of the actor's episodes to learn from (ground truth not read).
            val_trajectories: Store(s) of held-out episodes scored against their ground truth (``val/critic_*``).
            test_trajectories: The same for ``selu test``.
            env: The env the stores must have been recorded in (null: not checked).
            max_episodes: Learn from the first this many stored episodes (null: all).
            eval_batch_size: Held-out episodes per evaluation batch.
            labels: Where the critic's training examples come from. ``self``: SELU, the critic labels the
                episodes itself (ground truth not read); ``scene``: the perception prior, questions about single
                observations answered from the states their text lists (no instruction, no success:
                :mod:`selu_lightning.critic.prior`); ``oracle``: the upper-bound ablation, each episode's own
                question answered with its ground-truth success (the one training path that reads it).
        """
        super().__init__()
        self.train_stores = [trajectories] if isinstance(trajectories, str) else list(trajectories)
        if not self.train_stores:
            raise ConfigError("data.trajectories must name at least one TrajectoryStore folder")
        if eval_batch_size < 1:
            raise ConfigError(f"data.eval_batch_size must be >= 1 (got {eval_batch_size})")
        self.val_store, self.test_store = val_trajectories, test_trajectories
        self.env, self.max_episodes, self.eval_batch_size = env, max_episodes, eval_batch_size
        if labels not in ("self", "scene", "oracle"):
            raise ConfigError(f"data.labels must be self, scene or oracle (got {labels!r})")
        self.labels = labels
        self._train_loader: Any = None

    def _open(self, path: str, key: str) -> TrajectoryStore:
        try:
            store = TrajectoryStore(path)
            recorded = store.metadata.get("env")
        except FileNotFoundError as err:
            raise ConfigError(f"data.{key}: {err}") from None
        if self.env is not None and recorded not in (None, self.env):
            raise ConfigError(f"data.{key} {path!r} was recorded in env {recorded!r}, data.env is {self.env!r}")
        return store

    def train_dataloader(self) -> Any:
        """The critic's examples from the stored episodes (``labels``), built once per run (the loader
        reshuffles)."""
        if self._train_loader is None:
            oracle = self.labels == "oracle"  # the upper-bound ablation: the only training read of ground truth
            episodes = [t for p in self.train_stores
                        for t in self._open(p, "trajectories").iter_trajectories(with_ground_truth=oracle)]  # fmt: skip
            if self.max_episodes is not None:
                episodes = episodes[: self.max_episodes]
            module = self.trainer.lightning_module
            if oracle:
                batch = judged_batches(episodes, max(len(episodes), 1))[0] if episodes else JudgedEpisodes([], [])
                self._train_loader = module.build_oracle_data(batch.trajectories, batch.labels)
            elif self.labels == "scene":
                self._train_loader = module.build_scene_data(episodes)
            else:
                self._train_loader = module.build_train_data(episodes)
        return self._train_loader

    def _eval_loader(self, paths: str | list[str] | None, key: str) -> DataLoader:
        if paths is None:
            raise ConfigError(f"data.{key} is not set: name a TrajectoryStore of held-out episodes")
        # evaluation: the one ground-truth read
        episodes = [t for p in _listed(paths) for t in self._open(p, key).read(with_ground_truth=True)]
        return DataLoader(judged_batches(episodes, self.eval_batch_size), batch_size=None, collate_fn=_identity)

    def val_dataloader(self) -> Any:
        if self.val_store is None:
            return []
        return self._eval_loader(self.val_store, "val_trajectories")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_store, "test_trajectories")

    def predict_dataloader(self) -> DataLoader:
        """The test store's episodes, judged without their ground truth (``selu predict``: p(yes) per episode)."""
        if self.test_store is None:
            raise ConfigError("data.test_trajectories is not set: name a TrajectoryStore to judge")
        episodes = [t for p in _listed(self.test_store) for t in self._open(p, "test_trajectories").iter_trajectories()]
        n = self.eval_batch_size
        batches = [JudgedEpisodes(episodes[k : k + n], None) for k in range(0, len(episodes), n)]
        return DataLoader(batches, batch_size=None, collate_fn=_identity)
