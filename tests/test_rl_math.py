"""GAE and every PPO loss term against numbers computed by hand."""

import math

import pytest
import torch

from selu_lightning.rl import clipped_value_loss, gae, k3_kl, normalize_advantages, ppo_policy_loss


def test_gae_single_env_by_hand():
    # One env, 3 steps, no episode end; gamma 0.5, lambda 0.5; bootstrap V(s3) = 4.
    r = torch.tensor([[1.0], [0.0], [2.0]])
    v = torch.tensor([[1.0], [2.0], [3.0]])
    nv = torch.tensor([[2.0], [3.0], [4.0]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = gae(r, v, nv, no, no, gamma=0.5, lam=0.5)
    # deltas: 1+1-1=1, 0+1.5-2=-0.5, 2+2-3=1
    # A2 = 1; A1 = -0.5 + 0.25*1 = -0.25; A0 = 1 + 0.25*(-0.25) = 0.9375
    assert adv[:, 0].tolist() == pytest.approx([0.9375, -0.25, 1.0])
    assert ret[:, 0].tolist() == pytest.approx([1.9375, 1.75, 4.0])


def test_gae_termination_does_not_bootstrap_truncation_does():
    r = torch.tensor([[1.0, 1.0], [5.0, 5.0]])
    v = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    nv = torch.tensor([[1.0, 1.0], [10.0, 10.0]])  # step 1 leads to a state worth 10
    term = torch.tensor([[False, False], [True, False]])
    trunc = torch.tensor([[False, False], [False, True]])
    adv, _ = gae(r, v, nv, term, trunc, gamma=0.9, lam=1.0)
    # env 0 terminated at t=1: delta1 = 5 - 1 = 4 (no bootstrap); env 1 truncated: delta1 = 5 + 9 - 1 = 13
    assert adv[1].tolist() == pytest.approx([4.0, 13.0])
    # t=0 continues into t=1 in both envs: A0 = (1 + 0.9*1 - 0.5) + 0.9*A1
    assert adv[0].tolist() == pytest.approx([1.4 + 0.9 * 4.0, 1.4 + 0.9 * 13.0])


def test_gae_cuts_recursion_at_episode_end():
    # Episode ends at t=0 (terminated); t=1 is a new episode with a huge advantage that must not leak back.
    r = torch.tensor([[1.0], [100.0]])
    v = torch.zeros(2, 1)
    nv = torch.zeros(2, 1)
    term = torch.tensor([[True], [False]])
    adv, _ = gae(r, v, nv, term, torch.zeros_like(term), gamma=0.99, lam=0.95)
    assert adv[0, 0].item() == pytest.approx(1.0)


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 1), *(torch.zeros(3, 2, dtype=torch.bool),) * 2, 0.9, 0.9)


def test_normalize_advantages():
    out = normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # mean 2.5, unbiased std sqrt(5/3)
    assert out.tolist() == pytest.approx([(x - 2.5) / math.sqrt(5 / 3) for x in (1, 2, 3, 4)], abs=1e-6)


def test_ppo_policy_loss_by_hand():
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.0])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -2.0])
    loss, stats = ppo_policy_loss(new, old, adv, clip=0.2)
    # min(1.5*1, 1.2*1)=1.2 ; min(0.5*1, 0.8*1)=0.5 ; min(1*-2, 1*-2)=-2 -> mean = -0.1/3 ; loss = +0.0333
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 2.0) / 3)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    # approx_kl = mean((r-1) - log r)
    expect = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.0)) / 3
    assert stats["approx_kl"].item() == pytest.approx(expect, rel=1e-5)
    loss.backward()
    # gradient flows only through unclipped terms: d/dlogp of -(r*A)/3 = -r*A/3 where unclipped
    assert new.grad.tolist() == pytest.approx([0.0, -0.5 / 3, 2.0 / 3])


def test_ppo_policy_loss_refuses_old_logprobs_with_grad():
    with pytest.raises(ValueError, match="gradients"):
        ppo_policy_loss(torch.zeros(2), torch.zeros(2, requires_grad=True), torch.ones(2), clip=0.2)


def test_clipped_value_loss_by_hand():
    v = torch.tensor([2.0, 0.0])
    old = torch.tensor([1.0, 1.0])
    ret = torch.tensor([3.0, 1.0])
    # sample 0: unclipped (2-3)^2 = 1 ; clipped v = 1.5 -> (1.5-3)^2 = 2.25 ; max 2.25
    # sample 1: unclipped (0-1)^2 = 1 ; clipped v = 0.5 -> 0.25 ; max 1
    assert clipped_value_loss(v, old, ret, clip=0.5).item() == pytest.approx(0.5 * (2.25 + 1.0) / 2)
    assert clipped_value_loss(v, old, ret, clip=None).item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)


def test_k3_kl_by_hand():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.25]))
    # d = ref - logp = [log .5, 0] -> exp(d)-d-1 = [0.5 - log .5 - 1, 0]
    assert k3_kl(logp, ref).item() == pytest.approx((0.5 - math.log(0.5) - 1) / 2)
    assert k3_kl(logp, logp).item() == 0.0


def test_log_ratio_is_clamped_before_exp():
    """A 256-token sequence's log-ratio can be hundreds: exp would overflow to inf and the gradient to NaN."""
    from selu_lightning.rl.losses import MAX_LOG_RATIO

    logp = torch.tensor([300.0, -300.0, 0.1], requires_grad=True)
    loss, stats = ppo_policy_loss(logp, torch.zeros(3), torch.tensor([1.0, -1.0, 1.0]), clip=0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert float(stats["ratio_max_abs_log"]) == MAX_LOG_RATIO
    # clamped samples sit far outside the clip range: only the in-range sample has a gradient
    assert logp.grad[:2].tolist() == [0.0, 0.0] and logp.grad[2] != 0


def test_policy_loss_mask_leaves_samples_out():
    logp = torch.tensor([0.1, 0.3], requires_grad=True)
    old, adv = torch.zeros(2), torch.tensor([1.0, 5.0])
    masked, stats = ppo_policy_loss(logp, old, adv, clip=0.2, mask=torch.tensor([1.0, 0.0]))
    alone, _ = ppo_policy_loss(logp[:1], old[:1], adv[:1], clip=0.2)
    assert float(masked) == pytest.approx(float(alone))
    masked.backward()
    assert logp.grad[1] == 0
    none, _ = ppo_policy_loss(logp.detach(), old, adv, clip=0.2, mask=torch.zeros(2))
    assert float(none) == 0.0  # everything left out: no signal, and no NaN


def test_policy_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        ppo_policy_loss(torch.zeros(4), torch.zeros(4, 1), torch.zeros(4), clip=0.2)


def test_k3_per_token_by_hand():
    # d = ref - pi per token: [0, ln 2]: (1 - 0 - 1) + (2 - ln2 - 1) over 2 tokens
    pi = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.0, -2.0 + math.log(2.0)])
    assert float(k3_kl(pi, ref)) == pytest.approx((1.0 - math.log(2.0)) / 2)
    # a whole 256-token sequence's summed log-ratio would overflow exp; clamped per token it stays finite
    assert torch.isfinite(k3_kl(torch.tensor([-500.0]), torch.tensor([0.0])))


def test_normalize_advantages_precise_when_mean_dwarfs_std():
    """One-pass E[x^2] - E[x]^2 in fp32 loses everything when |mean| >> std; two passes in fp64 do not."""
    gen = torch.Generator().manual_seed(0)
    adv = (1e3 + 1e-2 * torch.randn(1000, generator=gen)).float()
    out = normalize_advantages(adv)
    exact = adv.double()
    expected = (exact - exact.mean()) / exact.std()
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4)
    one_pass_var = (adv * adv).mean() - adv.mean() ** 2  # what a single fp32 pass would have used
    assert abs(float(one_pass_var) - float(exact.var())) > 10 * float(exact.var())
    assert out.dtype == torch.float32


def test_normalize_advantages_statistics_span_ranks():
    """Two ranks' buffers, summed through the given collective, normalise as their concatenation would."""
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0])
    both = torch.cat([a, b])
    expected = (both - both.mean()) / both.std()
    # The collective's test double adds rank 1's partial sums of each pass: [sum, count], then squared deviations.
    stats_b = torch.stack([b.double().sum(), torch.tensor(2.0, dtype=torch.float64)])
    stats_a = torch.stack([a.double().sum(), torch.tensor(3.0, dtype=torch.float64)])
    mean = float((stats_a + stats_b)[0] / (stats_a + stats_b)[1])
    sq_b = ((b.double() - mean) ** 2).sum().reshape(1)
    calls = iter([stats_b, sq_b])
    out_a = normalize_advantages(a, sum_across_ranks=lambda t: t + next(calls))
    torch.testing.assert_close(out_a, expected[:3], rtol=1e-6, atol=1e-6)


def test_k3_kl_weights_leave_padding_out():
    logp = torch.tensor([0.0, math.log(0.5), 3.0])
    ref = torch.tensor([math.log(0.5), 0.0, -4.0])
    kept = k3_kl(logp[:2], ref[:2])
    assert k3_kl(logp, ref, torch.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(kept.item())
    assert k3_kl(logp, ref, torch.zeros(3)).item() == 0.0
