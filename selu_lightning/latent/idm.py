"""Inverse dynamics model: which code explains the step from position t to the token at t+1.

It reads the future: the code used at position t is the IDM's output at t + 1, whose causal layers have seen
the hidden state of token t+1 (:func:`shift_to_next`). Codes are drawn with Gumbel-softmax and a hard one-hot
in the forward pass whose gradient is the soft sample's (straight-through), so both the codebook row and the
IDM learn from the world model's loss. As in the reference there is no VQ, commitment loss or EMA; the only
regulariser is a per-position entropy term on the (noise-free) softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selu_lightning.latent.layers import CodeStack

__all__ = ["InverseDynamics", "code_usage", "negative_entropy", "shift_to_next", "straight_through_gumbel"]


def shift_to_next(logits: torch.Tensor) -> torch.Tensor:
    """[B, L, K] -> the logits of position t+1 at position t. The last position keeps its own (it predicts
    no token: nothing follows it); the reference does the same."""
    out = logits.clone()
    out[:, :-1] = logits[:, 1:]
    return out


def straight_through_gumbel(
    logits: torch.Tensor, tau: float, gumbels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A hard one-hot of argmax((logits + g) / tau) whose gradient is the soft sample's, and the chosen codes.

    ``gumbels``: the noise g (drawn from the global RNG when None; tests pass zeros to get the argmax)."""
    if gumbels is None:
        gumbels = -torch.empty_like(logits).exponential_().log()
    soft = torch.softmax((logits + gumbels) / tau, dim=-1)
    codes = soft.argmax(dim=-1)
    hard = F.one_hot(codes, logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, codes


def negative_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of sum_k p log p (the reference's term; minimising it spreads each
    position's code distribution)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = (logp.exp() * logp).sum(-1)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def code_usage(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """[K] counts of each code among ``codes`` (any shape)."""
    return torch.bincount(codes.flatten().long(), minlength=num_codes)


class InverseDynamics(nn.Module):
    """Causal layers on h -> K logits, shifted so position t carries the code of the step t -> t+1."""

    def __init__(self, stack: CodeStack) -> None:
        super().__init__()
        self.stack = stack

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return shift_to_next(self.stack(h))
