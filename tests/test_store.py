"""TrajectoryStore: exact round trips, ground truth kept apart, crash safety, and the ecosystem opens the folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from selu_lightning.data.store import METADATA_FILE, SCHEMA_VERSION, TrajectoryStore
from selu_lightning.data.trajectories import StepRecord, Trajectory


def make_trajectory(i: int, steps: int = 3, size: int = 8) -> Trajectory:
    """A deterministic episode with the awkward cases: a frameless step, a greyscale frame, unicode and empty
    text, rewards that are not round in binary, no seed on odd episodes, no final frame every third."""
    rng = np.random.default_rng(i)
    records = []
    for k in range(steps):
        frame = rng.integers(0, 256, (size, size + 1, 3), dtype=np.uint8)
        if k == 1:
            frame = None
        elif k == 2:
            frame = rng.integers(0, 256, (size, size), dtype=np.uint8)
        records.append(StepRecord(frame, f"obs {i}.{k} — café ☕", f"prompt {i}.{k}\n", "" if k else "think…",
                                  f"move {k}", 0.1 * k - i / 3))  # fmt: skip
    return Trajectory(
        episode_id=f"train-0-{i % 2}-{i}", env_index=i % 2, goal=f"reach {i}", steps=records,
        final_frame=None if i % 3 == 2 else rng.integers(0, 256, (size, size + 1, 3), dtype=np.uint8),
        final_observation=f"final {i}", seed=None if i % 2 else 1000 + i, end=(steps - 1, i % 2),
        truncated=bool(i % 2), ground_truth={"success": i % 2 == 0, "score": i / 7, "detail": {"room": [i, "k"]}},
    )  # fmt: skip


def assert_same(got: Trajectory, want: Trajectory, ground_truth: bool = True) -> None:
    def frames_equal(a, b):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

    for name in ["episode_id", "env_index", "goal", "final_observation", "seed", "end", "truncated"]:
        assert getattr(got, name) == getattr(want, name), name
    assert type(got.seed) is type(want.seed) and type(got.truncated) is bool
    frames_equal(got.final_frame, want.final_frame)
    assert len(got.steps) == len(want.steps)
    for g, w in zip(got.steps, want.steps):
        frames_equal(g.frame, w.frame)
        assert (g.observation, g.prompt, g.response, g.action) == (w.observation, w.prompt, w.response, w.action)
        assert g.reward == w.reward  # bit-exact float64
    assert got.ground_truth == (want.ground_truth if ground_truth else {})


def test_round_trip_is_exact_and_metadata_written_once(tmp_path):
    want = [make_trajectory(i) for i in range(4)]
    store = TrajectoryStore(tmp_path / "store", env="numberline", env_kwargs={"size": 5}, policy="expert")
    store.append(want)
    for got in (store.read(with_ground_truth=True), list(TrajectoryStore(store.path).iter_trajectories(True))):
        assert len(got) == 4
        for g, w in zip(got, want):
            assert_same(g, w)
    assert len(store) == 4
    meta = json.loads((store.path / METADATA_FILE).read_text())
    assert (meta["schema_version"], meta["env"], meta["env_kwargs"], meta["policy"], meta["rows"]) == (
        SCHEMA_VERSION, "numberline", {"size": 5}, "expert", "episodes")
    # A second writer for the same collection reuses the sidecar; a different collection is refused.
    TrajectoryStore(store.path, env="numberline").append([make_trajectory(9)])
    assert json.loads((store.path / METADATA_FILE).read_text()) == meta
    with pytest.raises(ValueError, match="policy='expert', not 'ppo'"):
        TrajectoryStore(store.path, policy="ppo")


def test_ground_truth_excluded_by_default(tmp_path):
    store = TrajectoryStore(tmp_path)
    store.append([make_trajectory(0), make_trajectory(1)])
    assert all(t.ground_truth == {} for t in store.read())
    assert all(t.ground_truth == {} for t in store.iter_trajectories())
    assert store.read(["train-0-1-1"])[0].ground_truth == {}
    assert store.read(["train-0-1-1"], with_ground_truth=True)[0].ground_truth == make_trajectory(1).ground_truth
    assert_same(store.read(["train-0-0-0"])[0], make_trajectory(0), ground_truth=False)


def test_append_from_two_calls(tmp_path):
    store = TrajectoryStore(tmp_path)
    store.append([make_trajectory(0), make_trajectory(1)])
    store.append([make_trajectory(2)])
    assert store.append([]) is None
    assert len(store.data_files()) == 2 and len(store) == 3
    assert [t.episode_id for t in store.read()] == ["train-0-0-0", "train-0-1-1", "train-0-0-2"]
    got = store.read(["train-0-0-2", "train-0-0-0"], with_ground_truth=True)  # the order asked, across files
    assert_same(got[0], make_trajectory(2))
    assert_same(got[1], make_trajectory(0))
    with pytest.raises(KeyError, match="train-9"):
        store.read(["train-9"])
    with pytest.raises(ValueError, match="already in the store"):  # also seen by a store opened afresh
        TrajectoryStore(tmp_path).append([make_trajectory(1)])
    assert len(store) == 3


def test_a_file_of_several_row_groups_streams_back_whole_and_in_order(tmp_path):
    """Reads go row group by row group (bounded memory); episodes straddling the groups come back exact."""
    import pyarrow.parquet as pq

    from selu_lightning.data.store import _ROW_GROUP

    n = 2 * _ROW_GROUP + 3
    want = [make_trajectory(i) for i in range(n)]
    store = TrajectoryStore(tmp_path)
    path = store.append(want)
    assert pq.ParquetFile(path).num_row_groups == 3
    got = store.read(with_ground_truth=True)
    assert [t.episode_id for t in got] == [t.episode_id for t in want]
    for g, w in zip(got, want):
        assert_same(g, w)
    picked = [want[n - 1].episode_id, want[0].episode_id, want[_ROW_GROUP].episode_id]
    assert [t.episode_id for t in store.read(picked)] == picked


def test_bad_frames_are_refused_before_anything_is_written(tmp_path):
    bad = make_trajectory(0)
    bad.steps[0].frame = bad.steps[0].frame.astype(np.float32)
    store = TrajectoryStore(tmp_path)
    with pytest.raises(ValueError, match="step 0: frames must be uint8"):
        store.append([make_trajectory(1), bad])
    assert store.data_files() == [] and not list(tmp_path.glob(".*.tmp"))


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    store = TrajectoryStore(tmp_path)
    good = store.append([make_trajectory(0)])
    data = good.read_bytes()
    (tmp_path / "part-99999999999999999999-1-000001-deadbeef.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "part-99999999999999999999-1-000002-deadbeef.parquet").write_bytes(b"")
    (tmp_path / ".part-99999999999999999999-1-000003-deadbeef.parquet.tmp").write_bytes(data[:100])
    reopened = TrajectoryStore(tmp_path)
    assert [t.episode_id for t in reopened.read()] == ["train-0-0-0"] and len(reopened) == 1
    assert [p.name for p in reopened.skipped_files] == [
        "part-99999999999999999999-1-000001-deadbeef.parquet", "part-99999999999999999999-1-000002-deadbeef.parquet"]


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_store import make_trajectory
from selu_lightning.data.store import TrajectoryStore

store = TrajectoryStore({path!r}, env="numberline", policy="kill-test")
i = 0
while True:
    store.append([make_trajectory(i, steps=6, size=96)])
    print(i, flush=True)  # only after append returned: this episode is finished
    i += 1
"""


def test_sigkill_mid_collection_loses_only_the_episode_in_flight(tmp_path):
    path = tmp_path / "store"
    code = textwrap.dedent(CHILD.format(tests=str(Path(__file__).parent), path=str(path)))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = []
    try:
        while len(finished) < 8:
            line = child.stdout.readline()
            assert line, f"child died early: {child.stderr.read()[-2000:]}"
            finished.append(int(line))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # A truncated part file (a disk that lost its tail) and a half-written temp file, on top of whatever the kill
    # left behind.
    first = min(path.glob("part-*.parquet")).read_bytes()
    (path / "part-99999999999999999999-1-000001-deadbeef.parquet").write_bytes(first[: len(first) // 3])
    (path / ".part-99999999999999999999-1-000002-deadbeef.parquet.tmp").write_bytes(first[: len(first) // 2])

    store = TrajectoryStore(path)
    got = store.read(with_ground_truth=True)
    n = len(got)
    assert n >= len(finished) and n == len(store)  # at most one more: finished between the last print and the kill
    for i, t in enumerate(got):  # every episode complete, in order, bit-exact
        assert_same(t, make_trajectory(i, steps=6, size=96))
    assert [p.name for p in store.skipped_files] == ["part-99999999999999999999-1-000001-deadbeef.parquet"]
    assert store.metadata["policy"] == "kill-test"


def test_pyarrow_dataset_opens_the_folder(tmp_path):
    import pyarrow.dataset as ds

    store = TrajectoryStore(tmp_path, env="numberline")
    store.append([make_trajectory(0), make_trajectory(1)])
    store.append([make_trajectory(2)])
    (tmp_path / ".part-leftover.parquet.tmp").write_bytes(b"PAR1 half")  # a dead writer's temp: ignored
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert table.num_rows == 3 and table["episode_id"].to_pylist() == ["train-0-0-0", "train-0-1-1", "train-0-0-2"]
    step0 = table["steps"][0].as_py()[0]
    frame = np.frombuffer(step0["frame"], np.uint8).reshape(step0["frame_shape"])
    assert frame.tobytes() == make_trajectory(0).steps[0].frame.tobytes()
    assert json.loads(table["ground_truth"][2].as_py()) == make_trajectory(2).ground_truth
    assert ds.dataset(store.data_files(), format="parquet").count_rows() == 3


def test_datasets_load_dataset_opens_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    store = TrajectoryStore(tmp_path / "store")
    store.append([make_trajectory(0), make_trajectory(1)])
    store.append([make_trajectory(2)])
    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in store.data_files()], split="train",
                                 cache_dir=str(tmp_path / "hf-cache"))  # fmt: skip
    assert rows["episode_id"] == ["train-0-0-0", "train-0-1-1", "train-0-0-2"]
    want = make_trajectory(1)
    step = rows[1]["steps"][2]
    frame = np.frombuffer(step["frame"], np.uint8).reshape(step["frame_shape"])
    assert frame.tobytes() == want.steps[2].frame.tobytes()
    assert [s["reward"] for s in rows[1]["steps"]] == [s.reward for s in want.steps]
