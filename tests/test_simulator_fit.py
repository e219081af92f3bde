"""One epoch of the tiny model with CandidateActionSpace on each household simulator, through `selu fit`."""

import importlib.util

import pytest

from selu_lightning.cli import main

NEEDS = {"alfworld": "alfworld", "babyai": "minigrid", "virtualhome": "virtualhome"}


@pytest.mark.parametrize("env", sorted(NEEDS))
def test_one_epoch_on_each_simulator(env, tmp_path, monkeypatch):
    if importlib.util.find_spec(NEEDS[env]) is None:
        pytest.skip(f"{NEEDS[env]} is not installed")
    monkeypatch.chdir(tmp_path)
    args = [
        "fit", "-c", str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs/quickstart.yaml"),
        f"--data.env={env}", "--trainer.max_epochs=1", "--data.num_envs=2", "--data.steps_per_epoch=4",
        "--model.minibatch_size=4", "--model.ppo_epochs=1", "--data.val_episodes=2",
        "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
        "--model.action_space.template={goal}\n{state}\nLegal actions: {actions}\nAnswer:",
    ]  # fmt: skip
    if env == "babyai":
        args.append("--data.env_kwargs={max_steps: 8}")
    main(args)
    from selu_lightning.tb import read_scalars

    logged = read_scalars(tmp_path / "runs")
    assert logged["train/env_steps"][-1][1] == 4.0
    assert "val/success_rate" in logged
