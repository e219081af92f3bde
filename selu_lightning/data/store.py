"""TrajectoryStore: episodes on disk as a folder of Parquet files that pyarrow and `datasets` open as they are.

Layout of a store folder::

    <store>/_selu_store.json                     metadata sidecar, written once (schema version, env, policy)
    <store>/part-<time ns>-<pid>-<n>-<uid>.parquet   one file per ``append`` call; one row per episode
    <store>/.part-....parquet.tmp                a write in flight (or left by a killed writer): never read

Rows are episodes. Columns (schema version 1):

    episode_id str | env_index int64 | goal str | seed int64 (null) | end list<int64>[2] (null)
    truncated bool | final_observation str | final_frame binary (null) | final_frame_shape list<int32> (null)
    steps list<struct<frame binary (null), frame_shape list<int32> (null), observation str, prompt str,
                      response str, action str, reward float64>>
    ground_truth str   the simulator's verdict as JSON; read only when ``with_ground_truth=True``

Frames are the raw uint8 bytes in C order with their shape beside them (lossless, no codec); the files are
zstd-compressed. ``pyarrow.dataset.dataset(store.data_files())`` and
``datasets.load_dataset("parquet", data_files=store.data_files())`` read the same rows. (Pointing them at the
bare folder works too while every part file is whole; they stop at a damaged one, which ``data_files`` leaves out.)

Crash safety: ``append`` writes a hidden temp file in the store folder, fsyncs it, ``os.replace``s it to its
final name and fsyncs the folder, so a killed writer loses at most the call in flight. Readers list only
``part-*.parquet``; a file among them whose footer or pages do not parse (truncated by a disk failure, copied
half-way) is skipped, logged once and counted in ``skipped_files``. Both the temp prefix ``.`` and the
sidecar prefix ``_`` are ones ``pyarrow.dataset`` ignores by default.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from selu_lightning.data.trajectories import StepRecord, Trajectory

__all__ = ["METADATA_FILE", "SCHEMA_VERSION", "TrajectoryStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
METADATA_FILE = "_selu_store.json"
_PART_PREFIX, _PART_SUFFIX, _TMP_SUFFIX = "part-", ".parquet", ".tmp"

_SHAPE = pa.list_(pa.int32())
_STEP = pa.struct([
    ("frame", pa.binary()),
    ("frame_shape", _SHAPE),
    ("observation", pa.string()),
    ("prompt", pa.string()),
    ("response", pa.string()),
    ("action", pa.string()),
    ("reward", pa.float64()),
])
SCHEMA = pa.schema(
    [
        ("episode_id", pa.string()),
        ("env_index", pa.int64()),
        ("goal", pa.string()),
        ("seed", pa.int64()),
        ("end", pa.list_(pa.int64())),
        ("truncated", pa.bool_()),
        ("final_observation", pa.string()),
        ("final_frame", pa.binary()),
        ("final_frame_shape", _SHAPE),
        ("steps", pa.list_(_STEP)),
        ("ground_truth", pa.string()),
    ],
    metadata={"selu_store_schema_version": str(SCHEMA_VERSION)},
)
_TRAINING_COLUMNS = [n for n in SCHEMA.names if n != "ground_truth"]


class TrajectoryStore:
    """Append-only episodes in a folder of Parquet files (see the module docstring for the layout).

    ``env``, ``env_kwargs`` and ``policy`` go to the metadata sidecar the first time the store is written; a
    later open that names different ones raises (one store holds one collection). Opening a folder that does not
    exist is fine for writing; reading one raises ``FileNotFoundError``.
    """

    def __init__(self, path: str | os.PathLike[str], *, env: str | None = None,
                 env_kwargs: dict[str, Any] | None = None, policy: str | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        self._wanted = {"env": env, "env_kwargs": env_kwargs, "policy": policy}
        self._known_ids: set[str] | None = None
        self._count = 0
        self._bad: dict[Path, str] = {}
        if (self.path / METADATA_FILE).exists():
            self._check_metadata(self.metadata)

    # ---------------------------------------------------------------- metadata

    @property
    def metadata(self) -> dict[str, Any]:
        """The sidecar: ``schema_version``, ``env``, ``env_kwargs``, ``policy``, ``created`` (unix time)."""
        with open(self.path / METADATA_FILE) as f:
            return json.load(f)

    def _check_metadata(self, meta: dict[str, Any]) -> None:
        if meta.get("schema_version", 0) > SCHEMA_VERSION:
            raise ValueError(f"{self.path}: store schema version {meta['schema_version']} is newer than this "
                             f"code's {SCHEMA_VERSION}; upgrade selu_lightning to read it")  # fmt: skip
        for key, want in self._wanted.items():
            if want is not None and meta.get(key) != want:
                raise ValueError(f"{self.path}: store was written with {key}={meta.get(key)!r}, not {want!r}; "
                                 "use a new store folder for a different collection")  # fmt: skip

    def _ensure_created(self) -> None:
        if (self.path / METADATA_FILE).exists():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"format": "selu_lightning.TrajectoryStore", "schema_version": SCHEMA_VERSION,
                "rows": "episodes", **self._wanted, "created": time.time()}  # fmt: skip
        self._atomic_write(METADATA_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True)))

    # ---------------------------------------------------------------- writing

    def append(self, trajectories: Iterable[Trajectory]) -> Path | None:
        """Write the episodes as one new Parquet file, all or nothing; returns its path (None when empty).

        Episode ids must be new to the store (checked against what this process has seen of it; writers in
        other processes must keep their ids apart, as ``<stream>-<rank>-...`` ids do)."""
        trajectories = list(trajectories)
        if not trajectories:
            return None
        self._ensure_created()
        ids = [t.episode_id for t in trajectories]
        known = self._ids()
        clash = sorted({i for i in ids if i in known} | {i for i in ids if ids.count(i) > 1})
        if clash:
            raise ValueError(f"{self.path}: episode ids already in the store or repeated in the call: {clash[:5]}")
        table = pa.Table.from_pylist([_to_row(t) for t in trajectories], schema=SCHEMA)
        self._count += 1
        name = f"{_PART_PREFIX}{time.time_ns():020d}-{os.getpid()}-{self._count:06d}-{uuid.uuid4().hex[:8]}"
        final = self._atomic_write(
            name + _PART_SUFFIX, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=_ROW_GROUP)
        )
        known.update(ids)
        return final

    def _atomic_write(self, name: str, write) -> Path:
        final, tmp = self.path / name, self.path / f".{name}{_TMP_SUFFIX}"
        try:
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    # ---------------------------------------------------------------- reading

    @property
    def skipped_files(self) -> list[Path]:
        """Part files that failed to parse when last seen (a truncated or corrupt tail); they are never read."""
        return sorted(self._bad)

    def data_files(self) -> list[Path]:
        """The part files whose footers parse, in append order: hand these to ``pyarrow.dataset`` or
        ``datasets.load_dataset("parquet", data_files=...)``."""
        if not (self.path / METADATA_FILE).exists() and not self.path.is_dir():
            raise FileNotFoundError(f"no trajectory store at {self.path}")
        good = []
        for p in sorted(self.path.glob(f"{_PART_PREFIX}*{_PART_SUFFIX}")):
            if p in self._bad:
                continue
            try:
                meta = pq.read_metadata(p)
                missing = set(_TRAINING_COLUMNS) - set(meta.schema.to_arrow_schema().names)
                if missing:
                    raise ValueError(f"missing columns {sorted(missing)}")
            except (OSError, ValueError, pa.ArrowException) as e:
                self._skip(p, e)
                continue
            good.append(p)
        return good

    def _skip(self, p: Path, error: BaseException) -> None:
        if p not in self._bad:
            log.warning("TrajectoryStore %s: skipping %s, which does not parse (%s)", self.path, p.name, error)
            self._bad[p] = str(error)

    def __len__(self) -> int:
        """Episodes in the files whose footers parse."""
        return sum(pq.read_metadata(p).num_rows for p in self.data_files())

    def _ids(self) -> set[str]:
        if self._known_ids is None:
            self._known_ids = set()
            if self.path.is_dir():
                for p in self.data_files():
                    table = _read(p, ["episode_id"], None, self._skip)
                    if table is not None:
                        self._known_ids.update(table["episode_id"].to_pylist())
        return self._known_ids

    def iter_trajectories(self, with_ground_truth: bool = False) -> Iterator[Trajectory]:
        """Every readable episode in append order, streamed: one Parquet row group (``_ROW_GROUP`` episodes; 64 in
        older files) in Arrow memory and one episode as Python objects at a time, so a read costs about the frames
        it returns (reading a whole file at once held them three times over: Arrow, Python bytes, arrays). Without
        ``with_ground_truth`` the ground-truth column is not even read and every ``ground_truth`` is ``{}``
        (training code). A file that fails part-way is skipped from there on (logged, ``skipped_files``); the
        episodes it gave before are whole."""
        columns = SCHEMA.names if with_ground_truth else _TRAINING_COLUMNS
        for p in self.data_files():
            try:
                for batch in pq.ParquetFile(p).iter_batches(batch_size=_READ_BATCH, columns=columns):
                    yield from _rows(batch)
            except (OSError, ValueError, pa.ArrowException) as e:
                self._skip(p, e)

    def read(self, episode_ids: Sequence[str] | None = None, with_ground_truth: bool = False) -> list[Trajectory]:
        """The episodes with these ids in the order asked (``KeyError`` if one is not in the store), or all of
        them in append order. ``with_ground_truth`` as in :meth:`iter_trajectories` (evaluation passes True)."""
        if episode_ids is None:
            return list(self.iter_trajectories(with_ground_truth))
        wanted = list(episode_ids)
        columns = SCHEMA.names if with_ground_truth else _TRAINING_COLUMNS
        found: dict[str, Trajectory] = {}
        for p in self.data_files():
            table = _read(p, columns, pc.field("episode_id").isin(wanted), self._skip)
            if table is not None:
                found.update((t.episode_id, t) for batch in table.to_batches(_READ_BATCH) for t in _rows(batch))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"{self.path}: episodes not in the store: {missing[:5]}")
        return [found[i] for i in wanted]


#: Episodes per Parquet row group: what a streamed read holds in Arrow memory at once (64 held 0.7 GB of frames
#: with 40-step episodes of 300x300 frames).
_ROW_GROUP = 16
#: Episodes converted to Python objects together when reading (their frames' bytes are dropped after each).
_READ_BATCH = 4


def _rows(batch: pa.RecordBatch) -> Iterator[Trajectory]:
    for i in range(batch.num_rows):
        yield _from_row(batch.slice(i, 1).to_pylist()[0])


def _read(path: Path, columns: list[str], filter_, on_error) -> pa.Table | None:
    try:
        return pq.read_table(path, columns=columns, filters=filter_)
    except (OSError, ValueError, pa.ArrowException) as e:
        on_error(path, e)
        return None


def _frame_cells(frame: np.ndarray | None, where: str) -> tuple[bytes | None, list[int] | None]:
    if frame is None:
        return None, None
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        got = f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}"
        raise ValueError(f"{where}: frames must be uint8 HxW or HxWxC arrays, got {got}")
    return frame.tobytes(order="C"), list(frame.shape)


def _frame(data: bytes | None, shape: list[int] | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"ground truth value {value!r} ({type(value).__name__}) is not JSON-serialisable")


def _to_row(t: Trajectory) -> dict[str, Any]:
    steps = []
    for k, s in enumerate(t.steps):
        frame, shape = _frame_cells(s.frame, f"episode {t.episode_id} step {k}")
        steps.append({"frame": frame, "frame_shape": shape, "observation": s.observation, "prompt": s.prompt,
                      "response": s.response, "action": s.action, "reward": float(s.reward)})  # fmt: skip
    final_frame, final_shape = _frame_cells(t.final_frame, f"episode {t.episode_id} final frame")
    return {
        "episode_id": t.episode_id,
        "env_index": int(t.env_index),
        "goal": t.goal,
        "seed": None if t.seed is None else int(t.seed),
        "end": None if t.end is None else [int(x) for x in t.end],
        "truncated": bool(t.truncated),
        "final_observation": t.final_observation,
        "final_frame": final_frame,
        "final_frame_shape": final_shape,
        "steps": steps,
        "ground_truth": json.dumps(t.ground_truth, default=_json_default, sort_keys=True),
    }


def _from_row(r: dict[str, Any]) -> Trajectory:
    text = ("observation", "prompt", "response", "action", "reward")
    steps = [StepRecord(_frame(s["frame"], s["frame_shape"]), *(s[k] for k in text)) for s in r["steps"]]
    return Trajectory(
        episode_id=r["episode_id"],
        env_index=r["env_index"],
        goal=r["goal"],
        steps=steps,
        final_frame=_frame(r["final_frame"], r["final_frame_shape"]),
        final_observation=r["final_observation"],
        seed=r["seed"],
        end=None if r["end"] is None else tuple(r["end"]),
        truncated=r["truncated"],
        ground_truth=json.loads(r["ground_truth"]) if "ground_truth" in r else {},
    )
