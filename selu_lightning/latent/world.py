"""World model: the VLM, with a code merged into its last hidden state by gated residual MLPs, read out by
the VLM's own LM head.

``x = h + sum of gated MLPs on [x, code]`` (h: the VLM's final normed hidden state). One read-out is used in every
stage and at RL time (``LatentConfig.readout``):

- ``additive`` (default): ``logits = lm_head(x)``. The merges' output projections start at zero, so before
  training the world model *is* the base LM, whatever the code; the code learns to move the prediction where
  the data needs it (the choices RL then makes). Deliberately not the reference's form: measured on the CPU
  NumberLine recipe, the reference's form decoded 0.1% of the SFT model's reply tokens correctly given the
  IDM's own codes (the base LM: 99.7%), so no decoded reply was parsable (RESULTS.md).
- ``reference``: ``logits = lm_head(norm(x) - h)``, the form MMLatentAction trains every pretraining stage with
  (it switches to ``lm_head(norm(last MLP output))`` at generation time, a form no stage trains; not offered).
  It subtracts the base prediction: ``lm_head(norm(x)) - lm_head(h)``, and ``norm(x)`` has the norm's fixed
  scale, so a token the base LM is sure of is the hardest to produce. With a 7B model's width there may be
  room to overcome this; with the tiny test models there is not.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["READOUTS", "GatedMerge", "Readout", "WorldModel", "world_logits"]

Readout = Literal["additive", "reference"]
READOUTS: tuple[str, ...] = ("additive", "reference")


class GatedMerge(nn.Module):
    """proj(silu(fc1([x, c])) * fc2([x, c])): one residual update of the state x by the code c."""

    def __init__(self, hidden_size: int, ffn_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * hidden_size, ffn_size, bias=False)
        self.fc2 = nn.Linear(2 * hidden_size, ffn_size, bias=False)
        self.proj = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        xc = torch.cat([x, code], dim=-1)
        return self.proj(torch.nn.functional.silu(self.fc1(xc)) * self.fc2(xc))


class WorldModel(nn.Module):
    """``layers`` gated merges applied residually (per position: no mixing across the sequence), and the
    read-out through the VLM's norm and LM head."""

    def __init__(self, hidden_size: int, ffn_size: int, layers: int, readout: Readout = "additive") -> None:
        super().__init__()
        self.readout = readout
        self.blocks = nn.ModuleList(GatedMerge(hidden_size, ffn_size) for _ in range(layers))
        if readout == "additive":
            for block in self.blocks:  # the base LM at the start (LoRA's zero-B idea)
                nn.init.zeros_(block.proj.weight)

    def merge(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = h.to(self.blocks[0].proj.weight.dtype)
        code = code.to(x.dtype)
        for block in self.blocks:
            x = x + block(x, code)
        return x

    def logits(self, h: torch.Tensor, code: torch.Tensor, norm: nn.Module, lm_head: nn.Module) -> torch.Tensor:
        """fp32 next-token logits at the states ``h`` given code vectors ``code`` (same leading shape)."""
        return world_logits(self.merge(h, code), h, norm, lm_head, self.readout)


def world_logits(
    merged: torch.Tensor, h: torch.Tensor, norm: nn.Module, lm_head: nn.Module, readout: Readout = "additive"
) -> torch.Tensor:
    """fp32 next-token logits of the merged state: ``lm_head(merged)`` (additive) or ``lm_head(norm(merged) - h)``
    (reference; ``h`` detached, the base state is not trained here)."""
    dtype = lm_head.weight.dtype
    if readout == "additive":
        return lm_head(merged.to(dtype)).float()
    if readout == "reference":
        return lm_head(norm(merged.to(dtype)) - h.detach().to(dtype)).float()
    raise ValueError(f"unknown world-model readout {readout!r} (one of {', '.join(READOUTS)})")
