"""Critic-free group advantages: GRPO, Dr.GRPO and GiGPO (fp32 results, fp64 sums, pure functions).

A *group* is G episodes played from one initial state (same seed / task) that differ only in sampling. Every
function takes flat per-step sequences in one order, in which the steps of each episode appear in time order
(the runner's ``[T, N]`` buffer read row by row has that order):

- ``rewards[k]``: the learning reward of step k,
- ``episodes[k]``: which episode step k belongs to (any hashable id, unique in the batch),
- ``groups[k]``: which group that episode belongs to (any hashable id),
- ``keys[k]``: the env's state key of the state step k acted from (GiGPO's anchor states).

Where this follows verl-agent's GiGPO code (``gigpo/core_gigpo.py``, ``core_algos.compute_grpo_outcome_advantage``;
behaviour matched, nothing copied) and where it differs:

- eps 1e-6 added to the std, and the std is Bessel-corrected (unbiased), as ``torch.std`` there.
- An episode's return is the undiscounted sum of its rewards; GiGPO's step return is the discounted return-to-go
  ``r_t + gamma r_{t+1} + ...`` inside the episode (Eq. 5), with the module's ``gamma`` (verl-agent's examples use
  0.95; its config default is 1.0).
- Anchor states: exact matches of the state key among all steps of one group, across its episodes and repeated
  within one episode alike (each visit is one member with its own return-to-go), as verl-agent's exact-match
  grouping (its optional similarity grouping is not implemented).
- Episode statistics count each episode once (the paper's Eq. 3). verl-agent's default
  (``compute_mean_std_cross_steps``) computes them over step rows, weighting an episode by its length.
- Singleton groups get advantage 0 at both levels: nothing to compare with, so no signal. verl-agent gives a
  singleton step group 0 as well, but a singleton episode group its raw return (mean 0, std 1). The runner never
  forms singleton episode groups (``data.group_size >= 2``; incomplete groups are left out).
- A group whose members are all equal gets exactly 0 (not 0 / eps rounding noise).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Literal, Sequence

import torch

__all__ = [
    "GROUP_ALGORITHMS",
    "GroupStats",
    "group_normalize",
    "episode_advantages",
    "discounted_step_returns",
    "anchor_advantages",
    "group_advantages",
]

Algorithm = Literal["grpo", "dr_grpo", "gigpo"]
#: The estimators that need group rollouts and no value head.
GROUP_ALGORITHMS: tuple[str, ...] = ("grpo", "dr_grpo", "gigpo")


@dataclass
class GroupStats:
    """Sums and counts (so ranks can be added up before dividing) describing one batch's groups."""

    groups: int = 0
    """Episode groups (each of G episodes)."""
    group_return_std_sum: float = 0.0
    """Sum over groups of the (unbiased) std of their episode returns."""
    zero_variance_groups: int = 0
    """Groups whose episodes all returned the same: no learning signal at the episode level."""
    anchor_groups: int = 0
    """GiGPO's step-level groups (distinct (group, state key) pairs)."""
    anchor_steps: int = 0
    """Steps in those anchor groups (anchor_steps / anchor_groups: the mean anchor-group size)."""
    shared_anchor_steps: int = 0
    """Steps whose anchor group has other members (the only steps with a step-level signal)."""

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def _partition(labels: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    members: dict[Hashable, list[int]] = defaultdict(list)
    for k, label in enumerate(labels):
        members[label].append(k)
    return members


def group_normalize(
    values: torch.Tensor | Sequence[float], labels: Sequence[Hashable], *, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """``(x - mean_g) / (std_g + eps)`` (``scale``) or ``x - mean_g`` within each label's members, fp32.

    The std is Bessel-corrected; a group of one member, or one whose members are all equal, gets exactly 0."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(labels) != x.numel():
        raise ValueError(f"{x.numel()} values for {len(labels)} labels")
    out = torch.zeros_like(x)
    for idx in _partition(labels).values():
        members = x[idx]
        if len(idx) < 2 or bool((members == members[0]).all()):
            continue  # no comparison (or nothing to tell apart): advantage 0
        centred = members - members.mean()
        out[idx] = centred / (members.std() + eps) if scale else centred
    return out.float()


def _check_lengths(**seqs: Sequence) -> int:
    lengths = {name: len(s) for name, s in seqs.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"per-step inputs must have one length; got {lengths}")
    return next(iter(lengths.values()))


def episode_advantages(
    rewards: torch.Tensor | Sequence[float],
    episodes: Sequence[Hashable],
    groups: Sequence[Hashable],
    *,
    scale: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per step, its episode's return normalised within the episode's group (GRPO; Dr.GRPO with
    ``scale=False``): every step of an episode gets the same value. Each episode counts once."""
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    _check_lengths(rewards=r, episodes=episodes, groups=groups)
    returns: dict[Hashable, float] = defaultdict(float)
    group_of: dict[Hashable, Hashable] = {}
    for k, (e, g) in enumerate(zip(episodes, groups)):
        returns[e] += float(r[k])
        if group_of.setdefault(e, g) != g:
            raise ValueError(f"episode {e!r} appears in two groups ({group_of[e]!r}, {g!r})")
    ids = list(returns)
    per_episode = group_normalize([returns[e] for e in ids], [group_of[e] for e in ids], scale=scale, eps=eps)
    lookup = dict(zip(ids, per_episode.tolist()))
    return torch.tensor([lookup[e] for e in episodes], dtype=torch.float32)


def discounted_step_returns(
    rewards: torch.Tensor | Sequence[float], episodes: Sequence[Hashable], gamma: float
) -> torch.Tensor:
    """Per step, the discounted return from that step to its episode's end (steps of an episode in time order)."""
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    _check_lengths(rewards=r, episodes=episodes)
    out = torch.zeros_like(r)
    running: dict[Hashable, float] = {}
    for k in range(r.numel() - 1, -1, -1):
        e = episodes[k]
        running[e] = float(r[k]) + gamma * running.get(e, 0.0)
        out[k] = running[e]
    return out.float()


def anchor_advantages(
    step_returns: torch.Tensor | Sequence[float],
    groups: Sequence[Hashable],
    keys: Sequence[Hashable],
    *,
    scale: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GiGPO's step level: steps of one group acting from identical states (equal keys: across its episodes or
    repeated within one) form an anchor group; each step's return-to-go is normalised within it."""
    _check_lengths(step_returns=step_returns, groups=groups, keys=keys)
    return group_normalize(step_returns, list(zip(groups, keys)), scale=scale, eps=eps)


def group_advantages(
    algorithm: Algorithm,
    rewards: torch.Tensor | Sequence[float],
    episodes: Sequence[Hashable],
    groups: Sequence[Hashable],
    keys: Sequence[Hashable] | None = None,
    *,
    gamma: float = 0.95,
    step_weight: float = 1.0,
    scale: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, GroupStats]:
    """Per-step advantages of one batch of complete groups and their statistics.

    ``grpo``: (R - mean) / (std + eps). ``dr_grpo``: R - mean. ``gigpo``: the episode advantage plus
    ``step_weight`` x the anchor-state step advantage; ``scale`` (GiGPO only) divides both levels by their std
    (verl-agent's ``mean_std_norm``; false: its ``mean_norm``)."""
    if algorithm not in GROUP_ALGORITHMS:
        raise ValueError(f"unknown group algorithm {algorithm!r}; one of {GROUP_ALGORITHMS}")
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    scale = {"grpo": True, "dr_grpo": False, "gigpo": scale}[algorithm]
    advantages = episode_advantages(r, episodes, groups, scale=scale, eps=eps)
    stats = _episode_stats(r, episodes, groups)
    if algorithm == "gigpo":
        if keys is None:
            raise ValueError("gigpo needs the state key of every step")
        step_returns = discounted_step_returns(r, episodes, gamma)
        advantages = advantages + step_weight * anchor_advantages(step_returns, groups, keys, scale=scale, eps=eps)
        anchors = _partition(list(zip(groups, keys)))
        stats.anchor_groups = len(anchors)
        stats.anchor_steps = sum(len(m) for m in anchors.values())
        stats.shared_anchor_steps = sum(len(m) for m in anchors.values() if len(m) > 1)
    return advantages, stats


def _episode_stats(rewards: torch.Tensor, episodes: Sequence[Hashable], groups: Sequence[Hashable]) -> GroupStats:
    returns: dict[Hashable, float] = defaultdict(float)
    group_of: dict[Hashable, Hashable] = {}
    for k, (e, g) in enumerate(zip(episodes, groups)):
        returns[e] += float(rewards[k])
        group_of[e] = g
    by_group: dict[Hashable, list[float]] = defaultdict(list)
    for e, ret in returns.items():
        by_group[group_of[e]].append(ret)
    stats = GroupStats(groups=len(by_group))
    for rets in by_group.values():
        t = torch.tensor(rets, dtype=torch.float64)
        std = float(t.std()) if t.numel() > 1 else 0.0
        stats.group_return_std_sum += std
        stats.zero_variance_groups += int(bool((t == t[0]).all()))
    return stats
