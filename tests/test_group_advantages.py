"""GRPO, Dr.GRPO and GiGPO advantages against numbers computed by hand (rl/group.py)."""

import math

import pytest
import torch

from selu_lightning.rl.group import (
    anchor_advantages,
    discounted_step_returns,
    episode_advantages,
    group_advantages,
    group_normalize,
)

EPS = 1e-6


def test_group_normalize_by_hand():
    # group a: [1, 2, 3] mean 2, unbiased std 1 ; group b: [10, 14] mean 12, std sqrt(8)
    out = group_normalize([1.0, 10.0, 2.0, 14.0, 3.0], ["a", "b", "a", "b", "a"])
    s8 = math.sqrt(8.0)
    assert out.tolist() == pytest.approx([-1 / (1 + EPS), -2 / (s8 + EPS), 0.0, 2 / (s8 + EPS), 1 / (1 + EPS)])
    assert out.dtype == torch.float32
    centred = group_normalize([1.0, 10.0, 2.0, 14.0, 3.0], ["a", "b", "a", "b", "a"], scale=False)
    assert centred.tolist() == pytest.approx([-1.0, -2.0, 0.0, 2.0, 1.0])


def test_zero_variance_and_singleton_groups_get_exactly_zero():
    # 0.1 x 3 / 3 != 0.1 in floating point: a naive (x - mean) / eps would be ~1e-11, not 0
    out = group_normalize([0.1, 0.1, 0.1, 7.0], ["z", "z", "z", "alone"])
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_grpo_episode_advantage_by_hand():
    # group g: episode a (3 steps, return 1), episode b (1 step, return 0), episode c (2 steps, return 2).
    rewards = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    episodes = ["a", "a", "a", "b", "c", "c"]
    groups = ["g"] * 6
    adv = episode_advantages(rewards, episodes, groups)
    # returns [1, 0, 2] (each episode once, not weighted by its length): mean 1, unbiased std 1
    a, b, c = 0.0, -1 / (1 + EPS), 1 / (1 + EPS)
    assert adv.tolist() == pytest.approx([a, a, a, b, c, c])
    # Dr.GRPO: no std division
    dr = episode_advantages(rewards, episodes, groups, scale=False)
    assert dr.tolist() == pytest.approx([0.0, 0.0, 0.0, -1.0, 1.0, 1.0])


def test_grpo_two_groups_one_with_zero_variance():
    # g1: returns 1 and 0 -> mean 0.5, std sqrt(0.5); g2: both returned 2 -> no signal
    rewards = [1.0, 0.0, 2.0, 1.0, 1.0]
    episodes = [0, 1, 2, 3, 3]
    groups = [1, 1, 2, 2, 2]
    adv, stats = group_advantages("grpo", rewards, episodes, groups)
    half = 0.5 / (math.sqrt(0.5) + EPS)
    assert adv.tolist() == pytest.approx([half, -half, 0.0, 0.0, 0.0])
    assert adv[2:].tolist() == [0.0, 0.0, 0.0]
    assert stats.groups == 2 and stats.zero_variance_groups == 1
    assert stats.group_return_std_sum == pytest.approx(math.sqrt(0.5))
    dr, _ = group_advantages("dr_grpo", rewards, episodes, groups)
    assert dr.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0])


def test_discounted_step_returns_by_hand():
    # two interleaved episodes (as a [T, N] buffer read row by row): x = [1, 0, 2], y = [3, 4]
    rewards = [1.0, 3.0, 0.0, 4.0, 2.0]
    episodes = ["x", "y", "x", "y", "x"]
    out = discounted_step_returns(rewards, episodes, gamma=0.5)
    # x: 2 ; 0 + .5*2 = 1 ; 1 + .5*1 = 1.5      y: 4 ; 3 + .5*4 = 5
    assert out.tolist() == pytest.approx([1.5, 5.0, 1.0, 4.0, 2.0])


def test_gigpo_with_an_anchor_state_repeated_within_one_episode():
    """One group, two episodes. Episode a visits s0, s1, s0 again (rewards 0, 0, 1); episode b visits s0, s2
    (rewards 0, 0). gamma 0.5, step weight 0.5, std scaling on."""
    rewards = [0.0, 0.0, 0.0, 0.0, 1.0]
    episodes = ["a", "b", "a", "b", "a"]
    keys = ["s0", "s0", "s1", "s2", "s0"]
    groups = ["g"] * 5
    # returns-to-go: a = [0.25, 0.5, 1.0], b = [0.0, 0.0]
    returns = discounted_step_returns(rewards, episodes, gamma=0.5)
    assert returns.tolist() == pytest.approx([0.25, 0.0, 0.5, 0.0, 1.0])
    # anchor s0 holds a@0 (0.25), b@0 (0.0) and a@2 (1.0): mean 5/12; deviations -1/6, -5/12, 7/12;
    # unbiased var = (1/36 + 25/144 + 49/144) / 2 = 13/48. s1 and s2 are singletons: 0.
    std = math.sqrt(13 / 48)
    step = [(-1 / 6) / (std + EPS), (-5 / 12) / (std + EPS), 0.0, 0.0, (7 / 12) / (std + EPS)]
    assert anchor_advantages(returns, groups, keys).tolist() == pytest.approx(step)
    # episode level: returns a = 1, b = 0 -> +-0.5 / (sqrt(0.5) + eps)
    ep = 0.5 / (math.sqrt(0.5) + EPS)
    episode = [ep, -ep, ep, -ep, ep]
    adv, stats = group_advantages("gigpo", rewards, episodes, groups, keys, gamma=0.5, step_weight=0.5)
    assert adv.tolist() == pytest.approx([e + 0.5 * s for e, s in zip(episode, step)])
    assert (stats.anchor_groups, stats.anchor_steps, stats.shared_anchor_steps) == (3, 5, 3)
    # mean_norm (no std division at either level)
    plain, _ = group_advantages("gigpo", rewards, episodes, groups, keys, gamma=0.5, step_weight=0.5, scale=False)
    expect = [0.5 + 0.5 * (-1 / 6), -0.5 + 0.5 * (-5 / 12), 0.5, -0.5, 0.5 + 0.5 * (7 / 12)]
    assert plain.tolist() == pytest.approx(expect)


def test_anchor_groups_never_span_episode_groups():
    """The same state key in two groups (different starts) are two anchor groups, each a singleton here."""
    out = anchor_advantages([1.0, 5.0], groups=["g1", "g2"], keys=["s", "s"])
    assert out.tolist() == [0.0, 0.0]
    out = anchor_advantages([1.0, 5.0], groups=["g1", "g1"], keys=["s", "s"], scale=False)
    assert out.tolist() == [-2.0, 2.0]


def test_step_weight_zero_is_grpo():
    rewards, episodes, groups, keys = [1.0, 0.0, 0.5, 0.0], [0, 0, 1, 1], [0] * 4, ["s", "t", "s", "t"]
    gigpo, _ = group_advantages("gigpo", rewards, episodes, groups, keys, step_weight=0.0)
    grpo, _ = group_advantages("grpo", rewards, episodes, groups)
    torch.testing.assert_close(gigpo, grpo)


def test_bad_inputs_fail_loudly():
    with pytest.raises(ValueError, match="one length"):
        episode_advantages([1.0, 2.0], [0], [0, 0])
    with pytest.raises(ValueError, match="two groups"):
        episode_advantages([1.0, 2.0], [0, 0], ["g", "h"])
    with pytest.raises(ValueError, match="state key"):
        group_advantages("gigpo", [1.0], [0], [0])
    with pytest.raises(ValueError, match="unknown group algorithm"):
        group_advantages("ppo", [1.0], [0], [0])
