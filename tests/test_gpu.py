"""GPU-only checks: tiny models rolled out and updated on CUDA in bf16, fp32 RL math on the device, NCCL.

Skipped without CUDA, so they stay in the default run; on a GPU machine run them alone with ``pytest -m gpu``
(``tools/gpu_check.sh`` does). ``SELU_GPU_TESTS_ON_CPU=1`` runs the same code on the CPU (accelerator cpu, gloo)
to smoke-test the tests themselves. Everything goes through the public surface (the ``selu`` CLI and its
configs, ``VLMPolicy``, the pure RL functions), not the trainer's internals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
ON_CPU = os.environ.get("SELU_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
ACCELERATOR = "cpu" if ON_CPU else "gpu"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (ON_CPU or torch.cuda.is_available()), reason="needs a CUDA GPU"),
]

TEXT_SPACE = ["--model.action_space=selu_lightning.action_spaces.TextActionSpace",
              "--model.action_space.init_args.max_new_tokens=8"]  # fmt: skip


def quickstart_args(tmp_path: Path, *extra: str) -> list[str]:
    """The quickstart on the device, bf16-mixed, one small epoch, everything written under tmp_path."""
    return [
        "-c", str(ROOT / "configs" / "quickstart.yaml"), f"--trainer.accelerator={ACCELERATOR}", "--trainer.devices=1",
        "--trainer.precision=bf16-mixed", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
        "--trainer.check_val_every_n_epoch=1", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.num_envs=4", "--data.steps_per_epoch=16",
        "--data.val_episodes=4", *extra,
    ]  # fmt: skip


def _on_device(t: torch.Tensor) -> bool:
    return t.device.type == torch.device(DEVICE).type


# ------------------------------------------------------------------------------------------ pure RL math
def test_gae_and_normalized_advantages_are_fp32_on_the_device():
    from selu_lightning.rl.advantages import gae, normalize_advantages

    T, N = 6, 4
    g = torch.Generator().manual_seed(0)
    rewards, values, next_values = (torch.randn(T, N, generator=g).to(DEVICE, torch.bfloat16) for _ in range(3))
    terminated = torch.zeros(T, N, dtype=torch.bool, device=DEVICE)
    terminated[2, 1] = True
    truncated = torch.zeros_like(terminated)
    adv, ret = gae(rewards, values, next_values, terminated, truncated, 0.9, 0.95)
    norm = normalize_advantages(adv)
    for t in (adv, ret, norm):
        assert t.dtype == torch.float32 and _on_device(t) and torch.isfinite(t).all()
    assert abs(float(norm.mean())) < 1e-5 and abs(float(norm.std()) - 1.0) < 1e-4
    cpu_adv, _ = gae(*(x.cpu() for x in (rewards, values, next_values, terminated, truncated)), 0.9, 0.95)
    torch.testing.assert_close(adv.cpu(), cpu_adv)


# ------------------------------------------------------------------------------------------ the policy
def test_bf16_policy_scores_in_fp32_on_the_device():
    """bf16 weights under bf16 autocast: log-probs, entropies and values still come out fp32, on the device."""
    import numpy as np

    from selu_lightning.action_spaces.base import user_message
    from selu_lightning.policy.vlm import LoraSettings, PolicyConfig, VLMPolicy

    policy = VLMPolicy(PolicyConfig("tiny:llava_next", dtype="bfloat16", value_head_widths=[32],
                                    lora=LoraSettings(r=4, alpha=8, targets=["language_model", "projector"])))  # fmt: skip
    policy.load()
    policy.to(DEVICE)
    frame = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    prompts = [policy.encode_prompt(user_message(f"go to {k}", True), frame) for k in range(3)]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        responses = policy.generate(prompts, max_new_tokens=6, temperature=1.0, greedy=False, min_new_tokens=6)
        out = policy.score(prompts, responses, with_entropy=True)
    assert [int(r.numel()) for r in responses] == [6, 6, 6]
    for t in [*out.token_logprobs, *out.entropies, out.values]:
        assert t.dtype == torch.float32 and _on_device(t) and torch.isfinite(t).all()
    assert all((lp <= 0).all() for lp in out.token_logprobs)
    assert next(p for n, p in policy.model.named_parameters() if "lora_A" not in n).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ a real fit
class LossProbe(L.Callback):
    """Keeps, per training step, the loss's dtype and device; and each loss term's, when ``ppo_losses`` exists."""

    def __init__(self) -> None:
        self.losses: list[tuple[torch.dtype, str]] = []
        self.terms: list[tuple[str, torch.dtype, str]] = []

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        original = getattr(module, "ppo_losses", None)
        if original is None:
            return

        def recorded(batch):
            out = original(batch)
            for name, value in out[0].items():
                self.terms.append((name, value.dtype, value.device.type))
            return out

        module.ppo_losses = recorded

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        self.losses.append((loss.dtype, loss.device.type))


@pytest.mark.parametrize("space", ["candidates", "text"])
def test_bf16_mixed_fit_trains_on_the_device(tmp_path, space):
    from selu_lightning.cli import SeluCLI

    cli = SeluCLI(args=quickstart_args(tmp_path, *(TEXT_SPACE if space == "text" else [])), run=False)
    probe = LossProbe()
    cli.trainer.callbacks.append(probe)
    module = cli.model
    cli.trainer.fit(module, datamodule=cli.datamodule)
    assert cli.trainer.state.finished and not cli.trainer.interrupted
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and all(_on_device(p) for p in trainable)
    assert all(p.dtype == torch.float32 for p in trainable)  # bf16-mixed keeps fp32 master weights
    assert probe.losses and all(d == (torch.float32, torch.device(DEVICE).type) for d in probe.losses)
    assert all(d == torch.float32 and dev == torch.device(DEVICE).type for _, d, dev in probe.terms), probe.terms
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert "val/success_rate" in metrics
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics


# ------------------------------------------------------------------------------------------ collectives
class CollectiveProbe(L.Callback):
    """Records the device of every tensor handed to a torch.distributed collective during the fit; writes them
    as JSON to ``$SELU_COLLECTIVE_LOG`` at the end. Used in a subprocess (``--trainer.callbacks+=``)."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce", "reduce_scatter",
             "reduce_scatter_tensor", "all_to_all", "barrier")  # fmt: skip

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []
        self._originals: dict[str, object] = {}

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        import torch.distributed as dist

        for name in self.NAMES:
            original = getattr(dist, name, None)
            if original is None or name in self._originals:
                continue
            self._originals[name] = original

            def wrapped(*args, _name=name, _original=original, **kwargs):
                tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
                tensors += [t for a in args if isinstance(a, (list, tuple)) for t in a if torch.is_tensor(t)]
                self.calls.append({"op": _name, "devices": sorted({t.device.type for t in tensors}),
                                   "backend": str(dist.get_backend()) if dist.is_initialized() else None})  # fmt: skip
                return _original(*args, **kwargs)

            setattr(dist, name, wrapped)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        import torch.distributed as dist

        for name, original in self._originals.items():
            setattr(dist, name, original)
        path = os.environ.get("SELU_COLLECTIVE_LOG")
        if path and trainer.global_rank == 0:
            Path(path).write_text(json.dumps(self.calls))


def test_ddp_fit_hands_collectives_device_tensors(tmp_path):
    """DDP on one GPU (NCCL with one rank: NCCL cannot put two ranks on one GPU): the fit, its validation and
    checkpoint run, and every tensor a collective received lived on the GPU (NCCL takes no CPU tensors). Code
    that runs only with world_size > 1 is not reached with one rank."""
    log = tmp_path / "collectives.json"
    env = dict(os.environ, SELU_COLLECTIVE_LOG=str(log), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    cmd = [sys.executable, "-m", "selu_lightning", "fit",
           *quickstart_args(tmp_path, "--trainer.strategy=ddp", "--trainer.callbacks+=test_gpu.CollectiveProbe")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    calls = json.loads(log.read_text())
    assert calls, "no collective ran under DDP"
    wrong = [c for c in calls if c["devices"] and c["devices"] != [torch.device(DEVICE).type]]
    assert not wrong, wrong
    assert list(tmp_path.rglob("last.ckpt"))
