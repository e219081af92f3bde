"""Cross-modal projector: diagonal-Gaussian maps between a token's text-only hidden state and its image-text one.

Paired data runs the same token ids with and without the image (:mod:`selu_lightning.latent.views`), so
position t of one run answers position t of the other. ``text_to_mm`` then lets text-only data act in the
image-text space the codes were learned in (its mean is what the IDM, merge and policy read for text), and
the cycle text -> image-text -> text (:func:`cycle_nll`) trains it on text that has no image.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CrossModalProjector", "GaussianHead", "cycle_nll", "gaussian_nll"]


def _mlp(hidden_size: int, bounded: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(hidden_size, hidden_size // 2), nn.Tanh(), nn.Linear(hidden_size // 2, hidden_size)]
    return nn.Sequential(*layers, nn.Tanh()) if bounded else nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Mean and log-variance MLPs (Linear(d, d/2)-Tanh-Linear(d/2, d); the log-variance bounded by Tanh)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mean = _mlp(hidden_size, bounded=False)
        self.logvar = _mlp(hidden_size, bounded=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.mean[0].weight.dtype)
        return self.mean(x), self.logvar(x)


class CrossModalProjector(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.text_to_mm = GaussianHead(hidden_size)
        self.mm_to_text = GaussianHead(hidden_size)


def gaussian_nll(mu: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_d (mu - y)^2 exp(-s) + s per position, averaged over the masked positions (fp32; constants dropped,
    as in the reference)."""
    per_dim = (mu.float() - target.float()) ** 2 * torch.exp(-logvar.float()) + logvar.float()
    mask = mask.float()
    return (per_dim.sum(-1) * mask).sum() / mask.sum().clamp(min=1)


def cycle_nll(projector: CrossModalProjector, h_text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Text -> image-text mean -> the image-text -> text Gaussian, scored against the text state itself."""
    m, _ = projector.text_to_mm(h_text)
    mu, logvar = projector.mm_to_text(m)
    return gaussian_nll(mu, logvar, h_text, mask)
