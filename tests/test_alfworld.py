"""ALFWorld env on the real TextWorld engine: expert plans win, the RL4VLM reward, seeding, generated games."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

if importlib.util.find_spec("alfworld") is None or importlib.util.find_spec("textworld") is None:
    pytest.skip("needs `pip install alfworld==0.4.2 textworld==1.7.0`", allow_module_level=True)

from selu_lightning.envs import make_env  # noqa: E402
from selu_lightning.envs.alfworld import SHIPPED_TASKS, AlfWorldEnv, GoalProgress  # noqa: E402
from selu_lightning.envs.alfworld_tasks import GOAL_TYPES, domain_and_grammar, generate_tasks  # noqa: E402

STATE_CHANGE = ("pick_clean_then_place_in_recep", "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep")


@pytest.fixture(scope="module")
def env():
    env = AlfWorldEnv()
    yield env
    env.close()


def task_types(split: str) -> list[str]:
    return [json.loads(p.read_text())["selu_task"]["goal_type"] for p in sorted((SHIPPED_TASKS / split).glob("*"))]


def play(env: AlfWorldEnv, commands: list[str]):
    steps = [env.step(c) for c in commands]
    return steps


def test_shipped_games_cover_all_six_task_types_in_both_splits():
    for split in ("train", "eval"):
        assert set(task_types(split)) == set(GOAL_TYPES), split
    size = sum(p.stat().st_size for p in SHIPPED_TASKS.rglob("*.tw-pddl"))
    assert size < 1_000_000
    # Held-out games use floor plans no train game uses.
    scenes = {s: {json.loads(p.read_text())["selu_task"]["scene"] for p in (SHIPPED_TASKS / s).glob("*")}
              for s in ("train", "eval")}  # fmt: skip
    assert not scenes["train"] & scenes["eval"]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_expert_plan_wins_every_shipped_game_with_the_big_reward(split):
    env = make_env("alfworld", split=split)  # through the registry
    try:
        for task in range(len(env.tasks)):
            obs, info = env.reset(seed=0, options={"task": task})
            plan = info["expert_plan"]
            assert plan and not info["success"] and info["goal_conditions"] < 1
            assert info["goal"] and info["goal"] in obs["text"]
            *middle, (obs, reward, terminated, truncated, last) = play(env, plan)
            assert all(not (t or tr) for _, _, t, tr, _ in middle)
            assert terminated and not truncated and last["success"]
            assert reward == pytest.approx(51.0)  # 50 for winning + every goal condition met
            assert last["goal_conditions"] == 1.0 and last["expert_plan"] == []
            assert obs["image"].shape == (300, 300, 3) and obs["image"].dtype == np.uint8
    finally:
        env.close()


def test_inadmissible_command_costs_one_and_changes_nothing(env):
    obs, info = env.reset(seed=0, options={"task": task_types("train").index("pick_heat_then_place_in_recep")})
    plan = info["expert_plan"]
    obs, reward, *_ = env.step(plan[0])
    obs, reward, *_, info = env.step(plan[1])  # holding the object: the state has some structure
    for bad in ["dance", "go to the moon", "", plan[-1] + " please"]:
        after, reward, terminated, truncated, info2 = env.step(bad)
        assert reward == pytest.approx(info["goal_conditions"] - 1.0)
        assert after["text"] == "Nothing happens." and not info2["admissible"]
        assert np.array_equal(after["image"], obs["image"])
        assert info2["legal_actions"] == info["legal_actions"] and info2["expert_plan"] == info["expert_plan"]
        assert info2["goal_conditions"] == info["goal_conditions"] and not terminated and not truncated
    # The game goes on exactly where it was: the rest of the plan still wins.
    *_, (_, reward, terminated, _, last) = play(env, plan[2:])
    assert terminated and last["success"] and reward == pytest.approx(51.0)


def test_whitespace_around_an_admissible_command_is_ignored(env):
    obs, info = env.reset(seed=0, options={"task": 0})
    _, reward, *_, info2 = env.step("  " + info["expert_plan"][0] + "\n")
    assert info2["admissible"] and reward >= 0


@pytest.mark.parametrize("goal_type", [*STATE_CHANGE, "pick_two_obj_and_place", "look_at_obj_in_light"])
def test_goal_condition_fraction_rises_along_the_expert_plan(env, goal_type):
    obs, info = env.reset(seed=0, options={"task": task_types("train").index(goal_type)})
    fractions = [info["goal_conditions"]]
    for command in info["expert_plan"]:
        _, reward, terminated, _, info = env.step(command)
        fractions.append(info["goal_conditions"])
        # The per-step reward is exactly RL4VLM's: 50 * won + fraction met (every command here is admissible).
        assert reward == pytest.approx(50.0 * info["success"] + info["goal_conditions"])
        assert (info["goal_conditions"] == 1.0) == info["success"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(set(fractions)) >= 3  # at least two separate conditions got met on the way
    if goal_type != "look_at_obj_in_light":
        assert fractions[0] == 0.0
    else:
        assert fractions[0] == 0.25  # the lamp already stands in a receptacle (see GoalProgress)


def test_goal_progress_counts_conditions_of_the_best_binding():
    domain, _ = domain_and_grammar()
    problem = """(define (problem p) (:domain alfred)
      (:objects agent1 - agent a1 a2 a3 - object r1 r2 - receptacle AppleType - otype DrawerType - rtype)
      (:init) (:goal (and (exists (?r - receptacle) (exists (?o1 - object) (and (objectType ?o1 AppleType)
        (receptacleType ?r DrawerType) (inReceptacle ?o1 ?r) (exists (?o2 - object) (and (not (= ?o1 ?o2))
        (objectType ?o2 AppleType) (receptacleType ?r DrawerType) (inReceptacle ?o2 ?r)))))))))"""
    progress = GoalProgress(domain, problem)
    static = {"objecttype": {("a1", "appletype"), ("a2", "appletype"), ("a3", "appletype")},
              "receptacletype": {("r1", "drawertype"), ("r2", "drawertype")}}  # fmt: skip
    assert progress.total == 2
    assert progress(static, won=False) == 0.0
    one_each = static | {"inreceptacle": {("a1", "r1"), ("a2", "r2")}}
    assert progress(one_each, won=False) == 0.5  # two apples, but not in the same drawer
    assert progress(static | {"inreceptacle": {("a1", "r2"), ("a3", "r2")}}, won=True) == 1.0
    # The same apple twice does not count as two (not (= ?o1 ?o2)).
    assert progress(static | {"inreceptacle": {("a1", "r1")}}, won=False) == 0.5


def test_same_seed_same_task_and_first_frame():
    a, b = AlfWorldEnv(), AlfWorldEnv()
    try:
        for seed in (3, 3, 11):
            obs_a, info_a = a.reset(seed=seed)
            obs_b, info_b = b.reset(seed=seed)
            assert info_a["gamefile"] == info_b["gamefile"] and obs_a["text"] == obs_b["text"]
            assert np.array_equal(obs_a["image"], obs_b["image"])
        # Unseeded resets continue the RNG, and seeds spread over the games.
        games = {a.reset(seed=s)[1]["gamefile"] for s in range(40)}
        assert len(games) >= 8
    finally:
        a.close()
        b.close()


def test_truncated_at_max_steps_and_text_state_off():
    env = AlfWorldEnv(max_steps=3, text_state=False, image_size=128)
    try:
        obs, info = env.reset(seed=0)
        assert obs["text"] == "" and obs["image"].shape == (128, 128, 3)
        outcomes = [env.step("look") for _ in range(3)]
        assert [o[3] for o in outcomes] == [False, False, True] and not any(o[2] for o in outcomes)
        with pytest.raises(RuntimeError, match="reset"):
            env.step("look")
    finally:
        env.close()


def test_frame_shows_place_holding_and_state_changes(env):
    obs, info = env.reset(seed=0, options={"task": task_types("train").index("pick_heat_then_place_in_recep")})
    frames = [obs["image"]]
    for command in info["expert_plan"]:
        obs, *_ = env.step(command)
        frames.append(obs["image"])
    # Every admissible step moves, picks, heats or places something: each frame differs from the one before.
    assert all(not np.array_equal(x, y) for x, y in zip(frames, frames[1:]))


def test_pickled_env_continues_identically(env):
    obs, info = env.reset(seed=5)
    plan = info["expert_plan"]
    env.step(plan[0])
    env.step("not a command")
    clone = pickle.loads(pickle.dumps(env))
    try:
        for command in plan[1:]:
            a, b = env.step(command), clone.step(command)
            assert a[0]["text"] == b[0]["text"] and np.array_equal(a[0]["image"], b[0]["image"])
            assert a[1:4] == b[1:4] and a[4] == b[4]
        assert b[2] and b[4]["success"]
    finally:
        clone.close()


def test_reset_keeps_sys_argv(env):
    # Fast Downward's translator overwrites sys.argv; DDP relaunches read it.
    before = list(sys.argv)
    env.reset(seed=123)
    assert sys.argv == before


def test_close_then_reset_again():
    env = AlfWorldEnv(split="eval")
    env.reset(seed=0)
    env.close()
    obs, info = env.reset(seed=0)
    assert info["legal_actions"]
    env.close()


def test_bad_arguments_fail_loudly(tmp_path):
    with pytest.raises(ValueError, match="split"):
        AlfWorldEnv(split="valid")
    with pytest.raises(FileNotFoundError):
        AlfWorldEnv(tasks_dir=str(tmp_path))


def test_generated_games_are_solvable_deterministic_and_playable(tmp_path):
    first = generate_tasks(tmp_path / "a", n_train=2, n_eval=1, seed=7)
    second = generate_tasks(tmp_path / "b", n_train=2, n_eval=0, seed=7)
    assert [p.read_bytes() for p in first["train"]] == [p.read_bytes() for p in second["train"]]
    games = [json.loads(p.read_text()) for p in first["train"] + first["eval"]]
    assert all(g["solvable"] and g["selu_task"]["expert_plan"] for g in games)
    assert set(games[0]) >= {"pddl_domain", "grammar", "pddl_problem", "solvable"}
    assert Counter(g["selu_task"]["goal_type"] for g in games[:2]) == Counter(GOAL_TYPES[:2])
    env = AlfWorldEnv(split="eval", tasks_dir=str(tmp_path / "a"))
    try:
        obs, info = env.reset(seed=0)
        *_, (_, reward, terminated, _, last) = play(env, info["expert_plan"])
        assert terminated and last["success"] and reward == pytest.approx(51.0)
    finally:
        env.close()


def test_generation_keeps_to_the_chosen_task_types(tmp_path):
    written = generate_tasks(tmp_path, n_train=2, n_eval=1, seed=3, goal_types=["pick_and_place_simple"])
    games = [json.loads(p.read_text()) for p in written["train"] + written["eval"]]
    assert [g["selu_task"]["goal_type"] for g in games] == ["pick_and_place_simple"] * 3
    with pytest.raises(ValueError, match="goal_types"):
        generate_tasks(tmp_path / "bad", n_train=1, n_eval=0, goal_types=["pick_and_place"])


def test_held_out_games_on_seen_or_unseen_floor_plans(tmp_path):
    """ALFWorld's valid_seen / valid_unseen: held-out games in rooms training knows, or in rooms it never saw."""
    from selu_lightning.envs.alfworld_tasks import _scenes

    def scenes(paths):
        return {int(re.search(r"FloorPlan(\d+)", p.name).group(1)) for p in paths}

    kinds = ["pick_and_place_simple"]
    seen = generate_tasks(tmp_path / "seen", 0, 2, seed=1, goal_types=kinds, eval_floor_plans="seen")["eval"]
    unseen = generate_tasks(tmp_path / "unseen", 0, 2, seed=1, goal_types=kinds)["eval"]
    assert scenes(seen) <= set(_scenes("train")) and scenes(unseen) <= set(_scenes("eval"))
    assert not set(_scenes("train")) & set(_scenes("eval"))
    with pytest.raises(ValueError, match="eval_floor_plans"):
        generate_tasks(tmp_path / "bad", 0, 1, eval_floor_plans="valid_seen")


def test_engine_caches_do_not_change_what_the_engine_says(tmp_path):
    """The module memoizes TextWorld's translation and grammar parsing; a process without them plays the same."""
    script = """
import hashlib, numpy as np
from selu_lightning.envs.alfworld import AlfWorldEnv
env, rng, h = AlfWorldEnv(), np.random.default_rng(0), hashlib.sha256()
for task in (0, 3):
    obs, info = env.reset(seed=0, options={"task": task})
    for k in range(8):
        h.update(repr((obs["text"], info["legal_actions"], info["goal_conditions"])).encode())
        h.update(obs["image"].tobytes())
        obs, *_, info = env.step(info["legal_actions"][rng.integers(len(info["legal_actions"]))])
    env.reset(seed=0, options={"task": task})  # a second reset of the same game (cached translation)
print(h.hexdigest())
"""
    outputs = []
    for cached in (True, False):
        environ = dict(os.environ)
        environ.pop("SELU_ALFWORLD_NO_CACHE", None)
        if not cached:
            environ["SELU_ALFWORLD_NO_CACHE"] = "1"
        done = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.strip())
    assert outputs[0] == outputs[1]
