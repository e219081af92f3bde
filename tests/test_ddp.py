"""A real 2-process CPU DDP fit through the `selu` command (gloo backend)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from selu_lightning.tb import read_scalars

ROOT = Path(__file__).resolve().parents[1]


def selu_ddp(tmp_path, config, *extra, timeout=600):
    """``selu fit`` on 2 CPU processes (progress bar on, as a user runs it); returns the logged scalars."""
    cmd = [
        sys.executable, "-m", "selu_lightning", "fit", "-c", config,
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        f"--trainer.logger.init_args.save_dir={tmp_path}", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return {tag: [v for _, v in points] for tag, points in read_scalars(tmp_path).items()}


def test_two_process_ddp_fit_runs_an_epoch(tmp_path):
    """With the progress bar on: rank 0's bar syncs epoch metrics in the epoch-end hooks, rank 1's does not,
    so any collective of our own in those hooks deadlocks or aborts (it did, in on_train_epoch_end)."""
    logged = selu_ddp(
        tmp_path, "configs/quickstart.yaml", "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1",
        "--data.num_envs=4", "--data.steps_per_epoch=16", "--model.minibatch_size=8", "--model.ppo_epochs=1",
        "--data.val_episodes=8",
    )  # fmt: skip
    assert logged["train/env_steps"] == [32.0]  # 2 ranks x 16 steps, summed across ranks
    assert 0.0 <= logged["val/success_rate"][0] <= 1.0
    assert "train/loss_policy" in logged


def _seed_with_uneven_ranks() -> int:
    """A run seed for which rank 0's env ends an episode every step and rank 1's never does."""
    from selu_lightning.envs.pool import seed_stream

    for seed in range(100):
        first = [int(seed_stream(seed, "train", rank, 0).generate_state(1)[0]) for rank in (0, 1)]
        if first[0] % 2 == 1 and first[1] % 2 == 0:
            return seed
    raise AssertionError("no such seed")


def test_ddp_with_ranks_whose_rollouts_differ(tmp_path):
    """Rank 0 finishes an episode every step, rank 1 none, over two epochs with checkpoints and examples."""
    logged = selu_ddp(
        tmp_path, "configs/quickstart.yaml", "--data.env=uneven_env:UnevenStubEnv", "--data.env_kwargs={}",
        f"--data.seed={_seed_with_uneven_ranks()}", "--trainer.max_epochs=2", "--trainer.limit_val_batches=0",
        "--data.num_envs=1", "--data.steps_per_epoch=8", "--model.minibatch_size=4", "--model.ppo_epochs=1",
        "--model.log_examples_every_n_epochs=1", "--data.num_examples=1",
    )  # fmt: skip
    assert logged["train/episodes"] == [8.0, 8.0]  # all from rank 0
    assert logged["train/env_steps"] == [16.0, 32.0]


@pytest.mark.slow
def test_ddp_with_the_quickstarts_own_settings(tmp_path):
    """The command a user runs: the quickstart's settings unchanged, two processes, one epoch."""
    logged = selu_ddp(tmp_path, "configs/quickstart.yaml", "--trainer.max_epochs=1")
    assert logged["train/env_steps"] == [512.0]


def test_ddp_with_rl4vlm_lora_targets(tmp_path):
    """RL4VLM's LoRA on LM + vision tower + projector of a LLaVA-NeXT: no adapter on the vision layer the
    model never reads, so DDP finds no parameter without a gradient. Text actions, as the recipe."""
    logged = selu_ddp(
        tmp_path, "configs/rl4vlm/numberline.yaml", "--model.policy.model_name_or_path=tiny:llava_next",
        "--model.policy.dtype=float32", "--model.policy.lora.r=4", "--model.policy.lora.alpha=8",
        "--model.policy.value_head_widths=[16]", "--model.action_space.init_args.max_new_tokens=8",
        "--model.action_space.init_args.temperature=1.0", "--trainer.max_epochs=1",
        "--trainer.accumulate_grad_batches=1", "--trainer.limit_val_batches=0", "--data.num_envs=2",
        "--data.steps_per_epoch=4", "--model.minibatch_size=2", "--model.ppo_epochs=1",
    )  # fmt: skip
    assert logged["train/env_steps"] == [8.0] and "train/loss_policy" in logged


def test_two_node_run_over_loopback(tmp_path):
    """torchrun --nnodes 2 on one machine, one process per "node", Lightning told --trainer.num_nodes 2."""
    port = str(20000 + os.getpid() % 20000)
    procs = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
            "-m", "selu_lightning", "fit", "-c", "configs/quickstart.yaml",
            "--trainer.strategy=ddp", "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.accelerator=cpu",
            "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.num_envs=4", "--data.steps_per_epoch=8",
            "--model.minibatch_size=8", "--model.ppo_epochs=1", "--data.val_episodes=4",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    logged = {tag: [v for _, v in points] for tag, points in read_scalars(tmp_path).items()}
    assert logged["train/env_steps"] == [16.0]  # 2 nodes x 8 steps
