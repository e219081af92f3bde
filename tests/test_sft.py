"""ActorSFT: response-only cross-entropy, ground truth never read, a checkpoint that starts PPO, and it learns."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selu_lightning.action_spaces import TextActionSpace
from selu_lightning.data.collect import collect_expert_episodes
from selu_lightning.data.store import TrajectoryStore
from selu_lightning.errors import ConfigError
from selu_lightning.modules import ActorPPO, ActorSFT
from selu_lightning.policy.vlm import PolicyConfig
from selu_lightning.tb import last_value

from helpers import LossRecorder, cpu_trainer, tiny_data

SFT_CONFIG = "configs/rl4vlm_cpu/sft_numberline.yaml"
SFT_POLICY = PolicyConfig("tiny:llava", lora=None, freeze=["vision_tower"], value_head_widths=None)


def sft_module(**kwargs):
    return ActorSFT(SFT_POLICY, TextActionSpace(temperature=1.0, max_new_tokens=96), **kwargs)


def test_loss_is_the_mean_cross_entropy_of_response_tokens_only():
    module = sft_module(minibatch_size=4)
    module.configure_model()
    episodes = list(collect_expert_episodes("numberline", 2, seed=0))
    batch = next(iter(module.build_train_data(episodes)))
    loss = module.sft_loss(batch)
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


def test_equal_share_by_hand():
    from selu_lightning.modules.actor_sft import equal_share

    assert equal_share(list("abcde"), 0, 2) == ["a", "c", "e"]
    assert equal_share(list("abcde"), 1, 2) == ["b", "d", "b"]  # one short: its first item again
    assert equal_share(list("abcdef"), 2, 3) == ["c", "f"]
    with pytest.raises(ConfigError, match="cannot be shared"):
        equal_share(list("ab"), 2, 3)


def test_ranks_train_on_equal_disjoint_shares_of_the_steps():
    """Under DDP each rank encodes every world-th step; a rank one short repeats one, so both serve as many
    minibatches (one extra step on one rank would hang DDP) and an epoch is one pass over the data."""
    from collections import Counter
    from types import SimpleNamespace

    for seed in range(20):  # an odd number of steps: one rank is one short
        episodes = list(collect_expert_episodes("numberline", 3, noise=0.3, seed=seed))
        total = sum(len(e.steps) for e in episodes)
        if total % 2:
            break
    module = sft_module(minibatch_size=1000)
    module.configure_model()
    key = lambda s: (tuple(s["prompt"]["input_ids"].tolist()), tuple(s["response"].tolist()))  # noqa: E731
    everything = [key(s) for s in next(iter(module.build_train_data(episodes)))["samples"]]
    shares = []
    for rank in (0, 1):
        module._trainer = SimpleNamespace(global_rank=rank, world_size=2)
        shares.append([key(s) for s in next(iter(module.build_train_data(episodes)))["samples"]])
    module._trainer = None
    assert len(everything) == total and total % 2 == 1
    assert len(shares[0]) == len(shares[1]) == (total + 1) // 2
    served, steps = Counter(shares[0]) + Counter(shares[1]), Counter(everything)
    assert not steps - served and sum((served - steps).values()) == 1  # every step once, one of them twice


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


ROOT = Path(__file__).resolve().parents[1]
#: The SFT recipe's first 8 of 12 cosine epochs (RL4VLM's first stage stopped early, as the results tool does).
WEAKENED = ["--trainer.max_epochs=8", "--model.lr_schedule_updates=12"]
#: Held-out validation of every run here: 100 episodes, 50 at once.
EVAL = ["--data.val_episodes=100", "--data.eval_num_envs=50"]


def fit(config: str, *args: str) -> None:
    """``selu fit`` as the README runs it, in a subprocess."""
    cmd = [sys.executable, "-m", "selu_lightning", "fit", "-c", config, "--trainer.enable_progress_bar=false", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def weakened_sft(tmp_path_factory):
    """300 demonstrations (10% of steps wrong) and the SFT recipe stopped after 8 of its 12 epochs: its held-out
    success and a copy of its checkpoint (the SFT test resumes the run itself to 12 epochs)."""
    from selu_lightning.data.collect import main as collect

    tmp = tmp_path_factory.mktemp("sft")
    collect(["--env", "numberline", "--episodes", "300", "--noise", "0.1", "--out", str(tmp / "demos")])
    fit(SFT_CONFIG, f"--data.demonstrations={tmp / 'demos'}", f"--trainer.logger.init_args.save_dir={tmp / 'sft'}",
        *WEAKENED, *EVAL, "--trainer.check_val_every_n_epoch=8")  # fmt: skip
    ckpt = tmp / "sft_epoch8.ckpt"
    shutil.copy(next((tmp / "sft").rglob("last.ckpt")), ckpt)
    return {"dir": tmp, "success": last_value(tmp / "sft", "val/success_rate"), "ckpt": ckpt}


def test_sft_on_expert_numberline_demonstrations_learns_the_task(weakened_sft):
    """From a random tiny LLaVA (it never writes a parsable action, so it plays at the random policy's level,
    about 0.27) to >= 0.8 held-out success with RL4VLM's text actions, trained on scripted-expert
    demonstrations in which 10% of the steps are wrong. The README's commands, in a subprocess: the recipe's
    12 epochs, as its first 8 (``weakened_sft``) resumed with ``--ckpt_path last`` for the last 4."""
    import numpy as np

    from selu_lightning.envs.pool import EnvPool

    base = sft_module()
    base.configure_model()
    pool = EnvPool("numberline", 8, seed=5)
    pool.reset()
    decisions = base.decide(pool.states, pool.task_description, greedy=True, rng=np.random.default_rng(0))
    assert all(d.parse_failed for d in decisions)  # the base model's actions are random fallbacks

    tmp = weakened_sft["dir"]
    fit(SFT_CONFIG, f"--data.demonstrations={tmp / 'demos'}", f"--trainer.logger.init_args.save_dir={tmp / 'sft'}",
        "--trainer.max_epochs=12", "--model.lr_schedule_updates=12", "--ckpt_path=last",
        "--trainer.check_val_every_n_epoch=12", *EVAL)  # fmt: skip
    assert last_value(tmp / "sft", "val/success_rate") >= 0.8


def test_ppo_with_text_actions_improves_a_weakened_sft_policy(weakened_sft, tmp_path):
    """RL4VLM's second stage: from an SFT checkpoint stopped early (the first 8 epochs of the 12-epoch recipe:
    it reads the numbers but often compares them wrongly), PPO with text actions at RL4VLM's temperature and
    lambda raises held-out greedy success on the same held-out episodes. The README's commands, in subprocesses.

    16 updates, not 8: validated after every update (100 held-out episodes, 2026-12-01), an 8-update schedule went
    0.78, 0.86, 0.86, 0.86, 0.80, 0.80, 0.88, 0.75 (the greedy policy still switching answers at its end), and a
    16-update schedule from the same checkpoint 0.78-0.86 for 8 updates, then 0.99 at every update but one."""
    fit("configs/rl4vlm_cpu/ppo_numberline.yaml", f"--model.policy.init_from={weakened_sft['ckpt']}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'ppo'}", "--trainer.max_epochs=16",
        "--trainer.check_val_every_n_epoch=16", *EVAL)  # fmt: skip
    sft, ppo = weakened_sft["success"], last_value(tmp_path / "ppo", "val/success_rate")
    assert sft < 0.9  # weakened: room to improve
    assert ppo >= sft + 0.05, (sft, ppo)


def test_demonstrations_longer_than_max_new_tokens_are_named():
    """A reply the policy could not finish within max_new_tokens would lose its action: say so before training."""
    episodes = list(collect_expert_episodes("blackjack", 3, noise=0.0))
    module = ActorSFT(SFT_POLICY, TextActionSpace(temperature=1.0, max_new_tokens=20))
    module.configure_model()
    with pytest.warns(UserWarning, match="longer than model.action_space.init_args.max_new_tokens=20"):
        module.build_train_data(episodes)
    module = ActorSFT(SFT_POLICY, TextActionSpace(temperature=1.0, max_new_tokens=200))
    module.configure_model()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.build_train_data(episodes)
