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
