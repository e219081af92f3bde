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
