"""Episodes as the rollout saw them: what reward sources, SFT, the SELU critic and trajectory stores read.

A :class:`Trajectory` holds, per step, the frame, the prompt text, the response text, the env action and the
env reward. The simulator's own verdict (``success``) sits apart in ``ground_truth``: evaluation code reads
it, training code never does (invariant 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["StepRecord", "Trajectory", "EpisodeRecorder"]


@dataclass
class StepRecord:
    frame: np.ndarray | None
    """The observation's frame the policy saw (uint8 HxWx3; None when frames are not kept)."""
    observation: str
    """The observation's text."""
    prompt: str
    """The user turn's text the policy answered."""
    response: str
    """What the policy wrote (the chosen candidate for candidate action spaces)."""
    action: str
    """The env action taken."""
    reward: float
    """The env's reward for the step."""


@dataclass
class Trajectory:
    episode_id: str
    """Unique per run: ``<stream>-<rank>-<env index>-<episode number>``."""
    env_index: int
    goal: str
    steps: list[StepRecord] = field(default_factory=list)
    final_frame: np.ndarray | None = None
    """The observation the last action led to (what a critic judges)."""
    final_observation: str = ""
    seed: int | None = None
    """The reset seed when the episode started from one (demonstrations, evaluation); training episodes
    after an auto-reset continue their env's RNG and have none."""
    end: tuple[int, int] | None = None
    """``(t, env)`` of the last step in the rollout buffer it finished in (where episode-end rewards go)."""
    truncated: bool = False
    """Cut by the env's step limit rather than ended by the task (episodes lost to a worker restart are dropped)."""
    ground_truth: dict[str, Any] = field(default_factory=dict)
    """The simulator's verdict (``success``, ...): for evaluation metrics only, never for training."""

    @property
    def env_return(self) -> float:
        return float(sum(s.reward for s in self.steps))


class EpisodeRecorder:
    """Keeps each env's episode in flight across rollouts and hands over the finished ones."""

    def __init__(self, num_envs: int, name: str, keep_frames: bool = True) -> None:
        self.name, self.keep_frames = name, keep_frames
        self.counts = [0] * num_envs
        self.open: list[Trajectory | None] = [None] * num_envs

    def _current(self, i: int, goal: str, seed: int | None) -> Trajectory:
        if self.open[i] is None:
            self.open[i] = Trajectory(f"{self.name}-{i}-{self.counts[i]}", i, goal, seed=seed)
            self.counts[i] += 1
        return self.open[i]

    def step(self, i: int, frame: np.ndarray, observation: str, goal: str, prompt: str, response: str,
             action: str, reward: float, seed: int | None = None) -> None:  # fmt: skip
        traj = self._current(i, goal, seed)
        traj.steps.append(
            StepRecord(frame if self.keep_frames else None, observation, prompt, response, action, float(reward))
        )

    def finish(self, i: int, final_frame: np.ndarray | None, final_observation: str, end: tuple[int, int],
               truncated: bool, ground_truth: dict[str, Any]) -> Trajectory:  # fmt: skip
        traj = self.open[i]
        if traj is None:
            raise RuntimeError(f"env {i} finished an episode that was never started")
        traj.final_frame, traj.final_observation, traj.end = final_frame, final_observation, end
        traj.truncated, traj.ground_truth = truncated, dict(ground_truth)
        self.open[i] = None
        return traj

    def drop(self, i: int) -> None:
        """Forget env i's episode in flight (its worker was restarted: the episode is lost)."""
        self.open[i] = None

    def state_dict(self) -> dict[str, Any]:
        """Episodes in flight without their frames (checkpoints stay small; the final frame, which critics
        read, always comes after a resume)."""
        open_ = [
            None if t is None else {**t.__dict__, "steps": [{**s.__dict__, "frame": None} for s in t.steps]}
            for t in self.open
        ]
        return {"name": self.name, "counts": list(self.counts), "open": open_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.name, self.counts = state["name"], list(state["counts"])
        self.open = [
            None if t is None else Trajectory(**{**t, "steps": [StepRecord(**s) for s in t["steps"]]})
            for t in state["open"]
        ]
