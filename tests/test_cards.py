"""The card games: rule tables (each against RL4VLM's gym-cards code, cited per section), determinism, deal
statistics, the formula evaluator (checked against Python's eval on random formulas), the 24 solver, rendering."""

from __future__ import annotations

import random
import re
import time
import warnings
from fractions import Fraction

import numpy as np
import pytest

from selu_lightning.envs import available_envs, env_class, make_env
from selu_lightning.envs.cards import BlackjackEnv, EZPointsEnv, NumberLineEnv, Points24Env, solve24
from selu_lightning.envs.cards.blackjack import hand_total
from selu_lightning.envs.cards.formula import BLANK, evaluate_formula, exact_value, python_value
from selu_lightning.envs.cards.render import font, wrap_words

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


# ---------------------------------------------------------------------------------------------- helpers


class ScriptedRNG:
    """Stands in for ``env.np_random``: hands out the given draws in order, checking each lies in the range asked."""

    def __init__(self, draws):
        self.draws = list(draws)

    def _next(self, low, high):
        value = self.draws.pop(0)
        assert low <= value < high, (value, low, high)
        return value

    def integers(self, low, high=None, size=None):
        low, high = (0, low) if high is None else (low, high)
        if size is not None:
            return np.array([self._next(low, high) for _ in range(size)])
        return self._next(low, high)

    def random(self):
        return self._next(0.0, 1.0)


def scripted_reset(env, draws):
    env.reset(seed=0)
    env._np_random = ScriptedRNG(draws)
    obs, info = env.reset()
    assert env._np_random.draws == [], "the env drew fewer numbers than scripted"
    return obs, info


# ---------------------------------------------------------------------------------------------- NumberLine
# Reference: gym-cards/gym_cards/envs/numberline.py (NumberLineEnv.reset / step) and VLM_PPO/main.py (success).


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
        (0, 3, "-", -1.0, False, 0),  # bumps the wall at 0: distance unchanged
        (5, 2, "+", -1.0, False, 5),  # bumps the wall at 5
        (1, 3, "right", -1.0, False, 1),  # not left/right: no move, distance unchanged
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
    # Reaching the target on the 10th step terminates instead (the reference truncates only when not done).
    steps = play(nl(0, 1), ["-"] * 9 + ["+"])
    assert steps[-1][:3] == (1.0, True, False) and steps[-1][3]["success"] is False  # return -8


@pytest.mark.parametrize(
    "position, target, actions, episode_return, success",
    [
        (1, 3, ["+", "+"], 1.0, True),
        (3, 1, ["-", "-"], 1.0, True),
        (1, 3, ["-", "+", "+", "+"], 0.0, False),  # reached, but one wasted move: return 0
        (1, 3, ["+", "x", "+"], 0.0, False),
        (0, 5, ["-"] * 10, -10.0, False),  # truncated
    ],
)
def test_numberline_success_is_positive_return(position, target, actions, episode_return, success):
    steps = play(nl(position, target), actions)
    assert sum(s[0] for s in steps) == episode_return
    assert steps[-1][3]["success"] is success and (steps[-1][1] or steps[-1][2])


@pytest.mark.parametrize(
    "drawn, position, target",
    [
        ((2, 4), 2, 4),  # distinct draws are kept
        ((0, 5), 0, 5),
        ((0, 0), 0, 1),  # equal: target -> (target + 1) % 5
        ((3, 3), 3, 4),
        ((4, 4), 4, 0),
        ((5, 5), 5, 1),  # % 5, not % 6
    ],
)
def test_numberline_start_rule(drawn, position, target):
    env = NumberLineEnv()
    obs, _ = scripted_reset(env, drawn)  # position, then target, each from integers(0, 6)
    assert (env.position, env.target) == (position, target)
    assert obs["text"] == f"Target: {target}\nCurrent: {position}"


def test_numberline_start_distribution():
    # Reference rule: P(start s, target g) = 1/36 for g != s, plus 1/36 when g == (s + 1) % 5.
    env, n = NumberLineEnv(), 7200
    counts = {}
    env.reset(seed=0)
    for _ in range(n):
        env.reset()
        counts[(env.position, env.target)] = counts.get((env.position, env.target), 0) + 1
    for s in range(6):
        for g in range(6):
            p = 0.0 if g == s else (2 if g == (s + 1) % 5 else 1) / 36
            expected, sd = n * p, (n * p * (1 - p)) ** 0.5
            assert abs(counts.get((s, g), 0) - expected) <= 4.5 * sd + 1e-9, (s, g, counts.get((s, g)), expected)


def test_numberline_uniform_start_option():
    env, n = NumberLineEnv(start="uniform"), 3000
    counts = {}
    env.reset(seed=0)
    for _ in range(n):
        env.reset()
        counts[(env.position, env.target)] = counts.get((env.position, env.target), 0) + 1
    assert len(counts) == 30 and all(s != g for s, g in counts)
    assert min(counts.values()) > 60 and max(counts.values()) < 145  # expected 100 each
    # the knob changes the draw: (0, 1) is twice as likely as (0, 2) by RL4VLM's rule, equally likely here
    default, seeds = NumberLineEnv(), range(20)
    firsts = [[(e.reset(seed=s), (e.position, e.target))[1] for s in seeds] for e in (default, env)]
    assert firsts[0] != firsts[1]
    with pytest.raises(ValueError, match="start"):
        NumberLineEnv(start="gaussian")


def test_numberline_bad_state_rejected():
    with pytest.raises(ValueError):
        NumberLineEnv().reset(options={"state": {"position": 2, "target": 2}})


# ---------------------------------------------------------------------------------------------- formulas
# Reference: gym-cards/gym_cards/envs/ezpoints.py and points.py, _evaluate_formula: eval("".join(formula)) ==
# target, any exception -> -1. Values below are what Python's eval gives for the joined string.

FORMULA_VALUES = [
    ("( 2 + 3 ) * 4", 20),
    ("8 / ( 3 - 8 / 3 )", 23.99999999999999),  # float rounding, as eval
    ("5 * ( 5 - 1 / 5 )", 24.0),
    ("1 2", 12),  # adjacent numbers join: "12"
    ("10 10", 1010),
    ("1 _ 2", None),  # a blank (space) between digits: SyntaxError
    ("5 + _ 7", 12),  # ... elsewhere it is just whitespace
    ("_ 5 + 7", 12),  # eval strips leading spaces
    ("5 + 7 _", 12),
    ("2 * * 3 * * 2", 512),  # "**" is a right-associative power
    ("2 * _ * 3", None),  # "* *" is not a power
    ("2 * * * 3", None),  # "***" -> "**" "*"
    ("- 2 * * 2", -4),  # unary minus binds looser than **
    ("2 * * - 1", 0.5),
    ("+ + 3", 3),
    ("3 - - 3", 6),
    ("5 + + 7", 12),
    ("3 * + 4", 12),
    ("8 / / 3", 2),  # "//" is floor division
    ("1 5 / 2 / / 2", 3.0),
    ("8 / / / 3", None),
    ("1 / 0", None),  # ZeroDivisionError
    ("0 * * - 1", None),
    ("( )", None),  # an empty tuple: never equal to a number
    ("4 * 6 * 1 * 1 + ( )", None),  # TypeError
    ("( 3 ) ( 4 )", None),  # calling an int: TypeError
    ("4 * 6 ( 1 * 1 )", None),
    ("( 1 + 2", None),
    ("1 + 2 )", None),
    ("", None),
    ("_ _", None),
    ("5 +", None),
    ("0 1", None),  # leading zero in a literal: SyntaxError
    ("0 0", 0),
    ("( - 8 ) * * ( 1 / 3 )", (-8) ** (1 / 3)),  # a complex number, as Python gives
    ("2 * * 1 0 0 0", 2**1000),
    ("10 * * 10 * * 10", None),  # 10 ** 10 ** 10: beyond POWER_BITS_LIMIT (eval: MemoryError or hours)
    ("1 * * 10 * * 10 * * 10", None),
]


def tokens(formula):
    return [BLANK if t == "_" else t for t in formula.split()]


@pytest.mark.parametrize("formula, value", FORMULA_VALUES)
def test_python_value_table(formula, value):
    got = python_value(tokens(formula))
    assert got == value and type(got) is type(value), (formula, got)


@pytest.mark.parametrize(
    "formula, value",
    [
        ("( 2 + 3 ) * 4", 20),
        ("8 / ( 3 - 8 / 3 )", 24),
        ("2 _ + _ 3", 5),
        ("1 / 3", Fraction(1, 3)),
        ("2 + * 3", None),
        ("- 1 + 2", None),
        ("( 1 + 2", None),
        ("1 + 2 )", None),
        ("1 2", None),
        ("4 / ( 1 - 1 )", None),
        ("", None),
    ],
)
def test_exact_value_table(formula, value):
    assert exact_value(tokens(formula)) == value
    assert evaluate_formula(tokens(formula), "exact") == value


def _eval_oracle(source):
    """What RL4VLM's eval gives: a number, or None for an exception or a non-number. Test-only, on our strings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = eval(source)  # noqa: S307 - the oracle; the library never calls eval
        except Exception:
            return None
    return value if isinstance(value, (int, float, complex)) else None


def test_python_value_matches_eval_on_random_formulas():
    rng = random.Random(0)
    alphabet = [*NUMBERS, "+", "-", "*", "/", "(", ")", BLANK]
    checked = valued = 0
    for _ in range(6000):
        toks = [rng.choice(alphabet) for _ in range(rng.randint(0, 8))]
        source = "".join(toks)
        after = source.split("**", 1)[1] if "**" in source else ""
        if source.count("**") > 1 or any(len(run) > 2 for run in re.findall(r"\d+", after)):
            continue  # keep eval's powers small
        expected, got = _eval_oracle(source), python_value(toks)
        assert got == expected and type(got) is type(expected), (source, got, expected)
        checked += 1
        valued += expected is not None
    assert checked > 4000 and valued > 300


def test_evaluate_formula_rejects_unknown_arithmetic():
    with pytest.raises(ValueError, match="arithmetic"):
        evaluate_formula(["1"], "float")
    with pytest.raises(ValueError, match="arithmetic"):
        EZPointsEnv(arithmetic="float")


# ---------------------------------------------------------------------------------------------- EZPoints
# Reference: gym-cards/gym_cards/envs/ezpoints.py (EZPointEnv.step, _is_valid_action, _evaluate_formula,
# _generate_cards) and VLM_PPO/main.py (success: episode return > 0).


def ez(*cards, arithmetic="python"):
    env = EZPointsEnv(arithmetic=arithmetic)
    env.reset(seed=0, options={"state": {"cards": list(cards)}})
    return env


@pytest.mark.parametrize(
    "cards, actions, rewards, end, success",
    [
        ((5, 7), ["5", "+", "7", "="], [0, 0, 0, 10], "terminated", True),
        ((7, 5), ["5", "+", "7", "="], [0, 0, 0, 10], "terminated", True),  # order of play is free
        ((3, 4), ["3", "*", "4", "="], [0, 0, 0, 10], "terminated", True),
        (("K", 2), ["10", "+", "2", "="], [0, 0, 0, 10], "terminated", True),  # K counts 10
        ((6, 6), ["6", "+", "6", "="], [0, 0, 0, 10], "terminated", True),  # both sixes usable
        ((5, 7), ["5", "*", "7", "="], [0, 0, 0, -1], "terminated", False),  # 35
        ((5, 7), ["5", "="], [0, -1], "terminated", False),  # not all cards used
        ((5, 7), ["5", "+", "="], [0, 0, -1], "terminated", False),  # "5+": SyntaxError
        ((5, 7), ["="], [-1], "terminated", False),  # "": SyntaxError
        ((5, 7), ["5", "7", "="], [0, 0, -1], "terminated", False),  # "57"
        (("A", 2), ["1", "2", "="], [0, 0, 10], "terminated", True),  # "12": digits join
        (("A", 2), ["2", "1", "="], [0, 0, -1], "terminated", False),  # "21"
        (("A", 2), ["1", "5", "2", "="], [0, -1, 0, -1], "terminated", False),  # "1 2": SyntaxError
        ((5, 7), ["+", "5", "+", "7", "="], [0, 0, 0, 0, 10], "terminated", True),  # "+5+7"
        ((5, 7), ["5", "+", "+", "7", "="], [0, 0, 0, 0, 10], "terminated", True),  # "5++7"
        ((3, 4), ["3", "*", "+", "4", "="], [0, 0, 0, 0, 10], "terminated", True),  # "3*+4"
        ((3, 4), ["3", "*", "*", "4", "="], [0, 0, 0, 0, -1], "terminated", False),  # 3 ** 4 = 81
        ((5, 7), ["3", "5", "+", "7", "="], [-1, 0, 0, 0, 10], "terminated", True),  # " 5+7": return 9
        ((5, 7), ["5", "3", "+", "7", "="], [0, -1, 0, 0, 10], "terminated", True),  # "5 +7"
        ((5, 7), ["3", "5", "5"], [-1, 0, -1], None, False),  # not in hand / already used
        ((5, 7), ["-", "foo", "12"], [-1, -1, -1], None, False),  # not legal actions: like a number not in hand
        ((5, 7), ["5", "+", "x", "x", "7", "="], [0, 0, -1, -1, 0, 10], "terminated", True),  # 5 tokens: scored
        ((5, 7), ["5", "+", "x", "x", "x", "7", "="], [0, 0, -1, -1, -1, 0, -1], "truncated", False),  # 6: cut
    ],
)
def test_ezpoints_rules(cards, actions, rewards, end, success):
    steps = play(ez(*cards), actions)
    assert [s[0] for s in steps] == rewards
    last = steps[-1]
    assert (last[1], last[2]) == (end == "terminated", end == "truncated")
    assert not any(s[1] or s[2] for s in steps[:-1])
    assert last[3]["success"] is success and last[3]["solved"] is (rewards[-1] == 10)


@pytest.mark.parametrize(
    "cards, actions, python_reward, exact_reward",
    [
        (("A", 2), ["1", "2", "="], 10, -1),  # joined digits count only in RL4VLM's rule
        ((5, 7), ["+", "5", "+", "7", "="], 10, -1),  # unary plus
        ((5, 7), ["5", "+", "7", "="], 10, 10),
    ],
)
def test_ezpoints_arithmetic_option(cards, actions, python_reward, exact_reward):
    assert play(ez(*cards), actions)[-1][0] == python_reward
    assert play(ez(*cards, arithmetic="exact"), actions)[-1][0] == exact_reward


def test_ezpoints_formula_text_and_blank():
    env = ez(5, "K")
    obs, *_ = env.step("5")
    obs, *_ = env.step("+")
    assert obs["text"] == "Cards: 5, K\nFormula: 5+"  # the string RL4VLM evaluates (and shows in its prompt)
    obs, r, _, _, info = env.step("3")
    assert r == -1 and info["formula"] == "5+ " and obs["text"] == "Cards: 5, K\nFormula: 5+ "
    exact = ez(5, "K", arithmetic="exact")
    play(exact, ["5", "+", "3"])
    assert exact._info()["formula"] == "5 + _" and exact._obs()["text"].endswith("Formula: 5 + _")


def test_ezpoints_truncation_at_seventh_step():
    steps = play(ez(5, 7), ["+"] * 7)
    assert [s[0] for s in steps] == [0] * 6 + [-1]
    assert steps[-1][2] and not steps[-1][1] and steps[-1][3]["formula"] == "++++++"


@pytest.mark.parametrize(
    "draws, values",
    [
        # integers(2, 14) for card 1's rank; random() only if its value is in {2, 3, 4, 6}; two suits; random() swap
        ((3, 0.5, 0, 0, 0.9), (3, 4)),  # random() <= 0.5: product partner (the edge counts, as in the reference)
        ((3, 0.5000001, 0, 0, 0.9), (3, 9)),  # else the sum partner
        ((6, 0.2, 0, 0, 0.9), (6, 2)),
        ((6, 0.7, 0, 0, 0.9), (6, 6)),
        ((13, 0, 0, 0.9), (10, 2)),  # K counts 10: no product draw for 10
        ((5, 0, 0, 0.5), (7, 5)),  # random() <= 0.5: swapped
        ((5, 0, 0, 0.51), (5, 7)),
    ],
)
def test_ezpoints_deal_rule(draws, values):
    env = EZPointsEnv()
    scripted_reset(env, draws)
    assert tuple(c.value for c in env.cards) == values


def test_ezpoints_deals_solvable_with_plus_or_times():
    env = EZPointsEnv()
    ranks_seen, products, face_positions = set(), 0, set()
    for seed in range(600):
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
    # P(product-only deal) = P(value in {2, 3, 4, 6}) * 0.5 = 1/6 (a 6 gets 2 or 6): expected 100 of 600
    assert 65 < products < 135


def test_no_formula_leaks_into_next_episode():
    env, fresh = EZPointsEnv(), EZPointsEnv()
    env.reset(seed=3)
    play(env, ["+", "*", "+"])
    obs, info = env.reset(seed=4)
    ref, _ = fresh.reset(seed=4)
    assert info["formula"] == "" and obs["text"].endswith("Formula: ")
    assert obs["text"] == ref["text"] and obs["image"].tobytes() == ref["image"].tobytes()
    assert info["success"] is False and env.episode_return == 0


# ---------------------------------------------------------------------------------------------- Points24
# Reference: gym-cards/gym_cards/envs/points.py (Point24Env.step, _is_valid_action, _evaluate_formula,
# _generate_cards) and VLM_PPO/main.py (success: episode return > 0).


def p24(*cards, arithmetic="python"):
    env = Points24Env(arithmetic=arithmetic)
    _, info = env.reset(seed=0, options={"state": {"cards": list(cards)}})
    return env, info


@pytest.mark.parametrize(
    "cards, solvable, solvable_exact",
    [
        ((1, 1, 1, 1), False, False),
        ((4, 6, 1, 1), True, True),
        ((3, 3, 8, 8), False, True),  # only 8 / (3 - 8 / 3), 23.99999999999999 in floats
        ((1, 5, 5, 5), True, True),  # 5 * (5 - 1 / 5) is exactly 24.0 in floats
        ((1, 1, 1, 2), False, False),
        (("K", "Q", "J", 1), False, False),
        ((10, 10, 4, 4), True, True),
        (("A", 2, 3, 4), True, True),
    ],
)
def test_points24_solvable_flag(cards, solvable, solvable_exact):
    values = [min(c, 10) if isinstance(c, int) else {"A": 1}.get(c, 10) for c in cards]
    for arithmetic, expected in (("python", solvable), ("exact", solvable_exact)):
        _, info = p24(*cards, arithmetic=arithmetic)
        assert info["solvable"] is expected
        solution = solve24(values, arithmetic=arithmetic)
        assert (solution is not None) == expected
        if solution:
            assert evaluate_formula(solution.split(), arithmetic) == 24


def test_points24_unsolvable_fraction():
    env = Points24Env()
    env.reset(seed=0)
    unsolvable = sum(not env.reset()[1]["solvable"] for _ in range(1000))
    assert 0.22 < unsolvable / 1000 < 0.32  # exact over all 13**4 rank tuples: 0.2693 (fractions: 0.2691)


def test_points24_solver_lines_win_in_env():
    env, wins = Points24Env(), 0
    for seed in range(40):
        _, info = env.reset(seed=seed)
        solution = solve24([c.value for c in env.cards])
        assert (solution is not None) == info["solvable"]
        if solution is None:
            continue
        steps = play(env, solution.split() + ["="])
        assert [s[0] for s in steps] == [0.0] * len(solution.split()) + [10.0]
        assert steps[-1][1] and steps[-1][3]["success"] and steps[-1][3]["formula"] == solution.replace(" ", "")
        wins += 1
    assert wins > 20


@pytest.mark.parametrize(
    "cards, formula, reward, exact_reward",
    [
        ((3, 3, 8, 8), "8 / ( 3 - 8 / 3 )", -1, 10),  # 23.99999999999999 != 24
        ((4, 6, 1, 1), "4 * 6 * 1 * 1", 10, 10),
        ((4, 6, 1, 1), "4 * 6 / 1 / 1", 10, 10),  # 24.0 == 24
        ((1, 5, 5, 5), "5 * ( 5 - 1 / 5 )", 10, 10),
        ((4, 6, 1, 1), "4 * 6", -1, -1),  # 24 but two cards unused
        ((1, 2, 2, 1), "1 2 * 2 * 1", 10, -1),  # "12*2*1": digits join
        ((2, 4, 1, 10), "2 4 * 1 * * 10", 10, -1),  # "24*1**10"
        ((8, 3, 3, 3), "8 3 / / 3 - 3", 10, -1),  # "83//3-3" = 27 - 3
        ((4, 6, 1, 1), "- 1 + 1 + 4 * 6", 10, -1),  # unary minus
        ((1, 1, 4, 6), "4 / ( 1 - 1 ) * 6", -1, -1),  # ZeroDivisionError
        ((4, 6, 1, 1), "( 4 * 6 * 1 * 1", -1, -1),  # SyntaxError
        ((4, 6, 1, 1), "4 * 6 * 1 * 1 + ( )", -1, -1),  # TypeError (int + tuple)
        ((4, 6, 1, 1), "4 * 6 ( 1 * 1 )", -1, -1),  # TypeError (calling an int)
        (("K", "Q", 2, 2), "( 10 + 10 ) + 2 + 2", 10, 10),  # face cards are 10
        ((10, 10, 10, 1), "1 * * 10 * * 10 * * 10", -1, -1),  # power guard: never 24, never computed
    ],
)
def test_points24_rewards(cards, formula, reward, exact_reward):
    for arithmetic, expected in (("python", reward), ("exact", exact_reward)):
        env, _ = p24(*cards, arithmetic=arithmetic)
        steps = play(env, formula.split() + ["="])
        assert [s[0] for s in steps[:-1]] == [0.0] * len(formula.split())
        assert steps[-1][0] == expected and steps[-1][1] and steps[-1][3]["success"] == (expected == 10)


@pytest.mark.parametrize("penalties, success", [(9, True), (10, False)])
def test_points24_success_needs_positive_return(penalties, success):
    # Solved after `penalties` rejected numbers: RL4VLM counts success as return > 0, so 10 penalties cancel the +10.
    env, _ = p24(4, 6, 1, 1)
    steps = play(env, ["7"] * penalties + "4 * 6 * 1 * 1".split() + ["="])
    assert steps[-1][0] == 10 and steps[-1][1]  # the blanks are leading spaces: eval still reads 24
    assert steps[-1][3]["solved"] is True and steps[-1][3]["success"] is success
    assert env.episode_return == 10 - penalties


def test_points24_invalid_number_and_length_limit():
    env, _ = p24(4, 6, 1, 1)
    obs, r, te, tr, info = env.step("7")
    assert (r, te, tr, info["formula"]) == (-1.0, False, False, " ")
    assert obs["text"] == "Cards: 4, 6, A, A\nFormula:  "
    env, _ = p24(4, 6, 1, 1)
    steps = play(env, ["("] * 20 + ["="])  # 20 tokens is still allowed: "=" evaluates
    assert steps[-1][1] and not steps[-1][2] and steps[-1][0] == -1
    env, _ = p24(4, 6, 1, 1)
    steps = play(env, ["("] * 21 + ["="])
    assert steps[-1][2] and not steps[-1][1] and steps[-1][0] == -1 and len(env.formula) == 21


def test_points24_long_formula_is_wrapped_inside_the_frame():
    # RL4VLM's formula string has no spaces to break at: the renderer breaks it between characters.
    env, _ = p24(10, 10, 10, 10)
    play(env, "( ( ( 10 + 10 ) * 10 ) / / ( 10 - ( ( ( ( ( ( (".split())
    lines = wrap_words(f"Formula: {env.formula_text}", 22, 276)
    assert "".join(lines) == f"Formula:{env.formula_text}" and len(lines) >= 2
    assert all(font(22).getlength(line) <= 276 for line in lines)


# ---------------------------------------------------------------------------------------------- Blackjack
# Reference: gym-cards/gym_cards/envs/blackjack.py (gymnasium Blackjack-v1 rules, natural=False, sab=False;
# draw_card_with_info) and VLM_PPO/main.py (success: episode return > 0).


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
        (["A", 10], [10, "A"], [], ["stand"], 0.0, 21),  # two naturals: a draw, no bonus
        (["A", 10], [10, 9], [], ["stand"], 1.0, 19),  # a natural wins +1, not 1.5
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


@pytest.mark.parametrize(
    "draws, rank",
    [((1,), 1), ((9,), 9), ((10, 0), 11), ((11, 2), 13), ((13, 1), 12)],  # a value-10 card shows as J, Q or K
)
def test_blackjack_card_draw_rule(draws, rank):
    env = BlackjackEnv()
    env.reset(seed=0)
    env._np_random = ScriptedRNG(draws)
    assert env._draw_rank() == rank and env._np_random.draws == []


def test_blackjack_deals_no_tens_and_faces_evenly():
    env, counts = BlackjackEnv(), {}
    env.reset(seed=0)
    for _ in range(3900):
        rank = env._draw_rank()
        counts[rank] = counts.get(rank, 0) + 1
    assert 10 not in counts and set(counts) == set(range(1, 14)) - {10}
    assert all(230 < counts[r] < 370 for r in range(1, 10))  # 1/13: expected 300
    assert all(330 < counts[r] < 470 for r in (11, 12, 13))  # 4/39: expected 400


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
