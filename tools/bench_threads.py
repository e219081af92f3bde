"""Two training runs on one small machine: how much each slows the other, per thread setting.

The same short ``selu fit`` (the quickstart, a few updates) runs alone, then two copies side by side, under each
thread setting: torch's own default (an OpenMP thread on every core, ``OMP_NUM_THREADS`` = cores), the same with
``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning), and selu's default
(:mod:`selu_lightning.threads`: this node's cores shared among its training processes, one left over). The figure
is the slowdown of a job when two share the machine: wall time side by side / wall time alone.

    python tools/bench_threads.py                 # table, then one JSON line
    python tools/bench_threads.py --epochs 8      # longer runs, steadier ratios
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time

from selu_lightning.cli import quiet_noise
from selu_lightning.threads import available_cores, threads_per_process

CORES = available_cores()
SETTINGS = {
    "torch default (every core)": {"OMP_NUM_THREADS": str(CORES)},
    "every core, PASSIVE waits": {"OMP_NUM_THREADS": str(CORES), "OMP_WAIT_POLICY": "PASSIVE"},
    f"selu default ({threads_per_process(CORES, 1)} thread)": {},
}


def _command(out: str, epochs: int) -> list[str]:
    return ["selu", "fit", "-c", "configs/quickstart.yaml", f"--trainer.max_epochs={epochs}",
            "--trainer.check_val_every_n_epoch=1000", "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={out}"]  # checkpoints go under the run folder in ``out``


def _run(copies: int, extra_env: dict[str, str], epochs: int) -> float:
    """Wall seconds of the slowest of ``copies`` runs started together."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    env |= extra_env | {"HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        jobs = [subprocess.Popen(_command(os.path.join(tmp, str(k)), epochs), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for k in range(copies)]  # fmt: skip
        codes = [j.wait() for j in jobs]
        seconds = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a run failed ({codes}) under {extra_env}")
    return seconds


def main() -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="Rollout epochs per run (each: 256 env steps, then PPO).")
    args = parser.parse_args()
    rows = {}
    print(f"{'setting':<30} {'alone s':>8} {'two at once s':>14} {'slowdown':>9}")
    for name, extra in SETTINGS.items():
        alone = _run(1, extra, args.epochs)
        both = _run(2, extra, args.epochs)
        rows[name] = {"alone_s": round(alone, 1), "two_s": round(both, 1), "slowdown": round(both / alone, 2)}
        print(f"{name:<30} {alone:>8.1f} {both:>14.1f} {both / alone:>9.2f}", flush=True)
    print(json.dumps({"bench": "threads", "cores": CORES, "epochs": args.epochs, "settings": rows}))


if __name__ == "__main__":
    main()
