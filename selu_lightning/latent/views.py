"""One batch of (prompt, continuation) examples as the latent space reads it: the backbone's final hidden
states h, the token ids, which positions are text, and each position's next-token target.

Image-free views of paired examples keep the processor's token ids (image placeholders included) and drop only
the pixel tensors, so the two runs have the same length and position t of one is position t of the other; the
placeholders are then ordinary token embeddings, and every loss leaves image positions out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from selu_lightning.policy.vlm import VLMPolicy, strip_image

__all__ = ["SequenceView", "next_token_targets", "sequence_view"]

IGNORE = -100


@dataclass
class SequenceView:
    hidden: torch.Tensor
    """[B, L, d] final normed hidden states (no gradient: the backbone is frozen)."""
    ids: torch.Tensor
    """[B, L] right-padded prompt + continuation ids."""
    text_mask: torch.Tensor
    """[B, L] True at real, non-image tokens (where the projector's NLLs are scored)."""
    targets: torch.Tensor
    """[B, L] the next token where it is a text token, else -100 (where codes and CE are scored)."""
    response_mask: torch.Tensor
    """[B, L] True at the positions that predict a response token (the last prompt position and on)."""

    @property
    def target_mask(self) -> torch.Tensor:
        return self.targets != IGNORE


def next_token_targets(ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """targets[t] = ids[t+1] where token t+1 is text, else -100. Rows are right-padded, so a text token at
    t+1 means position t is real (an image position before text still predicts it, as in the reference)."""
    targets = torch.full_like(ids, IGNORE)
    targets[:, :-1] = torch.where(text_mask[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], IGNORE))
    return targets


def sequence_view(
    policy: VLMPolicy, samples: Sequence[dict[str, Any]], *, with_image: bool, grad: bool = False
) -> SequenceView:
    """Run the backbone once over ``prompt + response`` of every sample; ``with_image=False`` drops the
    pixels (same ids)."""
    prompts = [s["prompt"] if with_image else strip_image(s["prompt"]) for s in samples]
    responses = [s["response"] for s in samples]
    with torch.set_grad_enabled(grad):
        out = policy.backbone(prompts, responses)
    device = out.hidden.device
    width = out.hidden.shape[1]
    ids = torch.full((len(samples), width), -1, dtype=torch.long)
    response = torch.zeros((len(samples), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = torch.cat([p["input_ids"].long(), r.long()])
        ids[i, : seq.numel()] = seq
        start = p["input_ids"].numel() - 1
        response[i, start : start + r.numel()] = True
    ids = ids.to(device)
    image_ids = torch.tensor(sorted(policy.suppress_token_ids), dtype=torch.long, device=device)
    text_mask = (ids >= 0) & ~torch.isin(ids, image_ids)
    targets = next_token_targets(ids.clamp(min=0), text_mask)
    return SequenceView(out.hidden, ids.clamp(min=0), text_mask, targets, response.to(device))
