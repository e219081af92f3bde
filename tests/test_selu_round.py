"""SELU's round: the perception prior's questions, relabeled episodes for the actor, self-consistency votes, ground
truth never reaching a training example, and whole rounds on tiny settings (VirtualHome; AI2-THOR through the stub
player), resumed stage by stage."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from selu_lightning.critic.actor_data import actor_episodes, relabel_episode
from selu_lightning.critic.prior import scene_examples
from selu_lightning.critic.questions import DEFAULT_TEMPLATES
from selu_lightning.data.trajectories import StepRecord, Trajectory
from selu_lightning.modules.critic import vote_fraction

needs_virtualhome = pytest.mark.skipif(importlib.util.find_spec("virtualhome") is None, reason="needs virtualhome")
ROOT = Path(__file__).resolve().parent.parent

KITCHEN = ("You are in the kitchen, standing, holding apple.\nClose to you: fridge (open), stove (closed, off).\n"
           "You see: tv (on), chair.\nOther rooms: bedroom.")


def episode(goal: str, observation: str = KITCHEN, success: bool = False, eid: str = "e0") -> Trajectory:
    step = StepRecord(None, observation, f"Task\nInstruction: {goal}\n{observation}", "open fridge", "open fridge", 1.0)
    return Trajectory(eid, 0, goal, [step], None, observation, ground_truth={"success": success})


# ---------------------------------------------------------------------- the perception prior
@needs_virtualhome
def test_scene_questions_are_answered_from_the_observation_text_only():
    from selu_lightning.envs.virtualhome import VirtualHomeEnv

    templates = DEFAULT_TEMPLATES["virtualhome"]
    traj = episode("Switch on the stove.")
    examples = scene_examples([traj], "virtualhome", VirtualHomeEnv, templates, np.random.default_rng(0), 2)
    got = {(e.question, e.answer) for e in examples}
    # yes from the listed states, no for an object not in that state, which -> the object's name
    assert ("Is the fridge open?", "Yes".lower()) in {(q, a.lower()) for q, a in got}
    assert ("Is the person holding the apple?", "yes") in got and ("Which object is the person holding?", "apple") in got
    assert ("Which object is switched on?", "tv") in got
    no = {q for q, a in got if a == "no"}
    assert no and all(q.startswith(("Is the", "What", "Which")) for q in no)
    assert "Is the stove switched on?" not in {q for q, a in got if a == "yes"}
    # never the episode's instruction nor its success: shuffled ground truth or another goal changes nothing
    other = dataclasses.replace(traj, goal="Open the fridge.", ground_truth={"success": True})
    again = scene_examples([other], "virtualhome", VirtualHomeEnv, templates, np.random.default_rng(0), 2)
    assert [(e.question, e.answer) for e in again] == [(e.question, e.answer) for e in examples]
    with pytest.raises(ValueError, match="no scene states"):
        scene_examples([traj], "numberline", VirtualHomeEnv, templates, np.random.default_rng(0))


# ---------------------------------------------------------------------- relabeled episodes for the actor
def test_relabeled_episode_has_the_new_instruction_in_every_prompt():
    traj = episode("Open the stove.", eid="e7")
    new = relabel_episode(traj, "Open the fridge.")
    assert new.goal == "Open the fridge." and new.episode_id == "e7@Open the fridge."
    assert "Instruction: Open the fridge." in new.steps[0].prompt and "stove." not in new.steps[0].prompt.split("\n")[1]
    assert new.steps[0].response == traj.steps[0].response and traj.goal == "Open the stove."  # original untouched
    assert relabel_episode(traj, traj.goal) is traj
    blind = dataclasses.replace(traj, steps=[dataclasses.replace(traj.steps[0], prompt="no instruction here")])
    with pytest.raises(ValueError, match="without \\{goal\\}"):
        relabel_episode(blind, "Open the fridge.")
    kept = actor_episodes([traj, episode("Open the tv.", eid="e8")], {"e7": ["Open the stove.", "Open the fridge."]})
    assert [t.episode_id for t in kept] == ["e7", "e7@Open the fridge."]
    assert all(t.ground_truth == {} for t in kept)  # what the actor trains on carries no ground truth


# ---------------------------------------------------------------------- self-consistency
def test_vote_fraction_counts_yes_among_yes_and_no_votes():
    logits = torch.full((3, 5), -1e4)
    logits[0, 1] = 0.0  # always yes
    logits[1, 2] = 0.0  # always no
    logits[2, 4] = 0.0  # always another word: a tie
    p = vote_fraction(logits, yes_id=1, no_id=2, samples=7, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert p.tolist() == [1.0, 0.0, 0.5]
    even = torch.zeros(1, 5)
    even[0, 3:] = -1e4  # yes / no / the token 0 equally likely
    p = vote_fraction(even, 1, 2, 3000, 1.0, torch.Generator().manual_seed(0))
    assert abs(float(p) - 0.5) < 0.05


# ---------------------------------------------------------------------- whole rounds
def tiny_round(tmp_path: Path, **overrides) -> dict:
    cfg = {
        "actor": str(ROOT / "configs/selu/actor_virtualhome.yaml"), "critic": str(ROOT / "configs/selu/critic_virtualhome.yaml"),
        "out": str(tmp_path / "out"), "env_kwargs": {"scenes": ["apartment_1"], "image_size": 64},
        "episodes": 6, "eval_episodes": 4, "critic_eval_episodes": 6, "critic_epochs": 1, "actor_epochs": 1,
        "prior": {"env_kwargs": {"scenes": ["apartment_3"]}, "episodes": 6, "actor_epochs": 1, "critic_epochs": 1},
        # 6 episodes: with the recipe's negatives (relabeled) an untrained critic may label none of them
        "critic_overrides": ["--model.labeling.negatives=rejected"],
    }  # fmt: skip
    return cfg | overrides


def run_round(tmp_path: Path, cfg: dict, *extra: str) -> str:
    from selu_lightning.selu_round import main

    path = tmp_path / "round.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["-c", str(path), *extra])
    return cfg["out"]


@needs_virtualhome
def test_a_virtualhome_round_runs_then_resumes_stage_by_stage(tmp_path, capsys):
    out = run_round(tmp_path, tiny_round(tmp_path))
    results = json.loads(Path(out, "selu/results.json").read_text())
    assert set(results["base"]) == {"actor_success", "critic_accuracy", "critic_f1", "critic_auroc", "critic_p_yes"}
    (scores,) = results["rounds"]
    assert 0.0 <= scores["critic_accuracy"] <= 1.0 and 0.0 <= scores["actor_success"] <= 1.0
    assert scores["episodes"] == 6 and "relabel_rate" in scores
    for stage in ("prior/critic_episodes", "prior/actor", "prior/critic", "base/critic_heldout", "round1/collect",
                  "selu/round1/critic", "selu/round1/label"):  # fmt: skip
        assert Path(out, stage, "stage.json").is_file(), stage
    assert list(Path(out, "selu/summary").glob("events.out.tfevents.*"))
    # a rerun finishes nothing twice; a stage that never wrote stage.json (killed) is run again, from scratch
    capsys.readouterr()
    Path(out, "selu/round1/critic_test/stage.json").unlink()
    Path(out, "selu/round1/critic_test/leftover").write_text("from the killed run")
    run_round(tmp_path, tiny_round(tmp_path))
    log = capsys.readouterr().out
    assert "selu/round1/critic_test: started" in log and "prior/actor: done before, skipped" in log
    assert log.count(": started") == 1 and not Path(out, "selu/round1/critic_test/leftover").exists()
    again = json.loads(Path(out, "selu/results.json").read_text())
    assert again["rounds"][0]["critic_accuracy"] == scores["critic_accuracy"]
    # other settings on the same folder are refused in one line (finished stages would not fit them)
    with pytest.raises(SystemExit) as refused:
        run_round(tmp_path, tiny_round(tmp_path, episodes=7))
    assert refused.value.code == 2 and "episodes differ" in capsys.readouterr().err
    # another variant reuses the priors, the held-out episodes and round 1's episodes
    run_round(tmp_path, tiny_round(tmp_path, variant="oracle"))
    log = capsys.readouterr().out
    assert "round1/collect: done before, skipped" in log and "oracle/round1/critic: started" in log
    assert json.loads(Path(out, "oracle/results.json").read_text())["base"] == results["base"]


def stage_configs(tmp_path: Path, **trainer) -> dict:
    """Copies of the VirtualHome actor and critic configs with these trainer settings."""
    paths = {}
    for key in ("actor", "critic"):
        config = yaml.safe_load((ROOT / f"configs/selu/{key}_virtualhome.yaml").read_text())
        config["trainer"] |= trainer
        paths[key] = tmp_path / f"{key}.yaml"
        paths[key].write_text(yaml.safe_dump(config))
    return {key: str(path) for key, path in paths.items()}


@needs_virtualhome
def test_a_stage_that_would_start_its_own_processes_is_refused(tmp_path, capsys):
    """Lightning's launcher would start copies of selu-round, not of the stage: torchrun is the way."""
    cfg = tiny_round(tmp_path, **stage_configs(tmp_path, devices=2, strategy="ddp"))
    with pytest.raises(SystemExit) as refused:
        run_round(tmp_path, cfg)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "would start 2 processes" in err and "torchrun" in err
    assert not Path(cfg["out"], "prior/critic/stage.json").exists()


@pytest.mark.slow
@needs_virtualhome
def test_a_round_under_torchrun_on_two_processes(tmp_path):
    """Two CPU processes (gloo): every Lightning stage is one DDP fit/test/predict over both, the rest runs
    on rank 0, and the round's outputs are those of one run."""
    import os
    import subprocess

    cfg = tiny_round(tmp_path, **stage_configs(tmp_path, devices=2, strategy="ddp", enable_progress_bar=False),
                     episodes=8, critic_eval_episodes=8)  # fmt: skip
    path = tmp_path / "round.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = Path(cfg["out"])
    for variant in ("selu", "unfiltered"):  # the critic's fit and labeling; the actor's SFT on every episode
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={20000 + os.getpid() % 20000}", "-m", "selu_lightning.selu_round", "-c", str(path),
               f"--variant={variant}"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
        (scores,) = json.loads((out / variant / "results.json").read_text())["rounds"]
        assert 0.0 <= scores["actor_success"] <= 1.0
        assert proc.stdout.count(f"selu-round: {variant}/round1/label: started") == 1  # once, on rank 0
    assert sorted(p.name for p in (out / "round1/collect/episodes").iterdir()) == ["rank0", "rank1"]
    assert json.loads((out / "selu/results.json").read_text())["rounds"][0]["episodes"] == 8  # both ranks' episodes
    assert scores["actor_episodes"] == 8 and Path(out, "unfiltered/round1/actor/final.ckpt").is_file()


@needs_virtualhome
def test_ground_truth_reaches_no_critic_or_actor_example(tmp_path):
    """Invariant 7: with every episode's success flipped, the critic labels the same examples and hands the
    actor the same episodes (the oracle baseline is the one that reads it, and does change)."""
    from selu_lightning.data.store import TrajectoryStore
    from selu_lightning.selu_round import RoundConfig, _accepted, _Runner

    out = run_round(tmp_path, tiny_round(tmp_path))
    (store,) = Path(out, "round1/collect/episodes").glob("rank*")
    episodes = TrajectoryStore(store).read(with_ground_truth=True)
    flipped = [dataclasses.replace(t, ground_truth={"success": not t.ground_truth["success"]}) for t in episodes]
    cfg = RoundConfig(**{k: v for k, v in tiny_round(tmp_path).items() if k != "prior"})
    critic = str(Path(out, "selu/round1/critic/final.ckpt"))
    run = _Runner(cfg)
    a = _accepted(run, cfg, critic, [], episodes, str(tmp_path / "a"))
    b = _accepted(run, cfg, critic, [], flipped, str(tmp_path / "b"))
    assert a == b
    oracle = dataclasses.replace(cfg, variant="oracle")
    assert _accepted(run, oracle, None, [], episodes, "")[0] != _accepted(run, oracle, None, [], flipped, "")[0]


def test_ai2thor_round_through_the_stub_player(tmp_path, monkeypatch):
    """The paper's setting end to end with a stand-in for Unity (tests/stub_thor_player.py, a test double): no
    prior (a real MLLM brings its own), tiny models instead of the recipe's 7B ones."""
    pytest.importorskip("ai2thor.controller")
    sys.path.insert(0, str(Path(__file__).parent))
    import stub_thor_player

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    recipe = yaml.safe_load((ROOT / "configs/selu/round_ai2thor.yaml").read_text())
    tiny = {"model_name_or_path": "tiny:llava", "dtype": "float32", "lora": None, "gradient_checkpointing": False}
    for key in ("actor", "critic"):
        cfg = yaml.safe_load((ROOT / recipe[key]).read_text())
        cfg["model"]["init_args"]["policy"] |= tiny
        cfg["trainer"] |= {"accelerator": "cpu"}
        cfg["data"]["init_args"].setdefault("env_kwargs", {})
        (tmp_path / f"{key}.yaml").write_text(yaml.safe_dump(cfg))
        recipe[key] = str(tmp_path / f"{key}.yaml")
    env_kwargs = {"local_executable_path": stub_thor_player.launcher(str(tmp_path)), "x_display": ":0",
                  "image_size": 64, "max_steps": 4, "scenes": ["FloorPlan1"]}  # fmt: skip
    recipe |= {"out": str(tmp_path / "out"), "env_kwargs": env_kwargs, "episodes": 4, "eval_episodes": 2,
               "critic_eval_episodes": 4, "critic_epochs": 1, "actor_epochs": 1,
               "critic_overrides": ["--model.labeling.negatives=rejected"]}  # 4 episodes: one example each  # fmt: skip
    out = run_round(tmp_path, recipe)
    results = json.loads(Path(out, "selu/results.json").read_text())
    assert results["rounds"][0]["episodes"] == 4
    assert 0.0 <= results["rounds"][0]["actor_success"] <= 1.0


@needs_virtualhome
def test_the_ppo_route_rewards_the_actor_with_the_critic(tmp_path):
    """``actor_update: ppo``: PPO from the base actor with the round's critic as its reward source, then scored
    with the PPO config (its checkpoint has a value head the SFT config does not). 12 steps per env: every env
    finishes an episode (at most 10 steps), so the critic judges."""
    cfg = tiny_round(tmp_path, actor_update="ppo", ppo=str(ROOT / "configs/selu/ppo_virtualhome.yaml"),
                     ppo_overrides=["--trainer.max_epochs=1", "--data.num_envs=4", "--data.steps_per_epoch=48",
                                    "--data.val_episodes=4", "--data.eval_num_envs=4", "--model.minibatch_size=4"])
    out = run_round(tmp_path, cfg)
    results = json.loads(Path(out, "selu_ppo/results.json").read_text())
    assert 0.0 <= results["rounds"][0]["actor_success"] <= 1.0
    saved = torch.load(Path(out, "selu_ppo/round1/actor/final.ckpt"), map_location="cpu", weights_only=False)
    assert any("value_head" in k for k in saved["state_dict"])  # PPO's, trained with the critic's reward
    config = yaml.safe_load(Path(out, "selu_ppo/round1/actor/config.yaml").read_text())
    critic = config["model"]["init_args"]["reward"]["init_args"]["critic"]["init_args"]["policy"]["init_from"]
    assert critic == str(Path(out, "selu_ppo/round1/critic/final.ckpt"))
