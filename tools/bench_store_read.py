"""Peak memory of reading a trajectory store back, against the frames it returns.

Builds a store of ``--episodes`` episodes of ``--steps`` steps with ``--size`` x ``--size`` RGB frames (grid-world
like: flat colour blocks, so Parquet's zstd compresses them as it does BabyAI's and VirtualHome's drawn frames),
all appended in one call (one file, as ``selu-round`` writes an actor's accepted episodes). Then, each in a fresh
process: ``TrajectoryStore.read()`` as training code calls it, and the whole-file read it replaced
(``pq.read_table`` of the file, ``to_pylist()`` of every row, then the arrays), written out here as the baseline.
The figure is the peak resident memory the read added, in multiples of the frames' own bytes.

    python tools/bench_store_read.py                      # 200 episodes x 40 steps of 300x300 frames (2.2 GB)
    python tools/bench_store_read.py --episodes 50        # a smaller machine

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from selu_lightning.data.store import TrajectoryStore
from selu_lightning.data.trajectories import StepRecord, Trajectory

#: Run in a fresh process: read the store one way, print the peak resident memory added and the frames' bytes.
_READER = """
import sys
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))
import numpy as np, pyarrow.parquet as pq
from selu_lightning.data.store import TrajectoryStore, _from_row, _TRAINING_COLUMNS
store, how = TrajectoryStore(sys.argv[1]), sys.argv[2]
base = status('VmRSS')
if how == 'store':
    episodes = store.read()
else:  # the whole-file read: every row of a file as Python objects at once, then the arrays
    episodes = [_from_row(r) for p in store.data_files() for r in pq.read_table(p, columns=_TRAINING_COLUMNS).to_pylist()]
frames = sum(s.frame.nbytes for t in episodes for s in t.steps)
print(status('VmHWM') - base, frames)
"""


def make_store(path: Path, episodes: int, steps: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    trajectories = []
    for e in range(episodes):
        frames = []
        for _ in range(steps):
            cells = rng.integers(0, 255, size=(10, 10, 3), dtype=np.uint8)  # 10 x 10 flat-colour cells
            frames.append(np.kron(cells, np.ones((size // 10, size // 10, 1), dtype=np.uint8)))
        trajectories.append(Trajectory(
            episode_id=f"bench-{e}", env_index=0, goal="go to the red ball",
            steps=[StepRecord(f, "You see a wall.", "Mission: go to the red ball", "go forward", "forward", 0.0)
                   for f in frames],
            final_frame=frames[-1], final_observation="done",
        ))  # fmt: skip
    TrajectoryStore(path, env="babyai").append(trajectories)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", type=int, default=300, help="frame height and width (a multiple of 10)")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("bench_store_read.py reads /proc/self/status: Linux only")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "store", args.episodes, args.steps, args.size)
        on_disk = sum(p.stat().st_size for p in TrajectoryStore(store).data_files())
        for how in ("whole-file", "store"):
            out = subprocess.run([sys.executable, "-c", _READER, str(store), how], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"the {how} read failed:\n{out.stderr[-2000:]}")
            peak, frames = map(int, out.stdout.split())
            rows[how] = {"peak_added_bytes": peak, "frame_bytes": frames, "peak_over_frames": peak / frames}
    print(f"{args.episodes} episodes x {args.steps} steps, {args.size}x{args.size} frames: "
          f"{frames / 1e9:.2f} GB of frames, {on_disk / 1e6:.1f} MB on disk")  # fmt: skip
    print(f"{'read':>12} {'peak memory added':>18} {'x frames':>9}")
    for how, row in rows.items():
        print(f"{how:>12} {row['peak_added_bytes'] / 1e9:>15.2f} GB {row['peak_over_frames']:>8.2f}x")
    print(json.dumps({"bench": "store_read", "date": date.today().isoformat(), "machine": platform.node(),
                      **vars(args), "disk_bytes": on_disk, "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
