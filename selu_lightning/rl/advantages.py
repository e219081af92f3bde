"""Generalised advantage estimation and advantage normalisation (fp32, pure functions)."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["gae", "normalize_advantages"]


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over a ``[T, N]`` rollout (time-major, one column per env); returns ``(advantages, returns)``.

    ``next_values[t]`` is V(s_{t+1}): the value of the state the step led to. For a truncated step that is
    the value of the final observation (bootstrapping: the episode was cut, not finished); for a terminated
    step it is ignored (no future after a terminal state). The recursion is cut at every episode end, so
    advantages never leak across episodes that share an env column.
    """
    if not (rewards.shape == values.shape == next_values.shape == terminated.shape == truncated.shape):
        raise ValueError(
            "gae inputs must share one [T, N] shape; got "
            f"{[tuple(x.shape) for x in (rewards, values, next_values, terminated, truncated)]}"
        )
    rewards, values, next_values = (x.float() for x in (rewards, values, next_values))
    not_terminal = 1.0 - terminated.float()
    continues = 1.0 - torch.maximum(terminated.float(), truncated.float())
    deltas = rewards + gamma * next_values * not_terminal - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * continues[t] * running
        advantages[t] = running
    return advantages, advantages + values


def normalize_advantages(
    advantages: torch.Tensor, eps: float = 1e-8, sum_across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Zero mean, unit std (Bessel-corrected) over the whole rollout, of every rank when ``sum_across_ranks``
    adds a tensor up over ranks (the caller's collective, on the device its backend needs).

    Two passes in fp64 (mean first, then the squared deviations from it), so advantages whose |mean| is much
    larger than their std keep their precision; the statistics are those of the concatenated buffers."""
    reduce = sum_across_ranks or (lambda t: t)
    adv = advantages.double()
    total, count = reduce(torch.stack([adv.sum(), adv.new_tensor(float(adv.numel()))])).tolist()
    mean = total / count
    squares = float(reduce(((adv - mean) ** 2).sum().reshape(1))[0])
    var = squares / max(count - 1.0, 1.0)
    return ((adv - mean) / (var**0.5 + eps)).float()
