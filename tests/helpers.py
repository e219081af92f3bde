"""Small builders shared by the tests (tiny model, CPU trainer)."""

from __future__ import annotations

from typing import Any

import lightning as L

from selu_lightning.action_spaces import ActionSpace, CandidateActionSpace
from selu_lightning.data.rollout import RolloutDataModule
from selu_lightning.modules.actor_ppo import ActorPPO
from selu_lightning.policy.vlm import LoraSettings, PolicyConfig

TINY_LORA = LoraSettings(r=4, alpha=8, targets=["language_model", "projector"])


def tiny_module(action_space: ActionSpace | None = None, lora: LoraSettings | None = TINY_LORA, **kwargs: Any) -> ActorPPO:
    kwargs.setdefault("lr", 1e-3)
    kwargs.setdefault("ppo_epochs", 1)
    kwargs.setdefault("minibatch_size", 4)
    return ActorPPO(
        PolicyConfig("tiny:llava", lora=lora, value_head_widths=[32]),
        action_space=action_space or CandidateActionSpace(),
        **kwargs,
    )


def tiny_data(env: str = "numberline", **kwargs: Any) -> RolloutDataModule:
    defaults = dict(num_envs=4, steps_per_epoch=8, val_episodes=4, num_examples=0)
    return RolloutDataModule(env=env, **(defaults | kwargs))


def cpu_trainer(tmp_path, **kwargs: Any) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    return L.Trainer(**(defaults | kwargs))


class HardKillAtEpoch(L.Callback):
    """Test double for a crash: ends the process with no cleanup when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            import os

            os._exit(17)


class LossRecorder:
    """Wraps a module's ``ppo_losses`` to keep, per minibatch, its diagnostics and its loss terms' dtypes."""

    def __init__(self, module: ActorPPO) -> None:
        self.stats: list[dict[str, float]] = []
        self.dtypes: list[dict[str, Any]] = []
        original = module.ppo_losses

        def recorded(batch: dict[str, Any]) -> Any:
            losses, stats = original(batch)
            self.stats.append({k: float(v) for k, v in stats.items()})
            self.dtypes.append({k: v.dtype for k, v in losses.items()})
            return losses, stats

        module.ppo_losses = recorded
