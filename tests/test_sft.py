"""ActorSFT: response-only cross-entropy, ground truth never read, a checkpoint that starts PPO, and it learns."""

import dataclasses

import pytest
import torch

from selu_lightning.action_spaces import TextActionSpace
from selu_lightning.cli import main
from selu_lightning.data.collect import collect_expert_episodes
from selu_lightning.data.store import TrajectoryStore
from selu_lightning.errors import ConfigError
from selu_lightning.modules import ActorPPO, ActorSFT
from selu_lightning.policy.vlm import PolicyConfig
from selu_lightning.tb import last_value

from helpers import LossRecorder, cpu_trainer, tiny_data

SFT_POLICY = PolicyConfig("tiny:llava", lora=None, freeze=["vision_tower"], value_head_widths=None)


def sft_module(**kwargs):
    return ActorSFT(SFT_POLICY, TextActionSpace(temperature=1.0, max_new_tokens=96), **kwargs)


def test_loss_is_the_mean_cross_entropy_of_response_tokens_only():
    module = sft_module(minibatch_size=4)
    module.configure_model()
    episodes = list(collect_expert_episodes("numberline", 2, seed=0))
    batch = next(iter(module.build_train_data(episodes)))
    loss, _ = module.sft_loss(batch)
    samples = batch["samples"]
    with torch.no_grad():
        scored = module.policy.score([s["prompt"] for s in samples], [s["response"] for s in samples])
    by_hand = -torch.cat(scored.token_logprobs).mean()
    torch.testing.assert_close(loss.detach(), by_hand)
    eos = next(iter(module.policy.eos_token_ids))
    assert all(int(s["response"][-1]) == eos for s in samples)  # the model learns to stop


def test_training_examples_never_depend_on_ground_truth(tmp_path):
    """Invariant 7 for SFT: the same episodes with their ground-truth field shuffled give the same examples."""
    episodes = list(collect_expert_episodes("numberline", 6, noise=0.3, seed=1))
    flipped = [dataclasses.replace(e, ground_truth={"success": not e.ground_truth["success"]}) for e in episodes]
    TrajectoryStore(tmp_path / "a", env="numberline").append(episodes)
    TrajectoryStore(tmp_path / "b", env="numberline").append(flipped)
    module = sft_module(minibatch_size=100)
    module.configure_model()
    batches = [next(iter(module.build_train_data(list(TrajectoryStore(tmp_path / d).iter_trajectories()))))
               for d in "ab"]  # fmt: skip
    for x, y in zip(batches[0]["samples"], batches[1]["samples"]):
        assert torch.equal(x["response"], y["response"]) and torch.equal(x["prompt"]["input_ids"], y["prompt"]["input_ids"])


def test_an_sft_checkpoint_starts_ppo_by_one_key(tmp_path):
    """model.policy.init_from loads the SFT weights; PPO's value head starts fresh; the first ratio is 1."""
    sft = sft_module(minibatch_size=8)
    trainer = cpu_trainer(tmp_path, enable_checkpointing=True)
    store = tmp_path / "demos"
    TrajectoryStore(store, env="numberline").append(list(collect_expert_episodes("numberline", 4, seed=2)))
    from selu_lightning.data import DemonstrationDataModule

    trainer.fit(sft, DemonstrationDataModule(str(store), env="numberline", num_envs=4, steps_per_epoch=8, val_episodes=4))
    ckpt = tmp_path / "sft.ckpt"
    trainer.save_checkpoint(ckpt)

    policy = dataclasses.replace(SFT_POLICY, value_head_widths=[16], init_from=str(ckpt))
    ppo = ActorPPO(policy, TextActionSpace(temperature=1.0, max_new_tokens=24), minibatch_size=8, lr=1e-3)
    ppo.configure_model()
    trained = {k: v for k, v in sft.policy.state_dict().items()}
    loaded = ppo.policy.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    assert any(k.startswith("value_head") for k in loaded)
    rec = LossRecorder(ppo)
    cpu_trainer(tmp_path / "ppo").fit(ppo, tiny_data())
    assert rec.stats[0]["ratio_max_abs_log"] < 1e-4

    with pytest.raises(ConfigError, match="init_from was trained with model.policy.model_name_or_path"):
        ActorPPO(dataclasses.replace(policy, model_name_or_path="tiny:idefics3")).configure_model()
    with pytest.raises(ConfigError, match="is not a checkpoint file"):
        dataclasses.replace(policy, init_from=str(tmp_path / "missing.ckpt"))


def test_sft_on_expert_numberline_demonstrations_learns_the_task(tmp_path, monkeypatch):
    """From a random tiny LLaVA (it never writes a parsable action) to >= 0.8 held-out success with RL4VLM's
    text actions, trained on scripted-expert demonstrations in which 10% of the steps are wrong."""
    from selu_lightning.data.collect import main as collect

    monkeypatch.chdir(tmp_path)
    collect(["--env", "numberline", "--episodes", "300", "--noise", "0.1", "--out", "demos"])
    common = ["-c", str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs/rl4vlm_cpu/sft_numberline.yaml"),
              "--data.demonstrations=demos", "--trainer.logger.init_args.save_dir=runs",
              "--trainer.enable_progress_bar=false", "--data.val_episodes=50"]  # fmt: skip
    with pytest.warns(UserWarning, match="without --ckpt_path"):
        main(["validate", *common])
    base = last_value("runs", "val/success_rate")
    main(["fit", *common, "--trainer.check_val_every_n_epoch=12"])
    trained = last_value("runs", "val/success_rate")
    assert base < 0.5 and trained >= 0.8, (base, trained)
