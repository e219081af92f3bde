"""PPO loss terms as pure functions. Each returns a scalar (mean over the batch) computed in fp32."""

from __future__ import annotations

import torch

__all__ = ["ppo_policy_loss", "clipped_value_loss", "k3_kl"]


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate ``-mean(min(r A, clip(r, 1-e, 1+e) A))`` with its diagnostics.

    Diagnostics (no gradient): ``approx_kl`` is the low-variance estimator mean((r-1) - log r),
    ``clip_fraction`` the share of samples whose ratio left the trust region.
    """
    if old_logprobs.requires_grad or advantages.requires_grad:
        raise ValueError("old_logprobs and advantages are rollout constants and must not carry gradients")
    log_ratio = logprobs.float() - old_logprobs.float()
    ratio = log_ratio.exp()
    adv = advantages.float()
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    with torch.no_grad():
        stats = {
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "clip_fraction": ((ratio - 1.0).abs() > clip).float().mean(),
            "ratio_max_abs_log": log_ratio.abs().max(),
        }
    return -surrogate.mean(), stats


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None
) -> torch.Tensor:
    """``0.5 * mean(max((v - R)^2, (v_clipped - R)^2))`` with v clipped to old_v +- clip (None: unclipped)."""
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped.mean()
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped).mean()


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Unbiased, non-negative KL(pi || ref) estimate from samples of pi: mean(exp(d) - d - 1), d = ref - pi."""
    d = ref_logprobs.float() - logprobs.float()
    return (d.exp() - d - 1.0).mean()
