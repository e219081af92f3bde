"""PPO's view of a rollout: transitions, length-aware shuffled minibatches for several passes, collation."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["PPOEpochSampler", "sample_tokens", "collate_transitions", "explained_variance", "CONSTANTS"]


class PPOEpochSampler(Sampler[list[int]]):
    """Minibatches for ``ppo_epochs`` passes over the buffer, each pass a fresh seeded permutation.

    Length-aware: each pass is cut into groups of ``group`` minibatches; within a group transitions are
    sorted by token count before being split, so a minibatch holds sequences of similar length and pads
    little; the minibatch order is then shuffled. ``group=1`` is a plain shuffle.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, ppo_epochs: int, generator: torch.Generator, group: int = 8
    ) -> None:
        self.lengths, self.batch_size, self.ppo_epochs = list(lengths), batch_size, ppo_epochs
        self.generator, self.group = generator, max(int(group), 1)

    def _one_pass(self) -> list[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[k : k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[k] for k in shuffle]

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.ppo_epochs):
            yield from self._one_pass()

    def __len__(self) -> int:
        return self.ppo_epochs * -(-len(self.lengths) // self.batch_size)


def sample_tokens(sample: dict[str, Any]) -> int:
    """Tokens a stored decision costs to score again: its prompt once (candidates are scored on its KV cache),
    plus its continuations."""
    prompt = int(sample["prompt"]["input_ids"].numel())
    conts = sample.get("candidates") or [sample.get("response", torch.zeros(0))]
    return prompt + sum(int(c.numel()) for c in conts)


#: Per-transition rollout constants a PPO minibatch carries next to the samples. ``weights`` (1 learn, 0 leave
#: out of the policy loss: padding that evens out minibatch counts across ranks) defaults to 1.
CONSTANTS = ("old_logprobs", "old_values", "advantages", "returns", "weights")
_DEFAULTS = {"weights": 1.0}


def collate_transitions(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Samples as they are (Lightning moves their tensors to the device); the rollout constants as float64
    numpy arrays, which precision plugins leave alone (bf16-true would otherwise round them to bf16): the
    module turns them into fp32 tensors on its device."""
    out: dict[str, Any] = {"samples": [it["sample"] for it in items]}
    for key in CONSTANTS:
        out[key] = np.array([it[key] if key in it else _DEFAULTS[key] for it in items], dtype=np.float64)
    return out


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant, negative worse."""
    var = returns.var()
    return float("nan") if var == 0 else float(1 - (returns - values).var() / var)
