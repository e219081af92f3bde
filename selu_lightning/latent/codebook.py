"""The K x d table of latent actions. A one-hot (hard, or straight-through) picks a row; the gradient of a
straight-through one-hot reaches the chosen rows. Same initialisation as a bias-free ``Linear(K, d)`` (the
reference's form)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Codebook"]


class Codebook(nn.Module):
    def __init__(self, num_codes: int, hidden_size: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(num_codes)
        self.weight = nn.Parameter(torch.empty(num_codes, hidden_size).uniform_(-bound, bound))

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        """[..., K] (soft or hard) -> [..., d]."""
        return one_hot.to(self.weight.dtype) @ self.weight

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes -> their rows."""
        return self.weight[codes]
