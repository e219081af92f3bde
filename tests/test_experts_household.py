"""Scripted experts for ALFWorld, BabyAI and VirtualHome: they win seeded episodes of the real simulators, their
JSON parses back to their action, noise plays wrong legal actions that the thoughts argue for, and the collection
command writes a store for each env."""

from __future__ import annotations

import importlib.util
import json
import math
import re

import numpy as np
import pytest

from selu_lightning.action_spaces.parsing import parse_action
from selu_lightning.data.collect import main
from selu_lightning.data.store import TrajectoryStore
from selu_lightning.envs.base import make_env
from selu_lightning.errors import ConfigError
from selu_lightning.experts import EXPERTS, expert_for, format_candidate, format_json

HAS = {
    "alfworld": all(importlib.util.find_spec(m) is not None for m in ("alfworld", "textworld")),
    "babyai": importlib.util.find_spec("minigrid") is not None,
    "virtualhome": importlib.util.find_spec("virtualhome") is not None,
}
#: Small frames: the experts read text, and drawing 300 px frames is most of a BabyAI step.
FAST = {"alfworld": {}, "babyai": {"image_size": 64}, "virtualhome": {"image_size": 64}}
ENVS = [pytest.param(name, marks=pytest.mark.skipif(not HAS[name], reason=f"needs the {name} simulator"))
        for name in ("alfworld", "babyai", "virtualhome")]  # fmt: skip


def spy_on_wrong(expert):
    """Record ``(best, played)`` each time noise replaces the expert's choice."""
    seen, wrong = [], expert.wrong

    def spy(state, best, legal, rng):
        step = wrong(state, best, legal, rng)
        seen.append((best, step))
        return step

    expert.wrong = spy
    return seen


def play(env, expert, seeds, rng):
    """Play one episode per seed as the collection command does; return the final infos and every
    ``(obs_text, info, step)``."""
    finals, steps = [], []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        expert.observe_env(env)
        done = False
        while not done:
            step = expert.act(obs["text"], info, info["legal_actions"], rng)
            steps.append((obs["text"], info, step))
            obs, _, terminated, truncated, info = env.step(step.action)
            done = terminated or truncated
        finals.append(info)
    return finals, steps


@pytest.fixture(scope="module")
def envs():
    """One env per simulator (ALFWorld: the stored plan; a replanning one for noise), closed at the end."""
    built = {}

    def get(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = make_env(name, **FAST[name], **kwargs)
        return built[key]

    yield get
    for env in built.values():
        env.close()


def last_sentence(thoughts: str) -> str:
    return re.split(r"(?<=[.!?]) (?=[A-Z])", thoughts)[-1]


def argues_for(name: str, step) -> bool:
    """The thoughts' conclusion names the step's action: its objects (ALFWorld, VirtualHome) or its verb phrase."""
    reason = last_sentence(step.thoughts)
    action = step.action
    if name == "babyai":
        phrase = {"pick up": "pick it up", "drop": "drop it", "toggle": "toggle it"}.get(action, f"so I {action}")
        return reason.endswith(phrase + ".")
    if name == "alfworld":
        names = re.findall(r"[a-z]+ \d+", action)
        return all(n in reason for n in names) if names else {"look": "look", "inventory": "carrying",
                                                               "help": "help"}[action] in reason  # fmt: skip
    verb = re.match(r"walk to|grab|open|close|switch on|switch off|sit on|put|stand up", action).group(0)
    rest = action[len(verb) :].strip()
    objects = re.split(r" (?:on|in) ", rest) if verb == "put" else [rest] if rest else []
    return verb.split()[0] in reason and all(o in reason for o in objects)


@pytest.mark.parametrize("name, episodes", [("alfworld", 6), ("babyai", 20), ("virtualhome", 30)])
def test_noise_zero_wins_every_seeded_episode(envs, name, episodes):
    if not HAS[name]:
        pytest.skip(f"needs the {name} simulator")
    env, expert = envs(name), expert_for(name)
    finals, steps = play(env, expert, range(episodes), np.random.default_rng(0))
    assert all(info["success"] for info in finals), [info["goal"] for info in finals if not info["success"]]
    for _, info, step in steps:
        text = format_json(step, expert.fields)
        assert list(json.loads(text)) == ["thoughts", "action"]
        # "strict": RL4VLM's substring rule cannot tell "walk to tv" from "walk to tvstand" (or "go to cabinet 1"
        # from "go to cabinet 10"), whoever writes the reply
        assert parse_action(text, info["legal_actions"], rule="strict") == step.action == format_candidate(step)
        assert step.correct and argues_for(name, step), step
        assert info["goal"].rstrip(".").lower() in step.thoughts.lower()  # the thoughts restate the task


@pytest.mark.parametrize("name", ENVS)
def test_noise_plays_wrong_legal_actions_that_the_thoughts_argue_for(envs, name):
    p = 0.3
    expert = expert_for(name, noise=p)
    env = envs(name, **expert.env_kwargs({}))
    replaced = spy_on_wrong(expert)
    episodes = {"alfworld": 6, "babyai": 25, "virtualhome": 40}[name]
    _, steps = play(env, expert, range(100, 100 + episodes), np.random.default_rng(1))
    wrong = [not step.correct for *_, step in steps]
    n = len(steps)
    assert abs(np.mean(wrong) - p) < 4 * math.sqrt(p * (1 - p) / n), (np.mean(wrong), n)
    replaced = [(best, step) for best, step in replaced if step is not best]  # (no other legal action: kept)
    assert [step for _, step in replaced] == [step for *_, step in steps if not step.correct]
    for best, step in replaced:
        assert step.action != best.action and not step.correct
        assert argues_for(name, step), step
    for _, info, step in steps:
        assert step.action in info["legal_actions"]
        assert parse_action(format_json(step, expert.fields), info["legal_actions"], rule="strict") == step.action


@pytest.mark.parametrize("name", ENVS)
def test_noise_knob_makes_demonstrations_worse(envs, name):
    """Noisy episodes take more steps (BabyAI's bot and ALFWorld's replanner recover) or fail (VirtualHome: 10
    steps leave little room)."""
    seeds = {"alfworld": range(4), "babyai": range(20), "virtualhome": range(30)}[name]
    runs = {}
    for noise in (0.0, 0.5):
        expert = expert_for(name, noise=noise)
        env = envs(name, **expert.env_kwargs({}))
        finals, steps = play(env, expert, seeds, np.random.default_rng(2))
        runs[noise] = (np.mean([f["success"] for f in finals]), len(steps) / len(seeds))
    (clean_rate, clean_len), (noisy_rate, noisy_len) = runs[0.0], runs[0.5]
    assert clean_rate == 1.0
    assert noisy_len > clean_len * 1.3 or noisy_rate < clean_rate - 0.2, runs


@pytest.mark.skipif(not HAS["alfworld"], reason="needs alfworld and textworld")
def test_alfworld_noise_needs_the_replanning_env(envs):
    assert expert_for("alfworld").env_kwargs({}) == {}
    assert expert_for("alfworld", noise=0.2).env_kwargs({"split": "eval"}) == {"split": "eval", "replan": True}
    with pytest.raises(ConfigError, match="replan"):
        expert_for("alfworld", noise=0.2).env_kwargs({"replan": False})
    # Off the stored plan, an env without replanning has no plan left to follow: a clear error, not a guess.
    env, expert = envs("alfworld"), expert_for("alfworld")
    obs, info = env.reset(seed=0)
    off_plan = next(a for a in info["legal_actions"] if a.startswith("go to ") and a != info["expert_plan"][0])
    obs, *_, info = env.step(off_plan)
    with pytest.raises(ValueError, match="replan=True"):
        expert.act(obs["text"], info, info["legal_actions"], np.random.default_rng(0))


@pytest.mark.skipif(not HAS["alfworld"], reason="needs alfworld and textworld")
def test_alfworld_thoughts_read_place_and_hands_off_the_commands(envs):
    env, expert = envs("alfworld"), expert_for("alfworld")
    obs, info = env.reset(seed=0, options={"task": 3})  # shipped game: put a hot plate in the sinkbasin
    assert info["expert_plan"][:2] == ["go to countertop 3", "take plate 1 from countertop 3"]
    first = expert.act(obs["text"], info, info["legal_actions"], np.random.default_rng(0))
    assert "middle of the room, with empty hands" in first.thoughts
    assert "A plate could be at the countertop 3, so I go there to look." in first.thoughts
    for command in info["expert_plan"][:2]:
        obs, *_, info = env.step(command)
    step = expert.act(obs["text"], info, info["legal_actions"], np.random.default_rng(0))
    assert "I am at the countertop 3, holding the plate 1." in step.thoughts
    assert step.action == "go to microwave 1" and "heat the plate 1" in step.thoughts


@pytest.mark.skipif(not HAS["babyai"], reason="needs minigrid")
def test_babyai_expert_needs_the_env_and_reads_the_text_view(envs):
    env, expert = envs("babyai"), expert_for("babyai")
    obs, info = env.reset(seed=0)
    with pytest.raises(RuntimeError, match="observe_env"):
        expert.act(obs["text"], info, info["legal_actions"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="text_state=True"):
        expert.act("", info, info["legal_actions"], np.random.default_rng(0))
    expert.observe_env(env)
    step = expert.act(obs["text"], info, info["legal_actions"], np.random.default_rng(0))
    assert step.thoughts.startswith(f"The mission is to {info['goal']}. In front of me is ")


@pytest.mark.skipif(not HAS["virtualhome"], reason="needs virtualhome")
def test_virtualhome_thoughts_say_what_is_in_sight(envs):
    env, expert = envs("virtualhome"), expert_for("virtualhome")
    obs, info = env.reset(seed=0, options={"scene": "apartment_1", "start_room": "livingroom",
                                           "task": "Pick up the apple."})  # fmt: skip
    expert.observe_env(env)
    rng = np.random.default_rng(0)
    actions, thoughts = [], []
    while not info["success"]:
        step = expert.act(obs["text"], info, info["legal_actions"], rng)
        actions.append(step.action)
        thoughts.append(step.thoughts)
        obs, *_, info = env.step(step.action)
    assert actions == ["walk to kitchen", "walk to fridge", "open fridge", "grab apple"]  # tests/test_virtualhome.py
    assert "The apple is not in sight. The apple may be in the kitchen, so I walk there." in thoughts[0]
    assert "The apple may be inside the fridge, so I open it." in thoughts[2]
    assert "The apple (in fridge) is close to me." in thoughts[3]


def test_registry_and_bad_collection_settings(tmp_path):
    assert {"alfworld", "babyai", "virtualhome"} <= set(EXPERTS)
    with pytest.raises(ConfigError, match="text_state=True"):
        expert_for("babyai").env_kwargs({"text_state": False})
    for bad in ("[1, 2]", "{not json"):
        with pytest.raises(ConfigError, match="JSON object"):
            main(["--env", "numberline", "--episodes", "1", "--env-kwargs", bad, "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):  # argparse lists the envs with an expert
        main(["--env", "ai2thor", "--episodes", "1", "--out", str(tmp_path / "y")])


@pytest.mark.parametrize("name", ENVS)
def test_collect_command_writes_a_store(tmp_path, capsys, name):
    out = tmp_path / name
    noise = "0.3" if name == "alfworld" else "0.0"  # noisy ALFWorld: the command turns the env's replanning on
    main(["--env", name, "--episodes", "2", "--batch", "1", "--noise", noise, "--out", str(out),
          "--env-kwargs", json.dumps(FAST[name])])  # fmt: skip
    store = TrajectoryStore(out)
    episodes = store.read()
    assert len(store) == 2 and "2 episodes" in capsys.readouterr().out
    expected = {**FAST[name], **({"replan": True} if name == "alfworld" else {})}
    assert store.metadata["env"] == name and store.metadata["env_kwargs"] == expected
    for episode in episodes:
        assert episode.steps and episode.ground_truth == {}  # training reads no ground truth
        for step in episode.steps:
            reply = json.loads(step.response)
            assert reply["action"] == step.action and reply["thoughts"]
            assert step.prompt and step.frame.dtype == np.uint8


@pytest.mark.skipif(not HAS["virtualhome"], reason="needs the virtualhome simulator")
def test_collection_records_the_training_configs_prompts(tmp_path, monkeypatch):
    """``--config``: the demonstrations carry the config's reply format and template (with the episode's
    instruction) and its env settings, so SFT trains on the prompts and tasks its policy will see; the default template warns that it hides the
    instruction, and a config whose action space no expert writes for is refused in one line."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    config = "configs/rl4vlm_cpu/sft_virtualhome.yaml"
    main(["--env", "virtualhome", "--episodes", "2", "--config", config, "--out", str(tmp_path / "vh"),
          "--env-kwargs", json.dumps(FAST["virtualhome"])])  # fmt: skip
    store = TrajectoryStore(tmp_path / "vh")
    assert store.metadata["policy"] == "expert(noise=0.0, reply=candidates)"
    assert store.metadata["env_kwargs"] == {"max_steps": 10, "task_kinds": ["pick up", "open", "switch on", "sit on"], **FAST["virtualhome"]}
    for episode in store.read():
        game = make_env("virtualhome", **FAST["virtualhome"])
        _, info = game.reset(seed=episode.seed)
        step = episode.steps[0]
        assert f"\nInstruction: {info['goal']}\n" in step.prompt and step.prompt.endswith("Answer with one legal action.")
        assert all(s.response == s.action for s in episode.steps)  # candidate replies: the bare action
    with pytest.warns(UserWarning, match="no {goal} field"):
        main(["--env", "virtualhome", "--episodes", "1", "--out", str(tmp_path / "bare"),
              "--env-kwargs", json.dumps(FAST["virtualhome"])])  # fmt: skip
    bad = tmp_path / "latent.yaml"
    bad.write_text("model:\n  init_args:\n    action_space:\n      class_path: selu_lightning.action_spaces.LatentActionSpace\n")
    with pytest.raises(ConfigError, match="experts write for"):
        main(["--env", "virtualhome", "--episodes", "1", "--config", str(bad), "--out", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="trains on env 'virtualhome', not 'babyai'"):
        main(["--env", "babyai", "--episodes", "1", "--config", config, "--out", str(tmp_path / "y")])
