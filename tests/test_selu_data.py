"""SELU's critic data without a model: task structure from the envs, question templates, the relabel mapping, and the
self-asking / hindsight builder on hand-built episodes with hand-written critic answers."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from selu_lightning.critic.data import LabelingConfig, accepted_instructions, build_critic_examples
from selu_lightning.critic.questions import CriticQuestions, VerbQuestions, match_object
from selu_lightning.critic.tasks import SceneObject, TaskSpec, split_listing, task_structure
from selu_lightning.data.trajectories import StepRecord, Trajectory
from selu_lightning.errors import ConfigError

needs_virtualhome = pytest.mark.skipif(importlib.util.find_spec("virtualhome") is None, reason="needs virtualhome")


# ---------------------------------------------------------------------- task structure per env
@needs_virtualhome
def test_virtualhome_instructions_round_trip_and_observations_list_objects():
    from selu_lightning.envs.virtualhome import VirtualHomeEnv

    env = VirtualHomeEnv()
    assert VirtualHomeEnv.task_spec("Put the apple in the fridge.") == TaskSpec("put in", ("apple", "fridge"))
    assert VirtualHomeEnv.task_spec("Sit on the kitchen chair 1.") == TaskSpec("sit on", ("kitchen chair 1",))
    assert VirtualHomeEnv.task_spec("Dance.") is None
    for seed in range(12):  # every sampled goal reads back to a spec that writes the same goal
        _, info = env.reset(seed=seed)
        spec = VirtualHomeEnv.task_spec(info["goal"])
        assert spec is not None and spec.verb in VirtualHomeEnv.task_verbs
        assert VirtualHomeEnv.task_instruction(spec) == info["goal"]
    options = {"scene": "apartment_1", "start_room": "livingroom", "task": "Pick up the apple."}
    obs, info = env.reset(seed=0, options=options)
    for action in ["walk to kitchen", "walk to fridge", "open fridge", "grab apple"]:
        obs, *_ = env.step(action)
    objects = {o.name: o.states for o in VirtualHomeEnv.scene_objects(obs["text"])}
    assert objects["apple"] == {"held"} and objects["fridge"] == {"open"}
    text = ("You are in the livingroom, sitting on the sofa, holding book and cup.\nYou see: tv (off), sofa.\n"
            "Other rooms: kitchen.")
    objects = {o.name: o.states for o in VirtualHomeEnv.scene_objects(text)}
    assert objects == {"sofa": {"sat on"}, "book": {"held"}, "cup": {"held"}, "tv": {"off"}}
    assert VirtualHomeEnv.scene_objects("") == []


def test_babyai_missions_and_views():
    pytest.importorskip("minigrid")
    from selu_lightning.envs.babyai import BabyAIEnv

    assert BabyAIEnv.task_spec("go to the purple box") == TaskSpec("go to", ("purple box",))
    assert BabyAIEnv.task_spec("pick up a ball behind you") == TaskSpec("pick up", ("ball",))
    assert BabyAIEnv.task_spec("put the yellow key on your left next to a grey box") == TaskSpec(
        "put next to", ("yellow key", "grey box"))
    assert BabyAIEnv.task_spec("pick up a key and open the red door") is None  # composite missions are not asked about
    assert BabyAIEnv.task_instruction(TaskSpec("open", ("red door",))) == "open the red door"
    text = ("In front of you: a red door, closed.\nYou see: a purple box (2 ahead, 1 left); a red door, closed "
            "(1 ahead); and 2 more.\nYou carry: a grey key.")
    objects = {o.name: o.states for o in BabyAIEnv.scene_objects(text)}
    assert objects == {"red door": {"closed", "in front"}, "purple box": set(), "grey key": {"carried"}}
    env = BabyAIEnv(image_size=64)
    for seed in range(8):  # every single-clause mission of the default levels is read, and names real objects
        obs, info = env.reset(seed=seed)
        spec = BabyAIEnv.task_spec(info["goal"])
        assert spec is not None and spec.verb in BabyAIEnv.task_verbs, info["goal"]
        assert all(isinstance(o, SceneObject) for o in BabyAIEnv.scene_objects(obs["text"]))


def test_ai2thor_task_structure_through_the_stub_player(tmp_path, monkeypatch):
    pytest.importorskip("ai2thor.controller")
    sys.path.insert(0, str(Path(__file__).parent))
    import stub_thor_player

    from selu_lightning.envs.ai2thor import AI2ThorEnv

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = AI2ThorEnv(local_executable_path=stub_thor_player.launcher(str(tmp_path)), x_display=":0",
                     scenes=["FloorPlan1"], image_size=64, start_timeout=30.0)  # fmt: skip
    try:
        task = {"kind": "put", "object": "Apple", "receptacle": "Fridge"}
        obs, info = env.reset(seed=0, options={"task": task})
        spec = AI2ThorEnv.task_spec(info["goal"])
        assert spec == TaskSpec("put in", ("Apple", "Fridge")) and AI2ThorEnv.task_instruction(spec) == info["goal"]
        objects = {o.name: o.states for o in AI2ThorEnv.scene_objects(obs["text"])}
        assert objects == {"Apple": set(), "CounterTop": set(), "Fridge": {"closed"}, "Microwave": {"closed", "off"}}
        obs, *_ = env.step("pick up Apple")
        obs, *_ = env.step("open Fridge")
        objects = {o.name: o.states for o in AI2ThorEnv.scene_objects(obs["text"])}
        assert objects["Apple"] == {"held"} and objects["Fridge"] == {"open"}
        obs, *_ = env.step("open Fridge")  # fails: "Last action failed: ..." heads the text, objects still read
        assert obs["text"].startswith("Last action failed")
        assert "Fridge" in {o.name for o in AI2ThorEnv.scene_objects(obs["text"])}
        for kind, goal in [("pick up", "Pick up the Apple."), ("open", "Open the Fridge."),
                           ("toggle on", "Toggle on the Microwave.")]:  # fmt: skip
            _, info = env.reset(seed=0, options={"task": {"kind": kind, "object": goal.split()[-1].rstrip(".")}})
            assert info["goal"] == goal and AI2ThorEnv.task_spec(goal).verb == kind
        spec = AI2ThorEnv.task_spec("Put the Apple 2 on the CounterTop.")
        assert spec == TaskSpec("put on", ("Apple 2", "CounterTop"))
    finally:
        env.close()


def test_task_structure_lookup_fails_in_one_line_for_envs_without_it():
    assert task_structure("ai2thor" if importlib.util.find_spec("ai2thor") else "babyai").task_verbs
    with pytest.raises(ConfigError, match="does not expose the task structure"):
        task_structure("numberline")


# ---------------------------------------------------------------------- questions and the relabel mapping
def test_question_templates_defaults_overrides_and_errors():
    questions = CriticQuestions()
    verbs = ("pick up", "open", "switch on", "sit on", "put in", "put on")
    templates = questions.resolved("virtualhome", verbs)
    assert questions.ask(templates, TaskSpec("open", ("fridge",)), "Open the fridge.") == "Is the fridge open?"
    assert questions.ask(templates, TaskSpec("put in", ("apple", "fridge")), "x") == "Is the apple in the fridge?"
    assert questions.hindsight(templates, TaskSpec("open", ("fridge",))) == "Which object is open?"
    assert questions.hindsight(templates, TaskSpec("put on", ("book", "desk"))) == "Which object is on the desk?"
    # unread instructions (spec None) and style=direct ask the direct question
    assert questions.ask(templates, None, "Dance.") == "The instruction was: Dance. Did the agent complete it?"
    direct = CriticQuestions(style="direct")
    asked = direct.ask(templates, TaskSpec("open", ("fridge",)), "Open the fridge.")
    assert asked.startswith("The instruction was: Open")
    custom = CriticQuestions(templates={"open": VerbQuestions("Can one see inside the {object}?", "What stands open?")})
    custom_t = custom.resolved("virtualhome", verbs)
    assert custom.ask(custom_t, TaskSpec("open", ("fridge",)), "") == "Can one see inside the fridge?"
    # verbs the override does not name keep their defaults
    assert custom.ask(custom_t, TaskSpec("sit on", ("sofa",)), "") == "Is the person sitting on the sofa?"
    with pytest.raises(ConfigError, match="no question for verb"):
        CriticQuestions().resolved("my_env", ["open"])
    with pytest.raises(ConfigError, match="unknown field"):
        CriticQuestions(templates={"open": VerbQuestions("Is the {thing} open?", "?")}).resolved("virtualhome", verbs)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("fridge", "fridge"),
        ("The Fridge is open.", "fridge"),
        ("kitchencabinet 2", "kitchencabinet 2"),  # the longest name at a position wins
        ("the kitchencabinet", "kitchencabinet"),
        ("The apple is in the fridge.", "apple"),  # the first object named
        ("nothing", None),
        ("a cabinet", None),  # no whole-word match
        ("", None),
    ],
)
def test_answers_map_onto_objects_in_the_scene(answer, expected):
    names = ["fridge", "kitchencabinet", "kitchencabinet 2", "apple", "CounterTop"]
    assert match_object(answer, names) == expected


def test_the_question_target_is_not_an_answer():
    names = ["fridge", "apple", "mug"]
    assert match_object("the fridge contains the mug", names, exclude=["fridge"]) == "mug"
    assert match_object("fridge", names, exclude=["fridge"]) is None
    assert match_object("countertop", ["CounterTop"]) == "CounterTop"  # spelled as the scene spells it
    assert split_listing("a (x, y), b, c (z)") == ["a (x, y)", "b", "c (z)"]


# ---------------------------------------------------------------------- the builder
class HandStructure:
    """The VirtualHome text conventions, without the simulator (hand-built episodes)."""

    task_verbs = ("open", "put in", "pick up")

    @classmethod
    def task_spec(cls, instruction):
        words = instruction.rstrip(".").lower().split()
        if words[:1] == ["open"]:
            return TaskSpec("open", (words[-1],))
        if words[:1] == ["put"]:
            return TaskSpec("put in", (words[2], words[-1]))
        return None

    @classmethod
    def task_instruction(cls, spec):
        return f"Open the {spec.object}." if spec.verb == "open" else f"Put the {spec.object} in the {spec.target}."

    @classmethod
    def scene_objects(cls, observation):
        return [SceneObject(n) for n in observation.split(", ")]


TEMPLATES = CriticQuestions().resolved("virtualhome", HandStructure.task_verbs)


IDS = ["yes", "relabel", "unmatched", "same", "put", "unread"]


def episode(eid, goal, observation="fridge, kitchencabinet 1, apple, mug", success=False):
    frame = np.full((4, 4, 3), IDS.index(eid), np.uint8)  # how the hand critic tells episodes apart
    steps = [StepRecord(frame, "obs", "prompt", "response", "open fridge", float(success))]
    return Trajectory(eid, 0, goal, steps, frame, observation, ground_truth={"success": success})


EPISODES = [
    episode("yes", "Open the fridge.", success=True),
    episode("relabel", "Open the fridge."),
    episode("unmatched", "Open the fridge."),
    episode("same", "Open the fridge."),
    episode("put", "Put the apple in the fridge."),
    episode("unread", "Dance a little."),
]
P_YES = {"yes": 0.9, "relabel": 0.2, "unmatched": 0.1, "same": 0.4, "put": 0.3}
ANSWERS = {"relabel": "The kitchencabinet 1 is open.", "unmatched": "nothing", "same": "the fridge",
           "put": "The mug is in the fridge."}  # fmt: skip


def hand_critic(calls):
    """A critic whose answers are written by hand, keyed by the episode (its frame's fill value)."""
    by_fill = dict(enumerate(IDS))

    def judge(queries):
        calls.append(("judge", [q.question for q in queries]))
        return [P_YES[by_fill[int(q.frame[0, 0, 0])]] for q in queries]

    def ask(queries):
        calls.append(("ask", [q.question for q in queries]))
        return [ANSWERS[by_fill[int(q.frame[0, 0, 0])]] for q in queries]

    return judge, ask


def build(episodes=EPISODES, **labeling):
    calls = []
    judge, ask = hand_critic(calls)
    examples, stats = build_critic_examples(episodes, HandStructure, CriticQuestions(), TEMPLATES, judge, ask,
                                            LabelingConfig(**labeling))  # fmt: skip
    return examples, stats, calls


def test_self_asking_hindsight_and_statistics_on_hand_built_episodes():
    examples, stats, calls = build(negatives="none")
    # one batched call each: yes/no for every readable episode, then hindsight for those answered no
    assert calls[0] == ("judge", ["Is the fridge open?"] * 4 + ["Is the apple in the fridge?"])
    assert calls[1] == ("ask", ["Which object is open?"] * 3 + ["Which object is in the fridge?"])
    got = [(e.episode_id, e.kind, e.instruction, e.question, e.answer) for e in examples]
    assert got == [
        ("yes", "self_ask", "Open the fridge.", "Is the fridge open?", "yes"),
        ("relabel", "relabeled", "Open the kitchencabinet 1.", "Is the kitchencabinet 1 open?", "yes"),
        ("put", "relabeled", "Put the mug in the fridge.", "Is the mug in the fridge?", "yes"),
    ]
    assert (stats.episodes, stats.unparsed, stats.accepted, stats.rejected) == (6, 1, 1, 4)
    assert (stats.relabeled, stats.dropped_unmatched, stats.dropped_same) == (2, 1, 1)
    assert stats.relabel_rate == 0.5 and dict(stats.examples_per_verb) == {"open": 2, "put in": 1}
    metrics = stats.as_metrics()
    assert metrics["critic_data/relabel_rate"] == 0.5 and metrics["critic_data/positives_put_in"] == 1.0
    examples, _, _ = build(negatives="rejected")  # what the actor's SFT would learn from: negatives never enter
    assert accepted_instructions(examples) == {"yes": ["Open the fridge."], "relabel": ["Open the kitchencabinet 1."],
                                               "put": ["Put the mug in the fridge."]}  # fmt: skip


def test_negatives_and_hindsight_are_options():
    _, stats, _ = build(negatives="none")
    examples, stats_r, _ = build(negatives="relabeled")
    negatives = [(e.episode_id, e.question, e.answer) for e in examples if e.kind == "negative"]
    assert negatives == [("relabel", "Is the fridge open?", "no"), ("put", "Is the apple in the fridge?", "no")]
    examples, stats_all, _ = build(negatives="rejected")
    assert sorted(e.episode_id for e in examples if e.kind == "negative") == ["put", "relabel", "same", "unmatched"]
    assert (stats.negatives, stats_r.negatives, stats_all.negatives) == (0, 2, 4)
    examples, stats, calls = build(hindsight=False, negatives="none")
    assert [e.episode_id for e in examples] == ["yes"] and stats.relabeled == 0 and [c[0] for c in calls] == ["judge"]
    examples, _, _ = build(threshold=0.35, negatives="none")  # the threshold decides what counts as yes
    assert [e.episode_id for e in examples if e.kind == "self_ask"] == ["yes", "same"]
    with pytest.raises(ConfigError, match="negatives"):
        LabelingConfig(negatives="some")
    with pytest.raises(ConfigError, match="threshold"):
        LabelingConfig(threshold=1.0)


def test_ground_truth_and_rewards_never_reach_the_builder():
    """Invariant 7 on the builder: shuffled ground truth and env rewards give the same examples, and the critic
    is never shown them."""
    rng = np.random.default_rng(0)
    shuffled = [dataclasses.replace(e, ground_truth={"success": bool(rng.integers(2))},
                                    steps=[dataclasses.replace(s, reward=float(rng.normal())) for s in e.steps])
                for e in EPISODES]  # fmt: skip
    a, stats_a, _ = build(negatives="rejected")
    b, stats_b, _ = build(shuffled, negatives="rejected")
    assert [(e.episode_id, e.question, e.answer, e.instruction) for e in a] == [
        (e.episode_id, e.question, e.answer, e.instruction) for e in b]
    assert stats_a == stats_b

    seen = []

    def judge(queries):
        seen.extend(queries)
        return [0.0] * len(queries)

    build_critic_examples(EPISODES, HandStructure, CriticQuestions(), TEMPLATES, judge, lambda qs: ["x"] * len(qs))
    assert seen and all(set(vars(q)) == {"frame", "observation", "question"} for q in seen)
