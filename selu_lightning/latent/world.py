"""World model: the VLM, with a code merged into its last hidden state by gated residual MLPs, read out by
the VLM's own final norm and LM head.

Output form (one, in every stage and at RL time): ``logits = lm_head(norm(x) - h)`` with
``x = h + sum of gated MLPs on [x, code]``. The reference trains its IDM warm-up, joint and policy-BC stages with
this form and switches at RL / generation time to ``lm_head(norm(last MLP output))``, a form none of those
stages trains. Keeping the trained form means the tokens decoded during RL come from exactly the function the
space was learned with. Subtracting h starts the read-out from (almost) nothing rather than from the base LM's
own prediction, so the merge, driven by the code, has to produce the next token; the code then carries it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GatedMerge", "WorldModel", "world_logits"]


class GatedMerge(nn.Module):
    """proj(silu(fc1([x, c])) * fc2([x, c])): one residual update of the state x by the code c."""

    def __init__(self, hidden_size: int, ffn_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * hidden_size, ffn_size, bias=False)
        self.fc2 = nn.Linear(2 * hidden_size, ffn_size, bias=False)
        self.proj = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        xc = torch.cat([x, code], dim=-1)
        return self.proj(F.silu(self.fc1(xc)) * self.fc2(xc))


class WorldModel(nn.Module):
    """``layers`` gated merges applied residually (per position: no mixing across the sequence)."""

    def __init__(self, hidden_size: int, ffn_size: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(GatedMerge(hidden_size, ffn_size) for _ in range(layers))

    def merge(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = h.to(self.blocks[0].proj.weight.dtype)
        code = code.to(x.dtype)
        for block in self.blocks:
            x = x + block(x, code)
        return x


def world_logits(merged: torch.Tensor, h: torch.Tensor, norm: nn.Module, lm_head: nn.Module) -> torch.Tensor:
    """fp32 next-token logits ``lm_head(norm(merged) - h)`` (``h`` detached: the base state is not trained here)."""
    dtype = lm_head.weight.dtype
    return lm_head(norm(merged.to(dtype)) - h.detach().to(dtype)).float()
