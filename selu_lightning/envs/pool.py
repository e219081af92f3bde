"""EnvPool: N envs stepped together, auto-reset, seeded from (seed, stream, rank, env index).

Envs run in this process or in subprocess workers (``workers="subprocess"``: heavy or fragile simulators).
Workers step in parallel; one that crashes or does not answer within ``step_timeout`` is killed and
restarted with a fresh env. Its episode is dropped from the episode metrics and counted in ``restarts``;
the step that was lost ends that episode as a truncation bootstrapped from the last state seen, so the
rollout keeps its shape and the epoch completes.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from selu_lightning.envs.base import TextVisualEnv, env_class
from selu_lightning.errors import ConfigError

__all__ = ["EnvPool", "EnvState", "StepOutcome", "seed_stream", "EnvCrashed"]

#: Seed streams: training episodes and held-out evaluation episodes never share a stream.
STREAMS = {"train": 0, "val": 1, "test": 2, "sampler": 3}


def seed_stream(seed: int, stream: str, rank: int = 0, index: int = 0, *extra: int) -> np.random.SeedSequence:
    """The seed sequence for one consumer; distinct (stream, rank, index, ...) give independent streams."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(STREAMS[stream], rank, index, *extra))


@dataclass
class EnvState:
    """What the policy sees of one env now."""

    image: np.ndarray
    text: str
    goal: str
    legal_actions: list[str]
    #: The policy's encoding of this state (prompt tensors), kept so a state is preprocessed once even when
    #: it is both the last state of one rollout (bootstrap value) and the first of the next. Not pickled.
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": {}}


@dataclass
class StepOutcome:
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    #: For a truncated step, the state the episode was cut in (to bootstrap its value); else None.
    final_state: EnvState | None = None
    #: Set when the step ended an episode: its return, length and ground-truth success.
    episode: dict[str, float] | None = None
    #: The env's worker died or hung on this step and was restarted.
    restarted: bool = False


@dataclass
class _Tracker:
    ret: float = 0.0
    length: int = 0


def _state(obs: dict[str, Any], info: dict[str, Any]) -> EnvState:
    return EnvState(obs["image"], obs.get("text", ""), info.get("goal", ""), list(info.get("legal_actions", [])))


#: Seconds a new worker may take to start and answer its first call.
START_TIMEOUT = 300.0


class EnvCrashed(RuntimeError):
    """A worker process died or stopped answering."""


# ---------------------------------------------------------------------- env handles
class _InProcess:
    def __init__(self, env: TextVisualEnv) -> None:
        self.env = env
        self._pending: str | None = None

    def reset(self, seed: int | None) -> tuple:
        return self.env.reset(seed=seed)

    def step_async(self, action: str) -> None:
        self._pending = action

    def step_wait(self) -> tuple:
        return self.env.step(self._pending)

    def snapshot(self) -> bytes:
        return pickle.dumps(self.env)

    def close(self) -> None:
        self.env.close()


def _worker_main(conn: Any, env_cls: type, env_kwargs: dict[str, Any], pickled: bytes | None) -> None:
    """A worker: owns one env, answers (command, argument) messages until told to close."""
    env = pickle.loads(pickled) if pickled is not None else env_cls(**env_kwargs)
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:
            return
        try:
            if cmd == "reset":
                conn.send(("ok", env.reset(seed=arg)))
            elif cmd == "step":
                conn.send(("ok", env.step(arg)))
            elif cmd == "snapshot":
                conn.send(("ok", pickle.dumps(env)))
            elif cmd == "close":
                env.close()
                conn.send(("ok", None))
                return
        except Exception:  # an env bug, not a crash: the parent re-raises it with this traceback
            conn.send(("error", traceback.format_exc()))


class _Subprocess:
    def __init__(self, env_cls: type, env_kwargs: dict[str, Any], timeout: float, pickled: bytes | None = None):
        ctx = mp.get_context("spawn")  # never fork a process that holds torch threads
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, env_cls, env_kwargs, pickled), daemon=True)
        self.process.start()
        child.close()
        self.timeout = timeout
        self._answered = False  # the first answer also waits for the worker to start (imports, simulator boot)

    def _call(self, cmd: str, arg: Any = None) -> Any:
        self._send(cmd, arg)
        return self._receive()

    def _send(self, cmd: str, arg: Any) -> None:
        try:
            self.conn.send((cmd, arg))
        except (BrokenPipeError, OSError) as err:
            raise EnvCrashed(f"env worker {self.process.pid} is gone") from err

    def _receive(self) -> Any:
        try:
            timeout = self.timeout if self._answered else max(self.timeout, START_TIMEOUT)
            if not self.conn.poll(timeout):
                raise EnvCrashed(f"env worker {self.process.pid} did not answer within {timeout:g}s")
            status, payload = self.conn.recv()
            self._answered = True
        except (EOFError, OSError, ConnectionError) as err:
            raise EnvCrashed(f"env worker {self.process.pid} died (exit code {self.process.exitcode})") from err
        if status == "error":
            raise RuntimeError(f"env raised in worker {self.process.pid}:\n{payload}")
        return payload

    def reset(self, seed: int | None) -> tuple:
        return self._call("reset", seed)

    def step_async(self, action: str) -> None:
        self._send("step", action)

    def step_wait(self) -> tuple:
        return self._receive()

    def snapshot(self) -> bytes:
        return self._call("snapshot")

    def close(self) -> None:
        try:
            if self.process.is_alive():
                self._call("close")
        except (EnvCrashed, RuntimeError):
            pass
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


# ---------------------------------------------------------------------- the pool
class EnvPool:
    """``step`` resets finished envs at once, so every call returns N live states."""

    def __init__(
        self,
        env: str,
        num_envs: int,
        *,
        seed: int,
        rank: int = 0,
        stream: str = "train",
        env_kwargs: dict[str, Any] | None = None,
        workers: Literal["inprocess", "subprocess"] = "inprocess",
        step_timeout: float = 60.0,
        _snapshots: Sequence[bytes] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ConfigError(f"num_envs must be >= 1 (got {num_envs})")
        if workers not in ("inprocess", "subprocess"):
            raise ConfigError(f"env workers must be 'inprocess' or 'subprocess' (got {workers!r})")
        self.env_name, self.env_cls = env, env_class(env)
        self.env_kwargs = dict(env_kwargs or {})
        self.seed, self.rank, self.stream = seed, rank, stream
        self.workers, self.step_timeout = workers, step_timeout
        self._first_seeds = [int(seed_stream(seed, stream, rank, i).generate_state(1)[0]) for i in range(num_envs)]
        snaps = list(_snapshots) if _snapshots is not None else [None] * num_envs
        self.handles = [self._spawn(s) for s in snaps]
        self._trackers = [_Tracker() for _ in self.handles]
        self._restart_counts = [0] * num_envs
        self.restarts = 0
        self.states: list[EnvState] = []

    def _spawn(self, snapshot: bytes | None) -> _InProcess | _Subprocess:
        if self.workers == "subprocess":
            return _Subprocess(self.env_cls, self.env_kwargs, self.step_timeout, snapshot)
        return _InProcess(pickle.loads(snapshot) if snapshot is not None else self.env_cls(**self.env_kwargs))

    @property
    def num_envs(self) -> int:
        return len(self.handles)

    @property
    def task_description(self) -> str:
        return self.env_cls.task_description

    def reset(self) -> list[EnvState]:
        """Start the pool: each env's first episode from its own seed, later ones continue its RNG."""
        self.states = [_state(*h.reset(s)) for h, s in zip(self.handles, self._first_seeds)]
        self._trackers = [_Tracker() for _ in self.handles]
        return self.states

    def reset_to(self, seeds: Sequence[int]) -> list[EnvState]:
        """Start one episode per given seed (held-out evaluation); uses the first len(seeds) envs."""
        if len(seeds) > self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for a pool of {self.num_envs} envs")
        self.states = [_state(*h.reset(int(s))) for h, s in zip(self.handles, seeds)]
        self._trackers = [_Tracker() for _ in self.states]
        return self.states

    def step(
        self, actions: Sequence[str], indices: Sequence[int] | None = None, auto_reset: bool = True
    ) -> list[StepOutcome]:
        """Step the envs at ``indices`` (default: all) with one action each; workers step in parallel."""
        indices = list(range(len(self.states)) if indices is None else indices)
        if len(actions) != len(indices):
            raise ValueError(f"{len(actions)} actions for {len(indices)} envs")
        crashed: set[int] = set()
        for i, action in zip(indices, actions):
            try:
                self.handles[i].step_async(action)
            except EnvCrashed:
                crashed.add(i)
        outcomes = []
        for i in indices:
            result = None
            if i not in crashed:
                try:
                    result = self.handles[i].step_wait()
                except EnvCrashed:
                    pass
            outcomes.append(self._record(i, result, auto_reset))
        return outcomes

    def _record(self, i: int, result: tuple | None, auto_reset: bool) -> StepOutcome:
        tracker = self._trackers[i]
        if result is None:  # the worker crashed or hung: truncate, bootstrap from the last state seen
            outcome = StepOutcome(0.0, False, True, {}, final_state=self.states[i], restarted=True)
            self._restart(i)
            return outcome
        obs, reward, terminated, truncated, info = result
        tracker.ret += float(reward)
        tracker.length += 1
        outcome = StepOutcome(float(reward), bool(terminated), bool(truncated), info)
        if terminated or truncated:
            outcome.episode = {
                "return": tracker.ret,
                "length": float(tracker.length),
                "success": float(bool(info.get("success", False))),
            }
            if truncated and not terminated:
                outcome.final_state = _state(obs, info)
            self._trackers[i] = _Tracker()
            if auto_reset:
                obs, info = self.handles[i].reset(None)
        self.states[i] = _state(obs, info)
        return outcome

    def _restart(self, i: int) -> None:
        """Replace env i's worker with a fresh one on a new seed; its episode is lost."""
        old = self.handles[i]
        if isinstance(old, _Subprocess):
            old.kill()
        self._restart_counts[i] += 1
        self.restarts += 1
        seed = int(seed_stream(self.seed, self.stream, self.rank, i, self._restart_counts[i]).generate_state(1)[0])
        self.handles[i] = self._spawn(None)
        self.states[i] = _state(*self.handles[i].reset(seed))
        self._trackers[i] = _Tracker()

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue exactly here: envs mid-episode (with their RNGs) and episode trackers."""
        return {
            "env": self.env_name, "env_kwargs": self.env_kwargs, "seed": self.seed, "rank": self.rank,
            "stream": self.stream, "workers": self.workers, "step_timeout": self.step_timeout,
            "envs": [h.snapshot() for h in self.handles], "states": self.states, "trackers": self._trackers,
            "restart_counts": self._restart_counts,
        }  # fmt: skip

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> "EnvPool":
        pool = cls(
            snap["env"], len(snap["envs"]), seed=snap["seed"], rank=snap["rank"], stream=snap["stream"],
            env_kwargs=snap["env_kwargs"], workers=snap["workers"], step_timeout=snap["step_timeout"],
            _snapshots=snap["envs"],
        )  # fmt: skip
        pool.states, pool._trackers = snap["states"], snap["trackers"]
        pool._restart_counts = snap["restart_counts"]
        return pool

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
