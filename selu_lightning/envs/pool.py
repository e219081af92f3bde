"""EnvPool: N envs stepped together, auto-reset, seeded from (seed, stream, rank, env index).

Envs run in this process or in subprocess workers (``workers="subprocess"``: heavy or fragile simulators).
Workers step in parallel; one that crashes or does not answer within ``step_timeout`` is killed and
restarted with a fresh env. Its episode is dropped from the episode metrics and counted in ``restarts``;
the step that was lost ends that episode as a truncation bootstrapped from the last state seen, so the
rollout keeps its shape and the epoch completes.

Checkpoints (``snapshot`` / ``restore``) keep each env as the record of its episode: the seed or RNG state it was
reset from and the actions since. Restoring builds fresh envs, replays those records (in parallel in subprocess
workers) and checks the replayed observations and RNGs against the snapshot. So a live simulator that cannot be
pickled comes back, and a snapshot holds a few hundred bytes per env, not its spaces and frames. Envs that declare
``checkpoint_by = "pickle"`` are pickled instead (``TextVisualEnv``).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import pickle
import traceback
from dataclasses import dataclass, field
from typing import Any, Hashable, Literal, Sequence

import numpy as np

from selu_lightning.envs.base import TextVisualEnv, env_class
from selu_lightning.errors import ConfigError

__all__ = ["EnvPool", "EnvState", "StepOutcome", "seed_stream", "EnvCrashed"]

#: Seed streams: training episodes and held-out evaluation episodes never share a stream.
STREAMS = {"train": 0, "val": 1, "test": 2, "sampler": 3, "demo": 4, "diversity": 5}


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
    #: The env's name of this state (``TextVisualEnv.state_key``): GiGPO groups steps taken from equal keys.
    key: Hashable = None
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
    #: For a step that ended an episode, its last observation (before any auto-reset); else None. A truncated
    #: episode bootstraps from its value.
    final_state: EnvState | None = None
    #: Set when the step ended an episode: its return, length and ground-truth success.
    episode: dict[str, float] | None = None
    #: The env's worker died or hung on this step and was restarted.
    restarted: bool = False


@dataclass
class _Tracker:
    ret: float = 0.0
    length: int = 0


#: The ``info`` entry the recorder adds: the env's ``state_key`` of the observation, computed in the env's process.
STATE_KEY = "state_key"


def _state(obs: dict[str, Any], info: dict[str, Any]) -> EnvState:
    legal = list(info.get("legal_actions", []))
    return EnvState(obs["image"], obs.get("text", ""), info.get("goal", ""), legal, info.get(STATE_KEY))


def _digest(image: np.ndarray) -> str:
    image = np.ascontiguousarray(image)
    return hashlib.sha1(f"{image.shape}{image.dtype}".encode() + image.tobytes()).hexdigest()


#: Seconds a new worker may take to start and answer its first call.
START_TIMEOUT = 300.0


class EnvCrashed(RuntimeError):
    """A worker process died or stopped answering."""


# ---------------------------------------------------------------------- one env and its checkpoint
@dataclass
class _Episode:
    """How an env's current episode began, and the actions since: replaying them rebuilds the env."""

    seed: int | None  # the seed reset got; None: the episode continued the env's RNG from ``rng``
    rng: dict[str, Any] | None  # the env's RNG state just before that reset (seed None only)
    actions: list[str] = field(default_factory=list)


class _Recorder:
    """One env and what a checkpoint rebuilds it from (``TextVisualEnv.checkpoint_by``): the episode record, or
    the env pickled. Both kinds of worker run their env through one, so their checkpoints are the same."""

    def __init__(self, env_cls: type[TextVisualEnv], env_kwargs: dict[str, Any], snapshot: dict | None = None):
        self.episode: _Episode | None = None
        #: After a restore by replay: the last (obs, info) replayed and the env's RNG state then, for the pool to
        #: check against the checkpoint; else None.
        self.replayed: tuple | None = None
        if snapshot is not None and snapshot["by"] == "pickle":
            self.env = pickle.loads(snapshot["env"])
            return
        self.env = env_cls(**env_kwargs)
        if snapshot is not None and snapshot["episode"] is not None:
            self._replay(snapshot["episode"])

    def reset(self, seed: int | None) -> tuple:
        rng = None if seed is not None else self.env.np_random.bit_generator.state
        obs, info = self.env.reset(seed=seed)
        self.episode = _Episode(seed, rng)
        return obs, self._keyed(obs, info)

    def step(self, action: str) -> tuple:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.episode is not None:  # None: an env restored from a pickle, mid-episode
            self.episode.actions.append(action)
        return obs, reward, terminated, truncated, self._keyed(obs, info)

    def _keyed(self, obs: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        """``info`` plus the env's state key (here, in the env's process: the key may read its hidden state)."""
        return {**info, STATE_KEY: self.env.state_key(obs, info)}

    def snapshot(self) -> dict[str, Any]:
        if self.env.checkpoint_by == "pickle":
            return {"by": "pickle", "env": pickle.dumps(self.env)}
        rng = self.env.np_random.bit_generator.state if self.episode is not None else None
        return {"by": "replay", "episode": self.episode, "rng": rng}

    def _replay(self, episode: _Episode) -> None:
        if episode.rng is not None:
            bit_generator = getattr(np.random, episode.rng["bit_generator"])()
            bit_generator.state = episode.rng
            self.env.np_random = np.random.Generator(bit_generator)
        obs, info = self.reset(episode.seed)
        for action in episode.actions:
            obs, _, _, _, info = self.step(action)
        self.replayed = (obs, info, self.env.np_random.bit_generator.state)

    def close(self) -> None:
        self.env.close()


# ---------------------------------------------------------------------- env handles
class _InProcess:
    def __init__(self, env: _Recorder) -> None:
        self.env = env
        self._pending: str | None = None

    def reset(self, seed: int | None) -> tuple:
        return self.env.reset(seed)

    def step_async(self, action: str) -> None:
        self._pending = action

    def step_wait(self) -> tuple:
        return self.env.step(self._pending)

    def snapshot(self) -> dict[str, Any]:
        return self.env.snapshot()

    def replayed(self) -> tuple | None:
        return self.env.replayed

    def close(self) -> None:
        self.env.close()


def _worker_main(conn: Any, env_cls: type, env_kwargs: dict[str, Any], snapshot: dict | None) -> None:
    """A worker: owns one env, answers (command, argument) messages until told to close. It ignores Ctrl-C and
    SIGTERM (the parent closes or kills it), so an interrupted run can still snapshot its envs."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        env = _Recorder(env_cls, env_kwargs, snapshot)
    except Exception:  # the env failed to start or to replay its checkpoint: say why on the first call
        failure = traceback.format_exc()
        try:
            conn.recv()
            conn.send(("error", failure))
        except (EOFError, OSError):
            pass
        return
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:
            return
        try:
            if cmd == "reset":
                conn.send(("ok", env.reset(arg)))
            elif cmd == "step":
                conn.send(("ok", env.step(arg)))
            elif cmd == "snapshot":
                conn.send(("ok", env.snapshot()))
            elif cmd == "replayed":
                conn.send(("ok", env.replayed))
            elif cmd == "close":
                env.close()
                conn.send(("ok", None))
                return
        except Exception:  # an env bug, not a crash: the parent re-raises it with this traceback
            conn.send(("error", traceback.format_exc()))


class _Subprocess:
    def __init__(self, env_cls: type, env_kwargs: dict[str, Any], timeout: float, snapshot: dict | None = None):
        ctx = mp.get_context("spawn")  # never fork a process that holds torch threads
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, env_cls, env_kwargs, snapshot), daemon=True)
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

    def snapshot(self) -> dict[str, Any]:
        return self._call("snapshot")

    def replayed(self) -> tuple | None:
        return self._call("replayed")

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
        _snapshots: Sequence[dict[str, Any]] | None = None,
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

    def _spawn(self, snapshot: dict[str, Any] | None) -> _InProcess | _Subprocess:
        if self.workers == "subprocess":
            return _Subprocess(self.env_cls, self.env_kwargs, self.step_timeout, snapshot)
        return _InProcess(_Recorder(self.env_cls, self.env_kwargs, snapshot))

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

    def reset_to(self, seeds: Sequence[int], indices: Sequence[int] | None = None) -> list[EnvState]:
        """Start one episode per given seed. Without ``indices`` (held-out evaluation) the first len(seeds) envs
        play them and the pool holds only those; with ``indices`` (group rollouts) those envs restart and the
        others play on."""
        if indices is None:
            if len(seeds) > self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for a pool of {self.num_envs} envs")
            self.states = [_state(*h.reset(int(s))) for h, s in zip(self.handles, seeds)]
            self._trackers = [_Tracker() for _ in self.states]
            return self.states
        if len(seeds) != len(indices) or len(self.states) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for envs {list(indices)} of a pool of {len(self.states)} live envs")
        for i, s in zip(indices, seeds):
            self.states[i] = _state(*self.handles[i].reset(int(s)))
            self._trackers[i] = _Tracker()
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
            # The episode's last observation (a trajectory's final frame; bootstraps a truncated episode).
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
        """Everything needed to continue exactly here: each env mid-episode (the record its episode is replayed
        from, or the env pickled: ``TextVisualEnv.checkpoint_by``), what the policy sees of it now (without the
        image where a replay redraws it), episode trackers."""
        keep_images = self.env_cls.checkpoint_by == "pickle" or not self.env_cls.replays_frames_exactly
        states = [
            {"text": s.text, "goal": s.goal, "legal_actions": s.legal_actions, "image_sha1": _digest(s.image),
             "image": s.image if keep_images else None}
            for s in self.states
        ]  # fmt: skip
        return {
            "env": self.env_name, "env_kwargs": self.env_kwargs, "seed": self.seed, "rank": self.rank,
            "stream": self.stream, "workers": self.workers, "step_timeout": self.step_timeout,
            "envs": [h.snapshot() for h in self.handles], "states": states, "trackers": self._trackers,
            "restart_counts": self._restart_counts,
        }  # fmt: skip

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> "EnvPool":
        """The pool ``snapshot`` describes: envs rebuilt (replayed in parallel in subprocess workers), states
        re-derived and checked against the snapshot."""
        if any(not isinstance(e, dict) for e in snap["envs"]):
            raise ValueError("this checkpoint's env state was written by an older selu_lightning (pickled envs)")
        pool = cls(
            snap["env"], len(snap["envs"]), seed=snap["seed"], rank=snap["rank"], stream=snap["stream"],
            env_kwargs=snap["env_kwargs"], workers=snap["workers"], step_timeout=snap["step_timeout"],
            _snapshots=snap["envs"],
        )  # fmt: skip
        try:
            replayed = [h.replayed() for h in pool.handles]
            pool.states = [
                pool._restored_state(i, saved, snap["envs"][i], replayed[i]) for i, saved in enumerate(snap["states"])
            ]
        except BaseException:
            pool.close()
            raise
        pool._trackers = snap["trackers"]
        pool._restart_counts = snap["restart_counts"]
        return pool

    def _restored_state(self, i: int, saved: dict[str, Any], env_snap: dict[str, Any], replayed: tuple | None):
        if replayed is None:  # a pickled env: the state as saved
            return EnvState(saved["image"], saved["text"], saved["goal"], list(saved["legal_actions"]))
        obs, info, rng = replayed
        state = _state(obs, info)
        if saved["image"] is not None:  # the env's frames may differ a little on a replay: act on the saved one
            state.image = saved["image"]
        differ = [
            what
            for what, same in (
                ("RNG state", pickle.dumps(rng) == pickle.dumps(env_snap["rng"])),  # MT19937's holds an array
                ("text", state.text == saved["text"]),
                ("goal", state.goal == saved["goal"]),
                ("legal actions", state.legal_actions == list(saved["legal_actions"])),
                ("image", _digest(state.image) == saved["image_sha1"]),
            )
            if not same
        ]
        if differ:
            raise RuntimeError(
                f"env {i} ({self.env_name}) replayed from the checkpoint to a different state ({', '.join(differ)} "
                f"differ): its episodes do not follow from their seed and actions alone; give "
                f"{self.env_cls.__name__} checkpoint_by = 'pickle'"
            )
        return state

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
