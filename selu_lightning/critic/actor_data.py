"""What the critic's verdicts hand the actor (SELU's actor improvement): the episodes it accepts, under the
instruction it accepted them for.

An episode accepted for its own instruction is kept as recorded. A hindsight-relabeled one ("Open the fridge."
that opened the cabinet) becomes an episode of "Open the cabinet.": its goal and every step's prompt are
rewritten (the instruction text in the prompt replaced by the new one), so ActorSFT learns the relabeled task
from the prompts it would see for it. Its responses and actions are kept: they did achieve the new instruction.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from selu_lightning.data.trajectories import Trajectory
from selu_lightning.rewards.base import judged_view

__all__ = ["relabel_episode", "actor_episodes"]


def relabel_episode(trajectory: Trajectory, instruction: str) -> Trajectory:
    """The episode as if it had been played for ``instruction`` (see the module docstring); a new episode id
    (``<id>@<instruction>``) keeps relabeled copies apart from the original in a store."""
    if instruction == trajectory.goal:
        return trajectory
    old = trajectory.goal
    if not old:
        raise ValueError(f"episode {trajectory.episode_id} has no instruction to relabel")
    missing = [k for k, s in enumerate(trajectory.steps) if old not in s.prompt]
    if missing:
        raise ValueError(
            f"episode {trajectory.episode_id}: the instruction {old!r} is not in the prompt of step {missing[0]}; a "
            "prompt template without {goal} cannot be relabeled"
        )
    steps = [dataclasses.replace(s, prompt=s.prompt.replace(old, instruction)) for s in trajectory.steps]
    return dataclasses.replace(trajectory, episode_id=f"{trajectory.episode_id}@{instruction}", goal=instruction,
                               steps=steps)  # fmt: skip


def actor_episodes(trajectories: Sequence[Trajectory], accepted: Mapping[str, Sequence[str]]) -> list[Trajectory]:
    """Each episode once per instruction the critic accepted it for (``accepted``: episode id -> instructions,
    e.g. :func:`~selu_lightning.critic.data.accepted_instructions`), in store order; others are left out. Read
    without ground truth."""
    out: list[Trajectory] = []
    for traj in trajectories:
        for instruction in dict.fromkeys(accepted.get(traj.episode_id, ())):
            out.append(relabel_episode(judged_view(traj), instruction))
    return out
