"""AI2-THOR env: the real ``ai2thor`` Controller and FIFO client driven against a STUB player (no Unity here).

``tests/stub_thor_player.py`` plays Unity's side of the FIFO protocol over a fake four-object kitchen; the
Controller launches it as a ``local_executable_path`` build, exactly as it launches a real build.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ai2thor.controller", reason="ai2thor is an optional extra: pip install selu_lightning[ai2thor]")

import ai2thor.build  # noqa: E402
import ai2thor.platform  # noqa: E402
import numpy as np  # noqa: E402

from selu_lightning.envs import env_class, make_env  # noqa: E402
from selu_lightning.envs.ai2thor import HOW_TO_GET_A_BUILD, AI2ThorEnv  # noqa: E402
from selu_lightning.envs.pool import EnvPool  # noqa: E402
from selu_lightning.errors import ConfigError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import stub_thor_player  # noqa: E402

NAVIGATION = ["move ahead", "rotate left", "rotate right", "look up", "look down"]


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """ai2thor keeps builds and logs under ~/.ai2thor; CUDA_VISIBLE_DEVICES would make it call vulkaninfo."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def stub_env(tmp_path, **kwargs) -> AI2ThorEnv:
    kwargs = dict(scenes=["FloorPlan1"], image_size=64, start_timeout=30.0) | kwargs
    return AI2ThorEnv(local_executable_path=stub_thor_player.launcher(str(tmp_path)), x_display=":0", **kwargs)


@pytest.fixture
def env(tmp_path):
    env = stub_env(tmp_path)
    yield env
    env.close()


def task(kind, obj, receptacle=None):
    return {"task": {"kind": kind, "object": obj, "receptacle": receptacle}}


def test_reset_lists_legal_actions_and_states_from_metadata(env):
    obs, info = env.reset(seed=0, options=task("pick up", "Apple"))
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype.name == "uint8" and obs["image"].any()
    assert obs["text"] == "You see: Apple, CounterTop, Fridge (closed), Microwave (closed, off). You hold: nothing."
    objects = ["pick up Apple", "open Fridge", "open Microwave", "toggle on Microwave"]
    assert info["legal_actions"] == NAVIGATION + objects
    assert info["goal"] == "Pick up the Apple." and info["success"] is False and info["scene"] == "FloorPlan1_physics"
    # Holding the apple: put actions into open / lid-less receptacles appear, pick up disappears.
    _, _, _, _, info = env.step("pick up Apple")
    assert "put Apple on CounterTop" in info["legal_actions"] and "put Apple in Fridge" not in info["legal_actions"]


@pytest.mark.parametrize(
    "goal, options, actions",
    [
        ("Pick up the Apple.", task("pick up", "Apple"), ["pick up the Apple"]),
        ("Open the Fridge.", task("open", "Fridge"), ["open Fridge"]),
        ("Toggle on the Microwave.", task("toggle on", "Microwave"), ["look down", "toggle on microwave"]),
        ("Put the Apple in the Fridge.", task("put", "Apple", "Fridge"),
         ["pick up Apple", "open Fridge", "put Apple in Fridge"]),
        ("Put the Apple 2 on the CounterTop.", task("put", "Apple 2", "CounterTop"),
         ["rotate right", "pick up Apple 2", "rotate left", "put Apple 2 on CounterTop"]),
    ],
)
def test_known_action_sequence_succeeds(env, goal, options, actions):
    _, info = env.reset(seed=0, options=options)
    assert info["goal"] == goal
    rewards = []
    for action in actions:
        assert action.lower().replace("the ", "") in [a.lower() for a in info["legal_actions"]]
        _, reward, terminated, truncated, info = env.step(action)
        assert info["action_success"], info.get("action_error")
        rewards.append(reward)
    assert rewards == [0.0] * (len(actions) - 1) + [1.0]
    assert terminated and not truncated and info["success"]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("move ahead")


def test_failed_actions_get_zero_count_and_leave_the_scene(env):
    _, info = env.reset(seed=0, options=task("open", "Fridge"))
    before = info["legal_actions"]
    for action, why in [
        ("pick up Fridge", "not pickupable"),  # THOR (the stub) refuses: lastActionSuccess false
        ("put Apple in Fridge", "not holding"),  # never reaches THOR
        ("pick up Apple 2", "no visible object"),  # exists, but behind the agent
        ("fly to the moon", "unknown action"),
    ]:
        obs, reward, terminated, truncated, info = env.step(action)
        assert (reward, terminated, truncated, info["action_success"]) == (0.0, False, False, False)
        assert why in info["action_error"] and obs["text"].startswith("Last action failed: ")
        assert info["legal_actions"] == before and not info["success"]
    env.step("move ahead"), env.step("move ahead")
    obs, reward, _, _, info = env.step("move ahead")  # the stub's wall
    assert reward == 0.0 and "blocked" in info["action_error"]
    obs, _, _, _, info = env.step("open Fridge")  # a success clears the failure note
    assert info["action_success"] and not obs["text"].startswith("Last action failed")


def test_truncated_after_max_steps(tmp_path):
    env = stub_env(tmp_path, max_steps=3, text_state=False)
    try:
        obs, _ = env.reset(seed=0, options=task("open", "Fridge"))
        assert obs["text"] == ""
        flags = [env.step("rotate left")[2:4] for _ in range(3)]
        assert flags == [(False, False), (False, False), (False, True)]
    finally:
        env.close()


def test_tasks_are_sampled_from_metadata_with_the_seed(tmp_path):
    env = stub_env(tmp_path, scenes=["FloorPlan1", "FloorPlan2"])
    try:
        goals = [env.reset(seed=s)[1]["goal"] for s in range(40)]
        assert goals == [env.reset(seed=s)[1]["goal"] for s in range(40)]
        kinds = {g.split(" the ")[0] for g in goals}
        assert kinds == {"Pick up", "Open", "Toggle on", "Put"}
        assert not any("Apple 2" in g for g in goals)  # visible_targets_only: the second apple is behind
        assert "Open the CounterTop." not in goals and "Pick up the Fridge." not in goals
        assert {env.reset(seed=s)[1]["scene"] for s in range(10)} == {"FloorPlan1_physics", "FloorPlan2_physics"}
        env.visible_targets_only = False
        assert any("Apple 2" in env.reset(seed=s)[1]["goal"] for s in range(40))
    finally:
        env.close()


def test_tasks_knob_and_frame_resize(tmp_path):
    env = stub_env(tmp_path, tasks=["open"], image_size=48, controller_kwargs={"width": 32, "height": 32})
    try:
        goals = {env.reset(seed=s)[1]["goal"] for s in range(20)}
        assert goals == {"Open the Fridge.", "Open the Microwave."}
        assert env.event.frame.shape == (32, 32, 3) and env.render().shape == (48, 48, 3)
    finally:
        env.close()
    with pytest.raises(ConfigError, match="tasks must be"):
        AI2ThorEnv(tasks=["break"])


def state_seen(state) -> tuple:
    return state.text, state.goal, state.legal_actions, state.image.tobytes()


@pytest.mark.parametrize("workers", ["inprocess", "subprocess"])
def test_checkpoint_replays_the_episode_on_a_fresh_controller(tmp_path, workers):
    kwargs = dict(local_executable_path=stub_thor_player.launcher(str(tmp_path)), x_display=":0", image_size=64,
                  scenes=["FloorPlan1", "FloorPlan2"], start_timeout=30.0, max_steps=4)  # fmt: skip
    rng = np.random.default_rng(0)

    def actions(pool):  # legal actions mostly, and some THOR refuses or never sees
        return [str(rng.choice(s.legal_actions + ["fly to the moon", "pick up Fridge"])) for s in pool.states]

    pool = EnvPool("ai2thor", 2, seed=4, env_kwargs=kwargs, workers=workers)
    restored = None
    try:
        pool.reset()
        for _ in range(6):  # past the end of the first episodes (max_steps 4): the RNG carries on into the next
            pool.step(actions(pool))
        snap = pool.snapshot()
        assert [len(e["episode"].actions) for e in snap["envs"]] == [2, 2]
        blob = pickle.dumps(snap)  # a live controller cannot be pickled: the episode record can
        # A GPU renderer may not redraw a frame bit for bit: the frame the policy acts on next is kept.
        assert len(blob) / 2 < 64 * 64 * 3 + 2_000
        restored = EnvPool.restore(pickle.loads(blob))
        assert [state_seen(s) for s in restored.states] == [state_seen(s) for s in pool.states]
        for _ in range(6):
            step = actions(pool)
            a, b = pool.step(step), restored.step(step)
            assert [(o.reward, o.terminated, o.truncated, o.info) for o in a] == [
                (o.reward, o.terminated, o.truncated, o.info) for o in b]  # fmt: skip
            assert [state_seen(s) for s in restored.states] == [state_seen(s) for s in pool.states]
    finally:
        pool.close()
        if restored is not None:
            restored.close()


def test_env_itself_does_not_pickle(env):
    env.reset(seed=0)
    with pytest.raises(TypeError, match="live AI2-THOR controller.*replaying"):
        pickle.dumps(env)


def test_registry_builds_the_env(tmp_path):
    assert env_class("ai2thor") is AI2ThorEnv and AI2ThorEnv.has_legal_actions
    env = make_env("ai2thor", local_executable_path=stub_thor_player.launcher(str(tmp_path)), x_display=":0",
                   scenes=["FloorPlan2"], image_size=32)
    try:
        obs, info = env.reset(seed=1)
        assert info["scene"] == "FloorPlan2_physics" and obs["image"].shape == (32, 32, 3)
    finally:
        env.close()


def one_line_error(start, **kwargs) -> str:
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        AI2ThorEnv(**kwargs)
    assert time.monotonic() - t0 < start + 5
    message = str(err.value)
    assert "\n" not in message and HOW_TO_GET_A_BUILD in message
    return message


def test_no_build_gives_one_clear_line(monkeypatch):
    # What an offline machine sees: ai2thor finds no build to download (no network needed for the test).
    monkeypatch.setattr(ai2thor.build.Build, "exists", lambda self: False)
    assert "no build exists" in one_line_error(0)
    assert "no build exists" in one_line_error(0, platform="Linux64")


def test_bad_local_build_and_display_give_one_clear_line(tmp_path, monkeypatch):
    assert "is not an executable file" in one_line_error(0, local_executable_path=str(tmp_path / "no-such-build"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(ai2thor.platform.Linux64, "_select_x_display", classmethod(lambda cls, w, h: None))
    message = one_line_error(0, local_executable_path=stub_thor_player.launcher(str(tmp_path)))
    assert "needs an X display" in message  # ai2thor itself would crash with a TypeError
    with pytest.raises(ConfigError, match="platform must be"):
        AI2ThorEnv(platform="WebGL")


def test_start_without_player_times_out_instead_of_hanging():
    # start_unity=False: ai2thor's FIFO client waits for a player that never comes (it blocks for ever).
    message = one_line_error(0.3, start_timeout=0.3, controller_kwargs={"start_unity": False})
    assert "no AI2-THOR player answered within start_timeout=0.3s" in message
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name == "ai2thor-start"]


def test_silent_player_is_stopped_after_the_timeout(tmp_path):
    pid_file = tmp_path / "pid"
    player = tmp_path / "silent-player"
    player.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    player.chmod(0o755)
    message = one_line_error(0.5, local_executable_path=str(player), x_display=":0", start_timeout=0.5)
    assert "no AI2-THOR player answered" in message
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
