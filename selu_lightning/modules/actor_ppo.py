"""ActorPPO: RL4VLM's PPO over a VLM policy. The whole loop, readable in one place:

1. rollout   ``RolloutDataModule.train_dataloader`` calls :meth:`decide` for N envs per step (eval, no grad)
2. advantages  GAE + normalisation over the frozen buffer (``rl.advantages``)
3. update    :meth:`training_step` re-scores the stored token ids and applies the pure losses (``rl.losses``)
4. evaluate  :meth:`validation_step` plays held-out episodes to the end (greedy by default)
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Literal, Sequence

import lightning as L
import numpy as np
import torch
from jsonargparse import lazy_instance
from torch import nn

from selu_lightning.errors import ConfigError
from selu_lightning.export import CONFIG_KEY, policy_config_to_dict
from selu_lightning.action_spaces.base import ActionSpace, Decision, user_message
from selu_lightning.action_spaces.candidates import CandidateActionSpace
from selu_lightning.envs.pool import EnvState
from selu_lightning.policy.vlm import PolicyConfig, VLMPolicy
from selu_lightning.rl.losses import clipped_value_loss, k3_kl, ppo_policy_loss

__all__ = ["ActorPPO"]

#: Most prompts scored together when only values are needed (bootstrap states at the end of a rollout).
VALUE_CHUNK = 32


@contextmanager
def eval_mode(module: nn.Module, modules: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """Dropout off (RL4VLM sampled with dropout on: its old log-probs were noisy).

    ``modules`` (every submodule, listed once by the caller) skips the recursive ``.train()`` walk, which on a
    LoRA-wrapped 7B model costs more than a small forward pass."""
    modules = list(module.modules()) if modules is None else modules
    modes = [m.training for m in modules]
    for m in modules:
        m.__dict__["training"] = False
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.__dict__["training"] = mode


class ActorPPO(L.LightningModule):
    def __init__(
        self,
        policy: PolicyConfig,
        action_space: ActionSpace = lazy_instance(CandidateActionSpace),
        clip: float = 0.1,
        value_clip: float | None = 0.1,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        kl_coef: float = 0.0,
        lr: float = 1e-5,
        lr_min: float = 1e-9,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        weight_decay: float = 0.0,
        dropout_in_update: bool = False,
        log_examples_every_n_epochs: int = 5,
    ) -> None:
        """
        Args:
            policy: The VLM policy: checkpoint, dtype, LoRA, value head.
            action_space: How output becomes env actions: ``TextActionSpace`` (RL4VLM) or ``CandidateActionSpace``.
            clip: PPO ratio clip range epsilon.
            value_clip: Clip range of the value update around the rollout value; null: no value clipping.
            value_coef: Weight of the value loss.
            entropy_coef: Weight of the entropy bonus (0: none, as RL4VLM).
            kl_coef: Weight of the k3 KL to the frozen base model (LoRA switched off); needs LoRA.
            lr: Peak learning rate (AdamW).
            lr_min: Final learning rate of the cosine schedule.
            lr_schedule: ``cosine`` from lr to lr_min over ``trainer.max_epochs`` updates, or ``constant``.
            weight_decay: AdamW weight decay.
            dropout_in_update: Keep dropout (e.g. LoRA dropout) on in PPO updates, as RL4VLM did. Off by default:
                then the first minibatch's ratio is exactly 1 and the update sees the policy that acted.
            log_examples_every_n_epochs: Log frames with generated text to TensorBoard this often (0: never).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["policy", "action_space"])
        if kl_coef > 0 and policy.lora is None:
            raise ConfigError("model.kl_coef > 0 needs LoRA (the reference is the base model with adapters off)")
        self.policy = VLMPolicy(policy)
        self.action_space = action_space
        self.strict_loading = False  # checkpoints hold only the trained weights (adapter + value head)
        self._all_modules: list[nn.Module] = []

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "env_cls"):
            self.action_space.check_env(datamodule.env_cls)

    def configure_model(self) -> None:
        self.policy.load()
        self._all_modules = list(self.modules())

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        updates = max(int(self.trainer.max_epochs or 1), 1)
        floor = self.hparams.lr_min / self.hparams.lr

        def cosine(epoch: int) -> float:
            progress = min(epoch / max(updates - 1, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------ acting (the Agent protocol)
    def _prompts(self, states: Sequence[EnvState], task: str) -> list[dict[str, torch.Tensor]]:
        """Each state's prompt tensors, encoded once per state and action space."""
        space = self.action_space
        prompts = []
        for s in states:
            key = ("prompt", id(space), task)
            if key not in s.cache:
                text = space.prompt_text(task, s.text, s.goal, s.legal_actions)
                s.cache[key] = self.policy.encode_prompt(
                    user_message(text, space.with_image), s.image if space.with_image else None
                )
            prompts.append(s.cache[key])
        return prompts

    def _submodules(self) -> list[nn.Module]:
        """Every submodule (listed once, when the model has loaded) for cheap eval-mode switches."""
        return self._all_modules or list(self.modules())

    def _update_eval_modules(self) -> list[nn.Module]:
        """What the update switches to eval mode to turn dropout off: everything but the layers that
        checkpoint activations, which transformers only does in train mode."""
        return [m for m in self._submodules() if getattr(m, "gradient_checkpointing", False) is not True]

    def _precision(self) -> Any:
        """The trainer's precision context (e.g. bf16 autocast), so rollouts score exactly as updates do."""
        trainer = self._trainer
        return trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()

    @torch.no_grad()
    def decide(self, states: Sequence[EnvState], task: str, *, greedy: bool, rng: np.random.Generator) -> list[Decision]:
        with eval_mode(self, self._submodules()), self._precision():
            return self.action_space.act(
                self.policy, self._prompts(states, task), [s.legal_actions for s in states], greedy=greedy, rng=rng
            )

    @torch.no_grad()
    def state_values(self, states: Sequence[EnvState], task: str) -> list[float]:
        """V(s) per state, scored in chunks of at most ``VALUE_CHUNK`` prompts (bounded memory)."""
        prompts = self._prompts(states, task)
        values: list[float] = []
        with eval_mode(self, self._submodules()), self._precision():
            for start in range(0, len(prompts), VALUE_CHUNK):
                chunk = prompts[start : start + VALUE_CHUNK]
                out = self.policy.score(chunk, [torch.zeros(0, dtype=torch.long)] * len(chunk))
                values += out.values.float().cpu().tolist()
        return values

    # ------------------------------------------------------------------ update
    def ppo_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Named loss terms (their sum is the loss) and diagnostics for one minibatch."""
        need_entropy = self.hparams.entropy_coef > 0
        with nullcontext() if self.hparams.dropout_in_update else eval_mode(self, self._update_eval_modules()):
            ev = self.action_space.evaluate(self.policy, batch["samples"], with_entropy=need_entropy)
        pg_loss, stats = ppo_policy_loss(ev.logprobs, batch["old_logprobs"], batch["advantages"], self.hparams.clip)
        v_loss = clipped_value_loss(ev.values, batch["old_values"], batch["returns"], self.hparams.value_clip)
        losses = {"loss_policy": pg_loss, "loss_value": self.hparams.value_coef * v_loss}
        if need_entropy:
            losses["loss_entropy"] = -self.hparams.entropy_coef * ev.entropy.mean()
            stats["entropy"] = ev.entropy.detach().mean()
        if self.hparams.kl_coef > 0:
            with torch.no_grad(), self.policy.reference(), eval_mode(self, self._submodules()):
                ref = self.action_space.evaluate(self.policy, batch["samples"], with_entropy=False)
            kl = k3_kl(ev.logprobs, ref.logprobs)
            losses["loss_kl"] = self.hparams.kl_coef * kl
            stats["kl_to_base"] = kl.detach()
        return losses, stats

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses, stats = self.ppo_losses(batch)
        loss = torch.stack(list(losses.values())).sum()
        n = len(batch["samples"])
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_epoch=True, on_step=False, batch_size=n, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in stats.items() if k != "ratio_max_abs_log"}, on_epoch=True, on_step=False, batch_size=n, sync_dist=True)
        self.log("train/loss", loss.detach(), on_epoch=True, on_step=False, batch_size=n, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        datamodule = self.trainer.datamodule
        stats = dict(datamodule.last_rollout_stats)
        if not stats:
            return
        ev = stats.pop("explained_variance")
        keys = sorted(stats)
        summed = self.trainer.strategy.reduce(
            torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device), reduce_op="sum"
        )
        total = dict(zip(keys, summed.tolist()))
        seconds = total["seconds"] / self.trainer.world_size  # ranks roll out in parallel
        metrics = {
            "train/env_steps": total["steps"] * (self.current_epoch + 1),  # every epoch collects as many steps
            "perf/env_steps_per_s": total["steps"] / max(seconds, 1e-9),
            "perf/gen_tokens_per_s": total["generated_tokens"] / max(total["decide_seconds"] / self.trainer.world_size, 1e-9),
            "train/parse_failure_rate": total["parse_failures"] / max(total["steps"], 1.0),
            "train/explained_variance": ev,
            "train/episodes": total["episodes"],
            "rollout/env_restarts": total["env_restarts"],
        }
        if total["episodes"] > 0:
            metrics["train/episode_return"] = total["episode_return_sum"] / total["episodes"]
            metrics["train/success_rate"] = total["success_sum"] / total["episodes"]
            metrics["train/episode_length"] = total["episode_length_sum"] / total["episodes"]
        self.log_dict(metrics, on_epoch=True, sync_dist=False, rank_zero_only=True)
        self._log_examples(datamodule.last_rollout)

    def _log_examples(self, rollout: Any) -> None:
        every = self.hparams.log_examples_every_n_epochs
        experiment = getattr(self.logger, "experiment", None)
        if not every or rollout is None or self.current_epoch % every or not hasattr(experiment, "add_image"):
            return
        if self.global_rank != 0:
            return
        for k, ex in enumerate(rollout.examples):
            experiment.add_image(f"examples/frame_{k}", ex["image"], self.current_epoch, dataformats="HWC")
            experiment.add_text(
                f"examples/step_{k}",
                f"**action** `{ex['action']}`, **reward** {ex['reward']:+g}\n\n```\n{ex['text']}\n```",
                self.current_epoch,
            )

    # ------------------------------------------------------------------ evaluation
    def _play(self, seeds: list[int]) -> list[dict[str, float]]:
        """Held-out episodes, one per seed, played to the end (greedy unless ``data.eval_greedy`` is false)."""
        from selu_lightning.data.rollout import play_episodes

        datamodule = self.trainer.datamodule
        rng = np.random.default_rng(seeds)
        return play_episodes(self, datamodule.eval_envs(), seeds, greedy=datamodule.eval_greedy, rng=rng)

    def _eval_step(self, seeds: list[int], stage: str) -> None:
        episodes = self._play(seeds)
        n = len(episodes)
        success = torch.tensor([e["success"] for e in episodes], dtype=torch.float32).mean()
        ret = torch.tensor([e["return"] for e in episodes], dtype=torch.float32).mean()
        self.log(f"{stage}/success_rate", success, batch_size=n, sync_dist=True)
        self.log(f"{stage}/episode_return", ret, batch_size=n, sync_dist=True)

    def validation_step(self, seeds: list[int], batch_idx: int) -> None:
        self._eval_step(seeds, "val")

    def test_step(self, seeds: list[int], batch_idx: int) -> None:
        self._eval_step(seeds, "test")

    def predict_step(self, seeds: list[int], batch_idx: int) -> list[dict[str, float]]:
        """``selu predict``: play held-out test episodes and return each one's return, length and success."""
        return [dict(e, seed=float(s)) for e, s in zip(self._play(seeds), seeds)]

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trained weights (LoRA adapter + value head, or everything when training fully)."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint[CONFIG_KEY] = policy_config_to_dict(self.policy.config)  # lets tools rebuild the model

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Loading is non-strict (base weights come from the model folder), so check the trained ones are all there."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(checkpoint.get("state_dict", {})))
        if missing:
            raise ConfigError(
                f"checkpoint lacks {len(missing)} trained weight(s) of this model (e.g. {missing[0]}): "
                "was it written with another model.policy configuration?"
            )
