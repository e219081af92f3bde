"""The README's main job, run exactly as a user runs it: the tiny model must actually learn NumberLine."""

import subprocess
import sys
from pathlib import Path

from selu_lightning.tb import read_scalars

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_learns_numberline(tmp_path):
    """Last held-out success rate (greedy, 100 episodes) >= 0.8; a uniformly random policy scores ~0.27."""
    cmd = [sys.executable, "-m", "selu_lightning", "fit", "-c", "configs/quickstart.yaml",
           f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
           "--trainer.enable_progress_bar=false"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    logged = read_scalars(tmp_path)
    val = [v for _, v in logged["val/success_rate"]]
    assert len(val) == 3  # epochs 5, 10, 15
    assert val[-1] >= 0.8, f"held-out success rates: {val}"
    train = [v for _, v in logged["train/success_rate"]]
    assert max(train[-3:]) > train[0] + 0.3  # it learned, it did not start there
    assert list(tmp_path.rglob("last.ckpt")), "save_last checkpoint missing"
