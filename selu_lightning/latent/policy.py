"""The latent policy's sampling and scoring: codes drawn from top-k of logits / temperature; log pi of a code
is its log-softmax under logits / temperature over all K codes (as the paper's RL objective).

With ``top_k`` < K the behaviour distribution is the truncated one, so it differs from the scored one by the
mass outside the top k; PPO's first ratio is still 1 (rollout and update score alike), and ``top_k: 0`` makes
sampling and scoring the same distribution.
"""

from __future__ import annotations

import torch

__all__ = ["code_logprobs", "outcome_logprobs", "sample_codes"]


def sample_codes(
    logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[..., K] -> [...] codes: among the ``top_k`` largest logits (0: all), sampled from softmax(logits / T)."""
    scaled = logits.float() / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def code_logprobs(logits: torch.Tensor, codes: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 log pi(code) under softmax(logits / T), and the entropy of that distribution, per position."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    chosen = logp.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy


def outcome_logprobs(
    logits: torch.Tensor, same: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 log of the total probability of the codes in ``same`` ([..., K] bool: the codes that decode to the
    token that was decoded), under softmax(logits / T), and the code entropy, per position. The chosen code is
    always in ``same``, so this is >= its own log pi."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    grouped = torch.logsumexp(logp.masked_fill(~same.to(logp.device), float("-inf")), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return grouped, entropy
