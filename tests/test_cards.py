"""The card games: rule tables, determinism, deal statistics, the 24 solver, registry and rendering."""

from __future__ import annotations

import random
import time
from fractions import Fraction

import numpy as np
import pytest

from selu_lightning.envs import available_envs, env_class, make_env
from selu_lightning.envs.cards import BlackjackEnv, EZPointsEnv, NumberLineEnv, Points24Env, solve24
from selu_lightning.envs.cards.blackjack import hand_total
from selu_lightning.envs.cards.ezpoints import evaluate_formula

GAMES = ["numberline", "ezpoints", "points24", "blackjack"]
NUMBERS = [str(n) for n in range(1, 11)]
LEGAL = {
    "numberline": ["+", "-"],
    "ezpoints": NUMBERS + ["+", "*", "="],
    "points24": NUMBERS + ["+", "-", "*", "/", "(", ")", "="],
    "blackjack": ["stand", "hit"],
}


def play(env, actions):
    """Step through ``actions``; return the list of (reward, terminated, truncated, info)."""
    out = []
    for a in actions:
        _, r, te, tr, info = env.step(a)
        out.append((r, te, tr, info))
    return out


# ---------------------------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("name", GAMES)
def test_obs_and_info_contract(name):
    env = make_env(name)
    obs, info = env.reset(seed=0)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (300, 300, 3)
    assert obs["text"] and isinstance(obs["text"], str)
    assert type(env).task_description
    for _ in range(3):
        assert set(info) >= {"legal_actions", "goal", "success"}
        assert info["legal_actions"] == LEGAL[name]
        assert isinstance(info["success"], bool) and info["goal"].endswith(".")
        assert np.array_equal(env.render(), obs["image"])
        obs, r, te, tr, info = env.step(info["legal_actions"][0])
        assert isinstance(r, float)
        if te or tr:
            break


@pytest.mark.parametrize("name", GAMES)
def test_same_seed_same_episode_and_pixels(name):
    a, b = make_env(name), make_env(name)
    random.seed(1)
    np.random.seed(1)
    obs_a, _ = a.reset(seed=123)
    random.seed(2)  # global RNGs must play no part
    np.random.seed(2)
    obs_b, _ = b.reset(seed=123)
    assert obs_a["text"] == obs_b["text"] and obs_a["image"].tobytes() == obs_b["image"].tobytes()
    legal = a.reset(seed=123)[1]["legal_actions"]
    b.reset(seed=123)
    for i in range(6):
        sa, sb = a.step(legal[i % len(legal)]), b.step(legal[i % len(legal)])
        assert sa[0]["text"] == sb[0]["text"] and sa[0]["image"].tobytes() == sb[0]["image"].tobytes()
        assert sa[1:4] == sb[1:4]
        if sa[2] or sa[3]:
            break
    # Unseeded resets continue the seeded stream identically too.
    assert a.reset()[0]["text"] == b.reset()[0]["text"]


@pytest.mark.parametrize("name", GAMES)
def test_different_seeds_differ(name):
    env = make_env(name)
    texts, images = set(), set()
    for seed in range(8):
        obs, _ = env.reset(seed=seed)
        texts.add(obs["text"])
        images.add(obs["image"].tobytes())
    assert len(texts) > 1 and len(images) > 1


@pytest.mark.parametrize("name", GAMES)
def test_text_state_off_and_image_size(name):
    on, off, small = make_env(name), make_env(name, text_state=False), make_env(name, image_size=224)
    obs_on, _ = on.reset(seed=5)
    obs_off, _ = off.reset(seed=5)
    obs_small, _ = small.reset(seed=5)
    assert obs_off["text"] == "" and obs_on["text"] != ""
    assert obs_off["image"].tobytes() == obs_on["image"].tobytes()
    assert obs_small["image"].shape == (224, 224, 3) and obs_small["image"].dtype == np.uint8


@pytest.mark.parametrize("name", GAMES)
def test_step_after_end_raises(name):
    env = make_env(name)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("+")
    _, info = env.reset(seed=0)
    done = False
    for _ in range(30):
        _, _, te, tr, _ = env.step("not-an-action")
        done = te or tr
        if done:
            break
    assert done
    with pytest.raises(RuntimeError, match="reset"):
        env.step(info["legal_actions"][0])


@pytest.mark.parametrize("name", GAMES)
def test_step_is_cheap(name):
    env = make_env(name)
    _, info = env.reset(seed=0)
    legal, n, start = info["legal_actions"], 0, time.perf_counter()
    for i in range(300):
        _, _, te, tr, _ = env.step(legal[i % len(legal)])
        n += 1
        if te or tr:
            env.reset()
            n += 1
    assert (time.perf_counter() - start) / n < 5e-3  # ~0.4 ms measured; loose for loaded machines


def test_registry():
    assert set(GAMES) <= set(available_envs())
    assert isinstance(make_env("numberline"), NumberLineEnv)
    assert env_class("points24") is Points24Env
    with pytest.raises(ValueError, match="numberline"):
        make_env("numberlin")


# ---------------------------------------------------------------------------------------------- NumberLine


def nl(position, target):
    env = NumberLineEnv()
    env.reset(seed=0, options={"state": {"position": position, "target": target}})
    return env


@pytest.mark.parametrize(
    "position, target, action, reward, terminated, new_position",
    [
        (1, 3, "+", 0.0, False, 2),  # closer
        (2, 3, "+", 1.0, True, 3),  # reached
        (4, 3, "-", 1.0, True, 3),
        (1, 3, "-", -1.0, False, 0),  # away
        (0, 3, "-", -1.0, False, 0),  # bumps the wall at 0
        (5, 2, "+", -1.0, False, 5),  # bumps the wall at 5
        (1, 3, "right", -1.0, False, 1),  # illegal string: penalty, no move
        (1, 3, " +", -1.0, False, 1),  # exact match only
    ],
)
def test_numberline_rewards(position, target, action, reward, terminated, new_position):
    env = nl(position, target)
    obs, r, te, tr, _ = env.step(action)
    assert (r, te, tr, env.position) == (reward, terminated, False, new_position)
    assert obs["text"] == f"Target: {target}\nCurrent: {new_position}"


def test_numberline_truncates_after_10_steps():
    env = nl(0, 5)
    steps = play(env, ["-"] * 10)
    assert [s[0] for s in steps] == [-1.0] * 10
    assert [s[2] for s in steps] == [False] * 9 + [True] and not any(s[1] for s in steps)
    # Illegal strings count as steps too.
    steps = play(nl(0, 5), ["?"] * 10)
    assert steps[-1][2] and not steps[-2][2]


def test_numberline_success_needs_no_wasted_move():
    assert play(nl(1, 3), ["+", "+"])[-1][3]["success"] is True
    wasted = play(nl(1, 3), ["-", "+", "+", "+"])
    assert wasted[-1][1] and wasted[-1][3]["success"] is False  # reached, return 0


def test_numberline_start_target_uniform_distinct():
    env = NumberLineEnv()
    pairs = {}
    for seed in range(1500):
        env.reset(seed=seed)
        assert env.position != env.target and 0 <= env.position <= 5 and 0 <= env.target <= 5
        pairs[(env.position, env.target)] = pairs.get((env.position, env.target), 0) + 1
    assert len(pairs) == 30 and min(pairs.values()) > 25 and max(pairs.values()) < 80  # expected 50 each


def test_numberline_bad_state_rejected():
    with pytest.raises(ValueError):
        NumberLineEnv().reset(options={"state": {"position": 2, "target": 2}})


# ---------------------------------------------------------------------------------------------- EZPoints


def ez(*cards):
    env = EZPointsEnv()
    env.reset(seed=0, options={"state": {"cards": list(cards)}})
    return env


@pytest.mark.parametrize(
    "cards, actions, rewards, end",
    [
        ((5, 7), ["5", "+", "7", "="], [0, 0, 0, 10], "terminated"),
        ((7, 5), ["5", "+", "7", "="], [0, 0, 0, 10], "terminated"),  # order of play is free
        ((3, 4), ["3", "*", "4", "="], [0, 0, 0, 10], "terminated"),
        (("K", 2), ["10", "+", "2", "="], [0, 0, 0, 10], "terminated"),  # K counts 10
        ((6, 6), ["6", "+", "6", "="], [0, 0, 0, 10], "terminated"),  # both sixes usable
        ((5, 7), ["5", "*", "7", "="], [0, 0, 0, -1], "terminated"),  # wrong value
        ((5, 7), ["5", "="], [0, -1], "terminated"),  # not all cards used
        ((5, 7), ["5", "+", "="], [0, 0, -1], "terminated"),  # incomplete formula
        ((5, 7), ["="], [-1], "terminated"),  # empty formula
        ((5, 7), ["5", "7", "="], [0, 0, -1], "terminated"),  # adjacent numbers do not merge
        ((5, 7), ["3", "5", "5"], [-1, 0, -1], None),  # not in hand / already used
        ((5, 7), ["-", "foo", "12"], [-1, -1, -1], None),  # illegal strings: like a number not in hand
        ((5, 7), ["5", "+", "x", "x", "7", "="], [0, 0, -1, -1, 0, 10], "terminated"),  # blanks ignored, len 5 ok
        ((5, 7), ["5", "+", "x", "x", "x", "7", "="], [0, 0, -1, -1, -1, 0, -1], "truncated"),  # len 6: cut
    ],
)
def test_ezpoints_rewards(cards, actions, rewards, end):
    steps = play(ez(*cards), actions)
    assert [s[0] for s in steps] == rewards
    last = steps[-1]
    assert (last[1], last[2]) == (end == "terminated", end == "truncated")
    assert not any(s[1] or s[2] for s in steps[:-1])
    assert last[3]["success"] == (rewards[-1] == 10)


def test_ezpoints_formula_text_and_blank():
    env = ez(5, "K")
    obs, *_ = env.step("5")
    obs, *_ = env.step("+")
    assert obs["text"] == "Cards: 5, K\nFormula: 5 +"
    obs, r, _, _, info = env.step("3")
    assert r == -1 and info["formula"] == "5 + _" and obs["text"].endswith("Formula: 5 + _")


def test_ezpoints_truncation_at_seventh_step():
    steps = play(ez(5, 7), ["+"] * 7)
    assert [s[0] for s in steps] == [0] * 6 + [-1]
    assert steps[-1][2] and not steps[-1][1] and steps[-1][3]["formula"] == "+ + + + + +"


def test_ezpoints_deals_solvable_with_plus_or_times():
    env = EZPointsEnv()
    ranks_seen, products, face_positions = set(), 0, set()
    for seed in range(400):
        env.reset(seed=seed)
        a, b = (c.value for c in env.cards)
        assert a + b == 12 or a * b == 12
        products += a + b != 12
        ranks_seen.update(c.rank for c in env.cards)
        face_positions.update(i for i, c in enumerate(env.cards) if c.rank > 10)
        if seed < 100:  # every deal has a winning line through the env itself
            op = "+" if a + b == 12 else "*"
            assert play(env, [str(a), op, str(b), "="])[-1][0] == 10
    assert ranks_seen == set(range(2, 14))
    assert face_positions == {0, 1}  # only card 1 can be J/Q/K, so this shows the swap happens
    # P(product-only deal) = P(value in {2, 3, 4}) * 0.5 = 0.125 (with a 6, 6 * 2 and 6 + 6 both count as sums)
    assert 25 < products < 80  # expected 50 of 400


def test_no_formula_leaks_into_next_episode():
    env, fresh = EZPointsEnv(), EZPointsEnv()
    env.reset(seed=3)
    play(env, ["+", "*", "+"])
    obs, info = env.reset(seed=4)
    ref, _ = fresh.reset(seed=4)
    assert info["formula"] == "" and obs["text"].endswith("Formula:")
    assert obs["text"] == ref["text"] and obs["image"].tobytes() == ref["image"].tobytes()


# ---------------------------------------------------------------------------------------------- Points24


def p24(*cards):
    env = Points24Env()
    _, info = env.reset(seed=0, options={"state": {"cards": list(cards)}})
    return env, info


def test_evaluate_formula():
    assert evaluate_formula("( 2 + 3 ) * 4".split()) == 20
    assert evaluate_formula("8 / ( 3 - 8 / 3 )".split()) == 24  # 23.999999999999996 in floats
    assert evaluate_formula("2 _ + _ 3".split()) == 5
    assert evaluate_formula("1 / 3".split()) == Fraction(1, 3)
    for bad in ["2 + * 3", "- 1 + 2", "( 1 + 2", "1 + 2 )", "1 2", "4 / ( 1 - 1 )", ""]:
        assert evaluate_formula(bad.split()) is None, bad


@pytest.mark.parametrize(
    "cards, solvable",
    [((1, 1, 1, 1), False), ((4, 6, 1, 1), True), ((3, 3, 8, 8), True), ((1, 5, 5, 5), True),
     ((1, 1, 1, 2), False), (("K", "Q", "J", 1), False), ((10, 10, 4, 4), True), (("A", 2, 3, 4), True)],
)
def test_points24_solvable_flag(cards, solvable):
    _, info = p24(*cards)
    assert info["solvable"] is solvable
    values = [min(c, 10) if isinstance(c, int) else {"A": 1}.get(c, 10) for c in cards]
    solution = solve24(values)
    assert (solution is not None) == solvable
    if solution:
        assert evaluate_formula(solution.split()) == 24


def test_points24_unsolvable_fraction():
    env = Points24Env()
    env.reset(seed=0)
    unsolvable = sum(not env.reset()[1]["solvable"] for _ in range(1000))
    assert 0.22 < unsolvable / 1000 < 0.32  # exact over all 13**4 rank tuples: 0.269


def test_points24_solver_lines_win_in_env():
    env, wins = Points24Env(), 0
    for seed in range(40):
        _, info = env.reset(seed=seed)
        solution = solve24([c.value for c in env.cards])
        if solution is None:
            continue
        steps = play(env, solution.split() + ["="])
        assert [s[0] for s in steps] == [0.0] * len(solution.split()) + [10.0]
        assert steps[-1][1] and steps[-1][3]["success"] and steps[-1][3]["formula"] == solution
        wins += 1
    assert wins > 20


@pytest.mark.parametrize(
    "cards, formula, reward",
    [
        ((3, 3, 8, 8), "8 / ( 3 - 8 / 3 )", 10),  # exact division
        ((4, 6, 1, 1), "4 * 6 * 1 * 1", 10),
        ((4, 6, 1, 1), "4 * 6", -1),  # 24 but two cards unused
        ((1, 2, 2, 1), "1 2 * 2 * 1", -1),  # no "12" by concatenation
        ((1, 1, 4, 6), "4 / ( 1 - 1 ) * 6", -1),  # division by zero
        ((4, 6, 1, 1), "( 4 * 6 * 1 * 1", -1),  # unbalanced
        (("K", "Q", 2, 2), "( 10 + 10 ) + 2 + 2", 10),  # face cards are 10
    ],
)
def test_points24_rewards(cards, formula, reward):
    env, _ = p24(*cards)
    steps = play(env, formula.split() + ["="])
    assert [s[0] for s in steps[:-1]] == [0.0] * len(formula.split())
    assert steps[-1][0] == reward and steps[-1][1] and steps[-1][3]["success"] == (reward == 10)


def test_points24_invalid_number_and_length_limit():
    env, _ = p24(4, 6, 1, 1)
    obs, r, te, tr, info = env.step("7")
    assert (r, te, tr, info["formula"]) == (-1.0, False, False, "_")
    assert obs["text"] == "Cards: 4, 6, A, A\nFormula: _"
    env, _ = p24(4, 6, 1, 1)
    steps = play(env, ["("] * 20 + ["="])  # 20 tokens is still allowed: "=" evaluates
    assert steps[-1][1] and not steps[-1][2] and steps[-1][0] == -1
    env, _ = p24(4, 6, 1, 1)
    steps = play(env, ["("] * 21 + ["="])
    assert steps[-1][2] and not steps[-1][1] and steps[-1][0] == -1 and len(env.formula) == 21


# ---------------------------------------------------------------------------------------------- Blackjack


def bj(player, dealer, deck=()):
    env = BlackjackEnv()
    env.reset(seed=0, options={"state": {"player": player, "dealer": dealer, "deck": list(deck)}})
    return env


@pytest.mark.parametrize(
    "player, dealer, deck, actions, reward, dealer_total",
    [
        ([10, "K"], [6, 10], [9], ["stand"], 1.0, 25),  # stand on 20, dealer busts
        ([10, 8], [10, 7], [5], ["stand"], 1.0, 17),  # dealer stands on 17
        ([10, 7], ["A", 6], [5], ["stand"], 0.0, 17),  # ...including soft 17: tie
        ([10, 10], [10, 2], [4, 5], ["stand"], -1.0, 21),  # dealer hits twice to 21
        ([10, 6], [10, 7], ["K"], ["hit"], -1.0, 17),  # player busts
        ([10, 9], [10, 8], [], ["split"], -1.0, 18),  # illegal string: forfeit
    ],
)
def test_blackjack_rules(player, dealer, deck, actions, reward, dealer_total):
    env = bj(player, dealer, deck)
    steps = play(env, actions)
    r, te, tr, info = steps[-1]
    assert (r, te, tr) == (reward, True, False)
    assert info["success"] == (reward == 1.0)
    assert hand_total(env.dealer) == dealer_total


def test_blackjack_soft_ace_drops_to_one():
    env = bj(["A", 5], [10, 7], [10, 4])
    assert hand_total(env.player) == 16
    _, r, te, _, _ = env.step("hit")
    assert (r, te, hand_total(env.player)) == (0.0, False, 16)  # A + 5 + 10: the ace now counts 1
    _, r, te, _, _ = env.step("hit")
    assert (r, te, hand_total(env.player)) == (0.0, False, 20)
    _, r, te, _, info = env.step("stand")  # dealer 17 vs 20
    assert (r, te, info["success"]) == (1.0, True, True)


def test_blackjack_text():
    env = BlackjackEnv()
    obs, _ = env.reset(seed=0, options={"state": {"player": [5, "K"], "dealer": [7, 10], "deck": [5]}})
    assert obs["text"] == "Dealer shows: 7\nYour cards: 5, K (total 15)"
    obs, *_ = env.step("stand")
    assert obs["text"] == "Dealer has: 7, 10 (total 17)\nYour cards: 5, K (total 15)"
    obs, _ = env.reset(options={"state": {"player": ["A", 5], "dealer": [7, 10]}})
    assert obs["text"].endswith("(total 16)")


def test_blackjack_hides_hole_card_until_the_end():
    a, b = bj([10, 9], [7, 2]), bj([10, 9], [7, 10])
    assert a.render().tobytes() == b.render().tobytes()  # only the up-card shows
    a.step("stand")
    b.step("stand")
    assert a.render().tobytes() != b.render().tobytes()


@pytest.mark.parametrize(
    "policy, mean_reward, win_rate",
    # Reference numbers: gymnasium Blackjack-v1 (natural=False), 50k episodes each.
    [("random", -0.398, 0.279), ("stand", -0.188, 0.380)],
)
def test_blackjack_statistics_match_gymnasium(policy, mean_reward, win_rate):
    env, rng, rewards = BlackjackEnv(), np.random.default_rng(0), []
    env.reset(seed=11)
    for _ in range(1000):
        done = False
        while not done:
            hit = policy == "random" and rng.random() < 0.5
            _, r, te, tr, info = env.step("hit" if hit else "stand")
            done = te or tr
        assert info["success"] == (r == 1.0)
        rewards.append(r)
        env.reset()
    rewards = np.array(rewards)
    assert abs(rewards.mean() - mean_reward) < 0.09
    assert abs((rewards == 1).mean() - win_rate) < 0.045
