"""Read scalars back from TensorBoard event files (for checks, plots and benchmarks)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_scalars", "latest_event_file", "last_value"]


def latest_event_file(log_dir: str | Path) -> Path:
    """The newest ``events.out.tfevents.*`` under ``log_dir`` (searched recursively)."""
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under {log_dir}")
    return files[-1]


def read_scalars(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from one event file, or from the newest one under a folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(path)
    acc = EventAccumulator(str(latest_event_file(path) if path.is_dir() else path), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def last_value(log_dir: str | Path, tag: str) -> float:
    """The last value logged under ``tag`` by the newest run under ``log_dir`` that logged it (a later
    ``selu predict`` or ``test`` run without that tag does not hide it)."""
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        points = read_scalars(path).get(tag)
        if points:
            return points[-1][1]
    raise KeyError(f"no event file under {log_dir} logged {tag!r}")
