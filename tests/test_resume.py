"""Exact resume: a run killed after epoch 2 and resumed with `--ckpt_path last` logs what an uninterrupted run logs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from selu_lightning.tb import read_scalars

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    sys.executable, "-m", "selu_lightning", "fit", "-c", "configs/quickstart.yaml", "--trainer.max_epochs=4",
    "--trainer.deterministic=true", "--trainer.enable_progress_bar=false", "--trainer.check_val_every_n_epoch=100",
    "--data.num_envs=4", "--data.steps_per_epoch=32", "--model.minibatch_size=8", "--model.ppo_epochs=2",
]  # fmt: skip


def fit(save_dir: Path, *extra: str, expect: int = 0) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([*BASE, f"--trainer.logger.init_args.save_dir={save_dir}", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == expect, proc.stderr[-3000:]


def train_series(save_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {epoch: value}}`` over every event file of the run (the resumed part writes a new version)."""
    out: dict[str, dict[int, float]] = {}
    for events in sorted(save_dir.rglob("events.out.tfevents.*")):
        logged = read_scalars(events)
        epochs = dict(logged.get("epoch", []))
        for tag, points in logged.items():
            if tag.startswith("train/"):
                for step, value in points:
                    out.setdefault(tag, {})[int(epochs[step])] = value
    return out


@pytest.mark.parametrize("space", ["selu_lightning.action_spaces.CandidateActionSpace"])
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, space):
    fit(tmp_path / "straight", f"--model.action_space={space}")
    crashed = tmp_path / "crashed"
    fit(crashed, f"--model.action_space={space}", "--trainer.callbacks+=helpers.HardKillAtEpoch",
        "--trainer.callbacks.epoch=2", expect=17)  # fmt: skip
    assert list((crashed / "quickstart").glob("version_*/checkpoints/last.ckpt"))
    fit(crashed, f"--model.action_space={space}", "--ckpt_path=last")
    straight, resumed = train_series(tmp_path / "straight"), train_series(crashed)
    assert set(resumed["train/loss_policy"]) == {0, 1, 2, 3}
    for tag in ("train/loss_policy", "train/loss_value", "train/approx_kl", "train/episode_return", "train/env_steps"):
        for epoch in (2, 3):
            assert resumed[tag][epoch] == pytest.approx(straight[tag][epoch], rel=1e-5, abs=1e-6), (tag, epoch)
