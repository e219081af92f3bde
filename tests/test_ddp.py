"""A real 2-process CPU DDP fit through the `selu` command (gloo backend)."""

import os
import subprocess
import sys
from pathlib import Path

from selu_lightning.tb import read_scalars

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_fit_runs_an_epoch(tmp_path):
    cmd = [
        sys.executable, "-m", "selu_lightning", "fit", "-c", "configs/quickstart.yaml",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
        "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.num_envs=4", "--data.steps_per_epoch=16",
        "--data.minibatch_size=8", "--data.ppo_epochs=1", "--data.val_episodes=8",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    logged = {tag: [v for _, v in points] for tag, points in read_scalars(tmp_path).items()}
    assert logged["train/env_steps"] == [32.0]  # 2 ranks x 16 steps, summed across ranks
    assert 0.0 <= logged["val/success_rate"][0] <= 1.0
    assert "train/loss_policy" in logged


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
            "--data.minibatch_size=8", "--data.ppo_epochs=1", "--data.val_episodes=4",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    logged = {tag: [v for _, v in points] for tag, points in read_scalars(tmp_path).items()}
    assert logged["train/env_steps"] == [16.0]  # 2 nodes x 8 steps
