"""VirtualHome env: text actions run on the evolving-graph simulator with its real preconditions."""

from __future__ import annotations

import importlib.util
import json
import pickle
from collections import Counter

import numpy as np
import pytest

if importlib.util.find_spec("virtualhome") is None:
    pytest.skip("needs `pip install --no-deps virtualhome==2.3.0`", allow_module_level=True)

from selu_lightning.envs import make_env  # noqa: E402
from selu_lightning.envs.virtualhome import SCENE_DIR, TASK_KINDS, VirtualHomeEnv, available_scenes  # noqa: E402

# A known program per task kind, written by hand for apartment_1 starting in the living room.
PROGRAMS = {
    "Pick up the apple.": ["walk to kitchen", "walk to fridge", "open fridge", "grab apple"],
    "Open the closet.": ["walk to bedroom", "walk to closet", "open closet"],
    "Switch on the tv.": ["walk to tv", "switch on tv"],
    "Sit on the sofa.": ["walk to sofa", "sit on sofa"],
    "Put the book on the desk.": ["walk to coffeetable", "grab book", "walk to bedroom", "walk to desk",
                                  "put book on desk"],
    "Put the remotecontrol in the fridge.": ["walk to remotecontrol", "grab remotecontrol", "walk to kitchen",
                                             "walk to fridge", "open fridge", "put remotecontrol in fridge"],
}  # fmt: skip


def start(env: VirtualHomeEnv, task: str, scene: str = "apartment_1", room: str = "livingroom"):
    return env.reset(seed=0, options={"scene": scene, "start_room": room, "task": task})


def test_bundled_apartments_are_rich_enough():
    assert len(available_scenes()) >= 3
    for name in available_scenes():
        graph = json.loads((SCENE_DIR / f"{name}.json").read_text())
        rooms = {n["class_name"] for n in graph["nodes"] if n["category"] == "Rooms"}
        objects = [n for n in graph["nodes"] if n["category"] not in ("Rooms", "Characters")]
        props = Counter(p for n in objects for p in n["properties"])
        assert rooms == {"kitchen", "livingroom", "bedroom", "bathroom"} and len(objects) >= 30
        assert all(props[p] >= 3 for p in ("CAN_OPEN", "HAS_SWITCH", "SITTABLE", "GRABBABLE", "SURFACES"))
        relations = {e["relation_type"] for e in graph["edges"]}
        assert {"INSIDE", "ON", "CLOSE", "FACING"} <= relations


@pytest.mark.parametrize("goal", list(PROGRAMS))
def test_known_program_reaches_success(goal):
    env = VirtualHomeEnv()
    _, info = start(env, goal)
    assert info["goal"] == goal and not info["success"]
    for k, action in enumerate(PROGRAMS[goal]):
        assert action in info["legal_actions"], (action, info["legal_actions"])
        _, reward, terminated, truncated, info = env.step(action)
        assert info["action_error"] == "" and info["script_line"].startswith("[")
        last = k == len(PROGRAMS[goal]) - 1
        assert (reward, terminated, info["success"]) == ((1.0, True, True) if last else (0.0, False, False))
    assert not truncated


def test_success_is_checked_on_the_graph():
    env = VirtualHomeEnv()
    start(env, "Put the remotecontrol in the fridge.")
    for action in PROGRAMS["Put the remotecontrol in the fridge."]:
        env.step(action)
    remote, fridge = env.scene.ids["remotecontrol"], env.scene.ids["fridge"]
    edges = env._state.to_dict()["edges"]
    assert {"from_id": remote, "relation_type": "INSIDE", "to_id": fridge} in edges
    assert not any(e["relation_type"].startswith("HOLDS") for e in edges)


def test_refused_action_changes_nothing_and_costs_a_step():
    env = VirtualHomeEnv()
    obs, info = start(env, "Pick up the apple.")
    before = env._state.to_dict()
    # Well-formed but refused by the simulator: the fridge is not close yet (it is not even visible).
    for action in ("grab remotecontrol", "open fridge", "fly to the moon", ""):
        assert action not in info["legal_actions"]
        obs2, reward, terminated, truncated, info2 = env.step(action)
        assert reward == 0.0 and not terminated and not truncated and info2["action_error"]
        assert info2["script_line"] == "" and env._state.to_dict() == before
        assert np.array_equal(obs["image"], obs2["image"]) and obs["text"] == obs2["text"]
    assert "is not close to" in env.step("grab remotecontrol")[-1]["action_error"]  # the simulator's reason
    assert env.steps == 5


def test_simulator_preconditions_shape_the_legal_actions():
    env = VirtualHomeEnv()
    _, info = start(env, "Switch on the tv.")
    assert "stand up" not in info["legal_actions"] and "walk to kitchen" in info["legal_actions"]
    assert "walk to fridge" not in info["legal_actions"]  # in another room: not visible
    assert "switch on tv" not in info["legal_actions"]  # not close yet
    env.step("walk to sofa")
    *_, info = env.step("sit on sofa")
    assert "stand up" in info["legal_actions"] and "walk to kitchen" not in info["legal_actions"]
    *_, info = env.step("walk to kitchen")
    assert "is sitting" in info["action_error"]
    *_, info = env.step("stand up")
    assert "walk to kitchen" in info["legal_actions"]


def test_objects_in_closed_containers_are_hidden_until_opened():
    env = VirtualHomeEnv()
    start(env, "Pick up the apple.", room="kitchen")
    obs, *_, info = env.step("walk to fridge")
    assert "apple" not in obs["text"] and "grab apple" not in info["legal_actions"]
    obs, *_, info = env.step("open fridge")
    assert "apple (in fridge)" in obs["text"] and "grab apple" in info["legal_actions"]


def test_every_sampled_task_is_solved_by_the_expert_within_max_steps():
    env = make_env("virtualhome")
    kinds = Counter()
    for seed in range(150):
        _, info = env.reset(seed=seed)
        kinds[info["task_kind"]] += 1
        plan = env.expert_actions()
        assert len(plan) <= env.max_steps
        for action in plan:
            assert action in info["legal_actions"], (seed, info["goal"], action)
            *_, info = env.step(action)
        assert info["success"], (seed, info["goal"], plan)
    assert set(kinds) == set(TASK_KINDS) and min(kinds.values()) > 15


def test_truncated_after_max_steps_and_task_kinds_knob():
    env = VirtualHomeEnv(max_steps=3, task_kinds=["open"])
    for seed in range(10):
        _, info = env.reset(seed=seed)
        assert info["goal"].startswith("Open the ") and len(env.expert_actions()) <= 3
    env.reset(seed=0)
    for _ in range(2):
        assert not env.step("nonsense")[3]
    *_, truncated, info = env.step("nonsense")
    assert truncated and not info["success"]
    with pytest.raises(RuntimeError):
        env.step("nonsense")
    with pytest.raises(ValueError, match="task_kinds"):
        VirtualHomeEnv(task_kinds=["dance"])


def test_same_seed_same_task_and_frame():
    a, b = make_env("virtualhome"), make_env("virtualhome")
    for seed in (0, 3, 99):
        (obs_a, info_a), (obs_b, info_b) = a.reset(seed=seed), b.reset(seed=seed)
        assert info_a["goal"] == info_b["goal"] and info_a["scene"] == info_b["scene"]
        assert np.array_equal(obs_a["image"], obs_b["image"]) and obs_a["text"] == obs_b["text"]
    assert len({a.reset(seed=s)[1]["goal"] for s in range(20)}) > 10
    assert len({a.reset(seed=s)[1]["scene"] for s in range(20)}) == len(available_scenes())


def test_contract_pickling_and_scene_by_path():
    env = VirtualHomeEnv(scenes=[str(SCENE_DIR / "apartment_2.json")], image_size=128, text_state=False)
    obs, info = env.reset(seed=1)
    assert obs["image"].shape == (128, 128, 3) and obs["image"].dtype == np.uint8 and obs["text"] == ""
    assert set(info) >= {"legal_actions", "goal", "success"} and info["legal_actions"]
    env.step(info["legal_actions"][0])
    clone = pickle.loads(pickle.dumps(env))
    for action in env.expert_actions():
        assert env.step(action)[1:] == clone.step(action)[1:]
    with pytest.raises(ValueError, match="unknown VirtualHome scene"):
        VirtualHomeEnv(scenes=["no_such_flat"])


def test_duplicate_objects_get_distinct_readable_names():
    names = VirtualHomeEnv(scenes=["apartment_3"])._scene(0).names
    assert {"kitchencabinet 1", "kitchencabinet 2", "livingroom tv", "bedroom tv", "kitchen sink", "bathroom sink",
            "kitchen chair 1", "kitchen chair 2", "livingroom chair"} <= set(names.values())  # fmt: skip
    assert len(set(names.values())) == len(names)
