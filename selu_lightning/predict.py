"""``selu predict``: one JSON line per held-out episode, written next to the run's logs."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["EpisodeRecordWriter"]


class EpisodeRecordWriter(BasePredictionWriter):
    """Writes ``<run dir>/predictions[-rank<r>].jsonl`` (seed, return, length, success, parse failures per episode) as batches
    finish, so an interrupted predict keeps what it played, and prints where it went with the success rate."""

    def __init__(self, out_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = out_dir
        self.count = 0
        self.successes = 0.0

    def _path(self, trainer: L.Trainer) -> str:
        name = "predictions.jsonl" if trainer.world_size == 1 else f"predictions-rank{trainer.global_rank}.jsonl"
        return os.path.join(self.out_dir, name)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        open(self._path(trainer), "w").close()

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Sequence[dict[str, Any]],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:  # fmt: skip
        with open(self._path(trainer), "a") as f:
            for record in prediction:
                f.write(json.dumps({k: (int(v) if k == "seed" else v) for k, v in record.items()}) + "\n")
                self.count += 1
                self.successes += float(record.get("success", 0.0))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rate = self.successes / max(self.count, 1)
        rank_zero_info(f"selu: {self.count} episodes written to {self._path(trainer)}; success rate {rate:.3f}")
