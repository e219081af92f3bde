"""PPO loss terms as pure functions. Each returns a scalar (mean over the batch) computed in fp32."""

from __future__ import annotations

import torch

__all__ = ["ppo_policy_loss", "clipped_value_loss", "k3_kl", "MAX_LOG_RATIO"]


#: |log ratio| is clamped to this before ``exp``: a 256-token response's sequence log-ratio can reach
#: hundreds, and exp would overflow to inf (then NaN gradients). e^20 ~ 5e8 is far outside any clip range;
#: where the clip had not already flattened the loss (A < 0 and r > 1 + eps, where min picks r A) the clamp
#: zeroes that sample's gradient past e^20, much as dual-clip PPO bounds such samples.
MAX_LOG_RATIO = 20.0


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate ``-mean(min(r A, clip(r, 1-e, 1+e) A))`` with its diagnostics.

    ``mask`` (1 keep, 0 leave out) restricts the mean to samples the policy should learn from. The log-ratio
    is clamped to +-``MAX_LOG_RATIO`` before ``exp``. Diagnostics (no gradient): ``approx_kl`` is the
    low-variance estimator mean((r-1) - log r), ``clip_fraction`` the share of samples whose ratio left the
    trust region, ``ratio_max_abs_log`` the largest |log r|.
    """
    if old_logprobs.requires_grad or advantages.requires_grad:
        raise ValueError("old_logprobs and advantages are rollout constants and must not carry gradients")
    if not (logprobs.shape == old_logprobs.shape == advantages.shape):
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and advantages "
            f"{tuple(advantages.shape)} must have one shape"
        )
    log_ratio = (logprobs.float() - old_logprobs.float()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    adv = advantages.float()
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    with torch.no_grad():
        stats = {
            "approx_kl": _masked_mean((ratio - 1.0) - log_ratio, mask),
            "clip_fraction": _masked_mean(((ratio - 1.0).abs() > clip).float(), mask),
            "ratio_max_abs_log": log_ratio.abs().max(),
        }
    return -_masked_mean(surrogate, mask), stats


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


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased, non-negative KL(pi || ref) estimate from samples of pi: mean(exp(d) - d - 1), d = ref - pi.

    Pass per-token log-probs (all tokens of a batch, concatenated): on whole-sequence sums d is large and
    exp(d) overflows; per token it stays small. d is clamped like PPO's log-ratio. ``weights`` (per entry, e.g.
    0 for padding rows) make it a weighted mean; all-zero weights give 0."""
    d = (ref_logprobs.float() - logprobs.float()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    k3 = d.exp() - d - 1.0
    if weights is None:
        return k3.mean()
    weights = weights.float()
    return (k3 * weights).sum() / weights.sum().clamp_min(1.0)
