"""BabyAI env: real MiniGrid levels behind text actions; BabyAI's own bot solves them through the string API."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("minigrid")

from minigrid.utils.baby_ai_bot import BabyAIBot  # noqa: E402

from selu_lightning.envs import make_env  # noqa: E402
from selu_lightning.envs.babyai import ACTIONS, BabyAIEnv  # noqa: E402

TO_TEXT = {int(action): text for text, action in ACTIONS.items()}


def play_bot(env: BabyAIEnv, seed: int) -> tuple[dict, float, int]:
    """Reset with ``seed`` and let BabyAI's bot pick actions, sent as text; returns the final info, return, steps."""
    env.reset(seed=seed)
    bot = BabyAIBot(env.minigrid_env)
    total, steps, over = 0.0, 0, False
    while not over:
        _, reward, terminated, truncated, info = env.step(TO_TEXT[int(bot.replan())])
        total, steps, over = total + reward, steps + 1, terminated or truncated
    return info, total, steps


@pytest.mark.parametrize(
    "level, verb",
    [("BabyAI-GoToLocal-v0", "go to"), ("BabyAI-PickupLoc-v0", "pick up"), ("BabyAI-OpenDoor-v0", "open"),
     ("BabyAI-PutNextLocal-v0", "put")],
)  # fmt: skip
def test_bot_solves_each_mission_kind_through_text_actions(level, verb):
    env = BabyAIEnv(levels=[level], image_size=64)
    for seed in range(3):
        info, total, steps = play_bot(env, seed)
        assert info["goal"].startswith(verb)
        assert info["success"] and total > 0.5, (level, seed, info)
        assert steps < env.minigrid_env.max_steps


def test_default_levels_cover_the_four_mission_kinds():
    env = make_env("babyai", image_size=64)
    verbs = set()
    for seed in range(40):
        _, info = env.reset(seed=seed)
        verbs.add(info["goal"].split(" the ")[0].split(" a ")[0])
    assert verbs == {"go to", "pick up", "open", "put"}


def test_observation_and_info_follow_the_contract():
    env = make_env("babyai")
    obs, info = env.reset(seed=1)
    assert obs["image"].shape == (300, 300, 3) and obs["image"].dtype == np.uint8
    assert obs["text"].startswith("In front of you: ") and "You carry: nothing." in obs["text"]
    assert info["legal_actions"] == ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
    assert info["success"] is False and info["goal"] == env.minigrid_env.mission
    obs, _ = BabyAIEnv(text_state=False, image_size=96).reset(seed=1)
    assert obs["text"] == "" and obs["image"].shape == (96, 96, 3)


def test_text_describes_the_agents_view():
    env = BabyAIEnv(levels=["BabyAI-PickupLoc-v0"])
    env.reset(seed=4)
    grid = env.minigrid_env
    # Face whatever is in front, then read the text: it names that object (or the wall).
    front = grid.grid.get(*grid.front_pos)
    text = env.describe()
    expected = "a wall" if front is not None and front.type == "wall" else (
        f"a {front.color} {front.type}" if front is not None else "nothing (empty floor)")  # fmt: skip
    assert text.splitlines()[0] == f"In front of you: {expected}."


def test_unknown_action_is_a_no_op_that_costs_a_step():
    env = BabyAIEnv(levels=["BabyAI-GoToLocal-v0"], max_steps=3)
    obs, _ = env.reset(seed=2)
    grid = env.minigrid_env
    pos, direction = tuple(grid.agent_pos), grid.agent_dir
    obs2, reward, terminated, truncated, info = env.step("dance")
    assert info["illegal_action"] and reward == 0.0 and not terminated and not truncated
    assert tuple(grid.agent_pos) == pos and grid.agent_dir == direction and grid.step_count == 1
    assert np.array_equal(obs["image"], obs2["image"])
    env.step("  Turn Left ")  # case and spaces do not matter
    assert grid.agent_dir == (direction - 1) % 4
    *_, truncated, info = env.step("done")  # "done" is not an action here: no-op, and the 3rd step truncates
    assert truncated and info["illegal_action"] and not info["success"]
    with pytest.raises(RuntimeError):
        env.step("turn left")


def test_same_seed_same_mission_and_first_frame():
    a, b = make_env("babyai"), make_env("babyai")
    for seed in (0, 7, 123):
        (obs_a, info_a), (obs_b, info_b) = a.reset(seed=seed), b.reset(seed=seed)
        assert info_a["goal"] == info_b["goal"] and a.level == b.level
        assert np.array_equal(obs_a["image"], obs_b["image"]) and obs_a["text"] == obs_b["text"]
    goals = {a.reset(seed=s)[1]["goal"] for s in range(10)}
    assert len(goals) > 5


def test_later_episodes_continue_the_seeded_rng_and_survive_pickling():
    env = make_env("babyai")
    env.reset(seed=5)
    clone = pickle.loads(pickle.dumps(env))
    (obs_a, info_a), (obs_b, info_b) = env.reset(), clone.reset()
    assert info_a["goal"] == info_b["goal"] and np.array_equal(obs_a["image"], obs_b["image"])


def test_view_and_max_steps_knobs():
    full, agent = BabyAIEnv(levels=["BabyAI-GoToLocal-v0"]), BabyAIEnv(levels=["BabyAI-GoToLocal-v0"], view="agent")
    img_full, img_agent = full.reset(seed=3)[0]["image"], agent.reset(seed=3)[0]["image"]
    assert img_full.shape == img_agent.shape and not np.array_equal(img_full, img_agent)
    env = BabyAIEnv(levels=["BabyAI-OpenDoor-v0"], max_steps=5)
    env.reset(seed=0)
    assert env.minigrid_env.max_steps == 5
    with pytest.raises(ValueError, match="unknown BabyAI level"):
        BabyAIEnv(levels=["BabyAI-NoSuchLevel-v0"])
