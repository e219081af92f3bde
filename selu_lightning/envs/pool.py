"""EnvPool: N envs stepped together, auto-reset, seeded from (seed, stream, rank, env index)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from selu_lightning.envs.base import TextVisualEnv, env_class

__all__ = ["EnvPool", "EnvState", "StepOutcome", "seed_stream"]

#: Seed streams: training episodes and held-out evaluation episodes never share a stream.
STREAMS = {"train": 0, "val": 1, "test": 2, "sampler": 3}


def seed_stream(seed: int, stream: str, rank: int = 0, index: int = 0) -> np.random.SeedSequence:
    """The seed sequence for one consumer; distinct (stream, rank, index) give independent streams."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(STREAMS[stream], rank, index))


@dataclass
class EnvState:
    """What the policy sees of one env now."""

    image: np.ndarray
    text: str
    goal: str
    legal_actions: list[str]


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


@dataclass
class _Tracker:
    ret: float = 0.0
    length: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _state(obs: dict[str, Any], info: dict[str, Any]) -> EnvState:
    return EnvState(obs["image"], obs.get("text", ""), info.get("goal", ""), list(info.get("legal_actions", [])))


class EnvPool:
    """In-process pool. ``step`` resets finished envs at once, so every call returns N live states."""

    def __init__(
        self,
        env: str,
        num_envs: int,
        *,
        seed: int,
        rank: int = 0,
        stream: str = "train",
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1 (got {num_envs})")
        self.env_cls: type[TextVisualEnv] = env_class(env)
        self.envs = [self.env_cls(**(env_kwargs or {})) for _ in range(num_envs)]
        self._first_seeds = [int(seed_stream(seed, stream, rank, i).generate_state(1)[0]) for i in range(num_envs)]
        self._trackers = [_Tracker() for _ in self.envs]
        self.states: list[EnvState] = []

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    @property
    def task_description(self) -> str:
        return self.env_cls.task_description

    def reset(self) -> list[EnvState]:
        """Start the pool: each env's first episode from its own seed, later ones continue its RNG."""
        self.states = [_state(*env.reset(seed=s)) for env, s in zip(self.envs, self._first_seeds)]
        self._trackers = [_Tracker() for _ in self.envs]
        return self.states

    def reset_to(self, seeds: Sequence[int]) -> list[EnvState]:
        """Start one episode per given seed (held-out evaluation); uses the first len(seeds) envs."""
        if len(seeds) > self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for a pool of {self.num_envs} envs")
        self.states = [_state(*env.reset(seed=int(s))) for env, s in zip(self.envs, seeds)]
        self._trackers = [_Tracker() for _ in self.states]
        return self.states

    def step(
        self, actions: Sequence[str], indices: Sequence[int] | None = None, auto_reset: bool = True
    ) -> list[StepOutcome]:
        """Step the envs at ``indices`` (default: all) with one action each."""
        indices = range(len(self.states)) if indices is None else indices
        if len(actions) != len(indices):
            raise ValueError(f"{len(actions)} actions for {len(indices)} envs")
        outcomes = []
        for i, action in zip(indices, actions):
            env, tracker = self.envs[i], self._trackers[i]
            obs, reward, terminated, truncated, info = env.step(action)
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
                    obs, info = env.reset()
            self.states[i] = _state(obs, info)
            outcomes.append(outcome)
        return outcomes

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue exactly here: envs mid-episode (with their RNGs) and episode trackers."""
        return {"envs": self.envs, "states": self.states, "trackers": self._trackers, "env_cls": self.env_cls,
                "first_seeds": self._first_seeds}  # fmt: skip

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> "EnvPool":
        pool = cls.__new__(cls)
        pool.env_cls = snapshot["env_cls"]
        pool.envs = snapshot["envs"]
        pool.states = snapshot["states"]
        pool._trackers = snapshot["trackers"]
        pool._first_seeds = snapshot["first_seeds"]
        return pool

    def close(self) -> None:
        for env in self.envs:
            env.close()
