"""The console during a run: Lightning's progress bar plus a bar for the rollout, which is most of the time.

Phases as a user sees them: ``rollout`` (env steps, episodes finished, success so far, env steps/s), then
Lightning's update bar (loss, KL, clip fraction) and its validation bar (``val/success_rate``).
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

__all__ = ["RolloutProgressBar"]


class RolloutProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, a rollout bar driven by the runner, and no ``v_num`` noise."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._rollout_bar: Tqdm | None = None
        self._rollout_start = 0.0

    def rollout_progress(self, steps: int, total: int, episodes: int, successes: int) -> None:
        """Called by the runner after every rollout step (on every rank; shown on rank 0)."""
        if self.is_disabled:
            return
        if self._rollout_bar is None:
            epoch = self.trainer.current_epoch if self._trainer is not None else 0
            self._rollout_bar = Tqdm(
                desc=f"Rollout {epoch}", total=total, unit="step", leave=self._leave, dynamic_ncols=True,
                position=2 * self.process_position, bar_format=self.BAR_FORMAT,
            )  # fmt: skip
            self._rollout_start = time.perf_counter()
        bar = self._rollout_bar
        bar.n = steps
        rate = steps / max(time.perf_counter() - self._rollout_start, 1e-9)
        success = f"{successes / episodes:.2f}" if episodes else "-"
        bar.set_postfix({"episodes": episodes, "success": success, "steps/s": f"{rate:.1f}"}, refresh=True)
        if steps >= total:
            bar.close()
            self._rollout_bar = None

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
