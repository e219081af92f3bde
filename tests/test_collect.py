"""Demonstrations and training episodes reach a TrajectoryStore; ground truth stays apart."""

import numpy as np

from selu_lightning.action_spaces.parsing import parse_action
from selu_lightning.data.collect import collect_expert_episodes, main
from selu_lightning.data.store import TrajectoryStore

from helpers import cpu_trainer, tiny_data, tiny_module


def test_expert_demonstrations_parse_back_to_their_actions_and_win():
    episodes = list(collect_expert_episodes("numberline", 20, noise=0.0, seed=3))
    assert len(episodes) == 20 and all(e.ground_truth["success"] for e in episodes)
    for episode in episodes:
        assert episode.seed is not None and episode.final_frame is not None
        for step in episode.steps:
            assert parse_action(step.response, ["+", "-"]) == step.action
            assert "NumberLine" in step.prompt and step.frame.dtype == np.uint8
    again = list(collect_expert_episodes("numberline", 20, noise=0.0, seed=3))
    assert [s.response for e in again for s in e.steps] == [s.response for e in episodes for s in e.steps]


def test_noisy_demonstrations_fail_some_episodes():
    episodes = list(collect_expert_episodes("numberline", 60, noise=0.5, seed=0))
    rate = np.mean([e.ground_truth["success"] for e in episodes])
    assert 0.05 < rate < 0.9


def test_collect_command_writes_a_store(tmp_path, capsys):
    main(["--env", "blackjack", "--episodes", "7", "--batch", "3", "--out", str(tmp_path / "demos"), "--reply", "candidates"])
    store = TrajectoryStore(tmp_path / "demos")
    episodes = store.read()
    assert len(store) == 7 and all(e.ground_truth == {} for e in episodes)  # training reads no ground truth
    assert all(s.response == s.action for e in episodes for s in e.steps)
    assert "7 episodes" in capsys.readouterr().out


def test_training_episodes_are_recorded_when_asked(tmp_path):
    data = tiny_data(record_to=str(tmp_path / "episodes"))
    cpu_trainer(tmp_path, max_epochs=2).fit(tiny_module(), data)
    store = TrajectoryStore(tmp_path / "episodes" / "rank0")
    finished = len(store)
    assert finished > 0 and finished == len({e.episode_id for e in store.read()})
    assert all(len(e.steps) >= 1 and e.final_frame is not None for e in store.read())


def test_predict_stores_the_episodes_a_checkpoint_plays(tmp_path, monkeypatch):
    """Collection from any policy: ``selu predict`` with ``data.record_to`` stores every held-out episode with
    the policy's own prompts and responses, seeds and ground truth apart, and they match its JSON records."""
    import json

    from pathlib import Path

    from selu_lightning.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    runs = tmp_path / "runs"
    main(["fit", "-c", "configs/quickstart.yaml", "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={runs}",
          "--trainer.enable_progress_bar=false", "--data.steps_per_epoch=16", "--data.num_envs=4"])  # fmt: skip
    ckpt = next(runs.rglob("last.ckpt"))
    main(["predict", "-c", "configs/quickstart.yaml", f"--ckpt_path={ckpt}", f"--trainer.logger.init_args.save_dir={runs}",
          "--trainer.enable_progress_bar=false", "--data.test_episodes=6", f"--data.record_to={tmp_path / 'played'}"])  # fmt: skip
    store = TrajectoryStore(tmp_path / "played" / "rank0")
    played = {t.seed: t for t in store.read(with_ground_truth=True)}
    records = [json.loads(line) for line in next(runs.rglob("predictions.jsonl")).read_text().splitlines()]
    assert len(played) == len(records) == 6
    for r in records:
        t = played[r["seed"]]
        assert len(t.steps) == r["length"] and t.env_return == r["return"]
        assert t.ground_truth["success"] == bool(r["success"])
        assert all(s.prompt and s.response and s.frame is not None for s in t.steps)
    assert store.metadata["env"] == "numberline"
