"""CPU threads per process: how many intra-op threads torch may use, so that a run degrades gracefully when the
machine's cores are shared.

torch's default takes every core for its OpenMP threads, whose idle waits spin. When anything else wants those cores
(a second run, the tests, DDP siblings on one node, env workers) every small op's barrier waits for a descheduled
thread: on 2 cores, two quickstart runs side by side each took 42x their time alone (BENCHMARKS.md,
``tools/bench_threads.py``); with one thread each, no slower than alone. The ``selu`` and ``selu-round`` commands
therefore share this node's cores among its training processes and leave one core for the rest (env workers,
tokenisation, anything else on the machine): ``max(1, cores // processes - 1)``. ``OMP_NUM_THREADS`` set by the
user always wins.
"""

from __future__ import annotations

import os

__all__ = ["available_cores", "threads_per_process", "apply_thread_policy"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: taskset, cgroups cpusets), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_process(cores: int, local_processes: int) -> int:
    """Intra-op threads for each of ``local_processes`` processes on ``cores`` cores: an equal share, one core
    left over for everything else, at least one."""
    if cores < 1 or local_processes < 1:
        raise ValueError(f"cores and local_processes must be >= 1 (got {cores}, {local_processes})")
    return max(1, cores // local_processes - 1)


def apply_thread_policy(local_processes: int) -> str | None:
    """Set torch's intra-op threads for this process unless ``OMP_NUM_THREADS`` chose them. Returns a line to
    show when it changed torch's count, else None."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    cores = available_cores()
    threads = threads_per_process(cores, local_processes)
    if torch.get_num_threads() == threads:
        return None
    torch.set_num_threads(threads)
    return (f"torch uses {threads} CPU thread(s) per process ({cores} cores, {local_processes} training "
            f"process(es) on this node; set OMP_NUM_THREADS to choose)")  # fmt: skip
