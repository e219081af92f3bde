"""Scripted experts for the card games: they win with the real envs, their JSON parses back to their action under
RL4VLM's rule, noise gives about the asked fraction of wrong actions with thoughts that argue for them, and a
run is reproducible from the generator's seed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import selu_lightning.envs.cards  # noqa: F401  (registers the card games)
from selu_lightning.action_spaces.parsing import parse_action
from selu_lightning.envs.base import make_env
from selu_lightning.errors import ConfigError
from selu_lightning.experts import EXPERTS, ExpertStep, expert_for, format_candidate, format_json
from selu_lightning.experts.cards import basic_strategy

GAMES = ["numberline", "ezpoints", "points24", "blackjack"]


def run_episodes(game, n, noise=0.0, seed=0, env_kwargs=None, expert_kwargs=None, policy=None):
    """Play ``n`` seeded episodes; return (final infos, reset infos, [(obs_text, info, step, text)])."""
    env = make_env(game, **(env_kwargs or {}))
    expert = expert_for(game, noise=noise, **(expert_kwargs or {}))
    rng = np.random.default_rng(seed)
    finals, starts, steps = [], [], []
    for episode in range(n):
        obs, info = env.reset(seed=episode)
        starts.append(info)
        done = False
        while not done:
            if policy is None:
                step = expert.act(obs["text"], info, info["legal_actions"], rng)
                steps.append((obs["text"], info, step, format_json(step, expert.fields)))
                action = step.action
            else:
                action = policy(rng, info["legal_actions"])
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        finals.append(info)
    return finals, starts, steps


def test_numberline_always_succeeds():
    finals, _, steps = run_episodes("numberline", 200)
    assert all(info["success"] for info in finals)
    assert all(parse_action(text, info["legal_actions"]) == step.action for _, info, step, text in steps)


def test_numberline_text_format():
    env, expert = make_env("numberline"), expert_for("numberline")
    obs, info = env.reset(options={"state": {"position": 1, "target": 3}})
    step = expert.act(obs["text"], info, info["legal_actions"], np.random.default_rng(0))
    assert json.loads(format_json(step, expert.fields)) == {
        "current number": "1",
        "target number": "3",
        "thoughts": "The current number is 1 and the target is 3. 1 is less than 3, so I should increase the "
        "current number.",
        "action": "+",
    }


@pytest.mark.parametrize("arithmetic", ["python", "exact"])
def test_ezpoints_solves_every_deal(arithmetic):
    finals, _, steps = run_episodes("ezpoints", 200, env_kwargs={"arithmetic": arithmetic},
                                    expert_kwargs={"arithmetic": arithmetic})
    assert all(info["solved"] and info["success"] for info in finals)  # every EZPoints deal is solvable
    assert all(parse_action(text, info["legal_actions"]) == step.action for _, info, step, text in steps)
    assert all(json.loads(text)["cards"] == step.fields["cards"] for _, _, step, text in steps)


def test_points24_solves_every_solvable_deal():
    finals, starts, steps = run_episodes("points24", 200)
    solvable = [s["solvable"] for s in starts]
    assert 100 < sum(solvable) < 200  # about 73% of deals are solvable
    assert [f["solved"] for f in finals] == solvable  # each solvable one solved, and no other
    assert all(parse_action(text, info["legal_actions"]) == step.action for _, info, step, text in steps)
    # an unsolvable deal is ended at once with "="
    first_steps = [step for text, _, step, _ in steps if text.endswith("Formula: ")]
    assert [s.action == "=" for s in first_steps] == [not s for s in solvable]


def test_points24_exact_arithmetic_solves_3388():
    env = make_env("points24", arithmetic="exact")
    expert = expert_for("points24", arithmetic="exact")
    obs, info = env.reset(options={"state": {"cards": [3, 3, 8, 8]}})
    rng = np.random.default_rng(0)
    done = False
    while not done:
        step = expert.act(obs["text"], info, info["legal_actions"], rng)
        obs, _, terminated, truncated, info = env.step(step.action)
        done = terminated or truncated
    assert info["solved"] and info["formula"] == "8 / ( 3 - ( 8 / 3 ) )"


def test_points24_replans_after_a_detour():
    env, expert = make_env("points24"), expert_for("points24")
    obs, info = env.reset(options={"state": {"cards": [4, 10, 9, 7]}})
    first = expert.act(obs["text"], info, info["legal_actions"], np.random.default_rng(0))
    assert first.thoughts.count("4*(7+(9-10))") == 1  # the plan from scratch: the env's solve24 formula
    # "4*(9" leaves that plan, but 4*(9+7-10) = 24 still starts this way: the expert follows that one
    for token in ["4", "*", "(", "9"]:
        obs, _, _, _, info = env.step(token)
    rng = np.random.default_rng(0)
    step = expert.act(obs["text"], info, info["legal_actions"], rng)
    assert step.action in {"+", "-"} and step.correct
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(expert.act(obs["text"], info, info["legal_actions"], rng).action)
        done = terminated or truncated
    assert info["solved"]
    # after a blank (a number not in hand) nothing can be completed: the expert stops with "="
    obs, info = env.reset(options={"state": {"cards": [4, 10, 9, 7]}})
    obs, _, _, _, info = env.step("6")
    step = expert.act(obs["text"], info, info["legal_actions"], np.random.default_rng(0))
    assert step.action == "=" and "No formula that starts this way" in step.thoughts


def test_blackjack_basic_strategy_beats_random():
    n = 1000
    expert_finals, _, steps = run_episodes("blackjack", n)
    random_finals, _, _ = run_episodes("blackjack", n, policy=lambda rng, legal: legal[int(rng.integers(len(legal)))])
    expert_rate = np.mean([f["success"] for f in expert_finals])
    random_rate = np.mean([f["success"] for f in random_finals])
    # measured: basic strategy 0.44 (3000 deals; the optimal policy wins about 43%), random 0.29
    assert 0.39 < expert_rate < 0.49
    assert expert_rate > random_rate + 0.08
    assert all(parse_action(text, info["legal_actions"]) == step.action for _, info, step, text in steps)


def test_blackjack_strategy_table():
    assert basic_strategy(11, False, 11) == "hit"
    assert basic_strategy(12, False, 3) == "hit" and basic_strategy(12, False, 4) == "stand"
    assert basic_strategy(16, False, 6) == "stand" and basic_strategy(16, False, 7) == "hit"
    assert basic_strategy(17, False, 11) == "stand"
    assert basic_strategy(17, True, 2) == "hit"
    assert basic_strategy(18, True, 8) == "stand" and basic_strategy(18, True, 9) == "hit"
    assert basic_strategy(19, True, 11) == "stand"
    expert = expert_for("blackjack")
    state = expert.read("Dealer shows: K\nYour cards: A, 7 (total 18)", {})
    assert state.soft and state.total == 18
    assert expert.best(state, ["stand", "hit"]).action == "hit"


def argues_for(game: str, step: ExpertStep) -> bool:
    """The conclusion of the thoughts names the step's action."""
    t = step.thoughts
    if game == "numberline":
        return ("increase" in t) == (step.action == "+") and ("decrease" in t) == (step.action == "-")
    if game == "blackjack":
        return t.endswith("I hit.") if step.action == "hit" else t.endswith("I stand.") or t.endswith("and stand.")
    return f"'{step.action}'" in t.split(". ")[-1] or (step.action == "=" and "finish with '='" in t)


@pytest.mark.parametrize("game", GAMES)
def test_noise_gives_wrong_actions_that_the_thoughts_argue_for(game):
    p = 0.3
    _, _, steps = run_episodes(game, 150, noise=p, seed=1)
    clean = expert_for(game)
    wrong = [not step.correct for _, _, step, _ in steps]
    n = len(steps)
    assert abs(np.mean(wrong) - p) < 4 * math.sqrt(p * (1 - p) / n), (np.mean(wrong), n)
    for obs_text, info, step, text in steps:
        right = clean.act(obs_text, info, info["legal_actions"], np.random.default_rng(0)).action
        assert (step.action != right) == (not step.correct)
        assert step.action in info["legal_actions"]
        assert parse_action(text, info["legal_actions"]) == step.action
        assert argues_for(game, step), step


@pytest.mark.parametrize("game", GAMES)
def test_noise_zero_is_always_correct_and_runs_are_reproducible(game):
    _, _, steps = run_episodes(game, 20, noise=0.0)
    assert all(step.correct and argues_for(game, step) for _, _, step, _ in steps)
    a = [text for *_, text in run_episodes(game, 20, noise=0.5, seed=3)[2]]
    b = [text for *_, text in run_episodes(game, 20, noise=0.5, seed=3)[2]]
    c = [text for *_, text in run_episodes(game, 20, noise=0.5, seed=4)[2]]
    assert a == b and a != c


def test_noise_knob_changes_outcomes():
    clean, _, _ = run_episodes("numberline", 100, noise=0.0)
    noisy, _, _ = run_episodes("numberline", 100, noise=0.5)
    assert np.mean([f["success"] for f in noisy]) < np.mean([f["success"] for f in clean]) - 0.3


def test_formats_and_registry():
    step = ExpertStep("+", "go up", {"current number": "1", "target number": "3"})
    assert format_candidate(step) == "+"
    assert list(json.loads(format_json(step))) == ["current number", "target number", "thoughts", "action"]
    assert json.loads(format_json(step, ["thoughts", "action"])) == {"thoughts": "go up", "action": "+"}
    with pytest.raises(ValueError, match="last field"):
        format_json(step, ["action", "thoughts"])
    with pytest.raises(ValueError, match="no field"):
        format_json(step, ["cards", "thoughts", "action"])
    tricky = ExpertStep("+", 'not "action": "-"', {})
    assert parse_action(format_json(tricky), ["+", "-"]) == "+"  # quotes in values are escaped
    with pytest.raises(ConfigError):
        expert_for("ai2thor")
    with pytest.raises(ConfigError):
        expert_for("numberline", noise=1.5)
    with pytest.raises(ConfigError):
        expert_for("points24", arithmetic="float")
    assert set(EXPERTS) == {*GAMES, "alfworld", "babyai", "virtualhome"}  # household: tests/test_experts_household.py
    with pytest.raises(ValueError, match="text_state=True"):
        expert_for("numberline").act("", {"legal_actions": ["+", "-"]}, ["+", "-"], np.random.default_rng(0))


@pytest.mark.parametrize("game", GAMES)
def test_candidate_strings_are_legal(game):
    env, expert = make_env(game), expert_for(game, noise=0.5)
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=0)
    step = expert.act(obs["text"], info, info["legal_actions"], rng)
    assert format_candidate(step) in info["legal_actions"]
