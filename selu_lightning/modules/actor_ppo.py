"""ActorPPO: RL4VLM's PPO over a VLM policy. The whole loop, readable in one place:

1. rollout     the runner (``RolloutDataModule``) calls :meth:`decide` for N envs per step (eval, no grad)
2. advantages  :meth:`build_train_data`: rewards from ``model.reward``, GAE, normalisation over every rank's
               buffer (``rl.advantages``), shuffled length-aware minibatches for ``ppo_epochs`` passes
3. update      :meth:`training_step` re-scores the stored token ids and applies the pure losses (``rl.losses``)
4. evaluate    :meth:`validation_step` plays held-out episodes to the end (greedy by default)
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

import torch
from jsonargparse import lazy_instance
from torch.utils.data import DataLoader

from selu_lightning.action_spaces.base import ActionSpace
from selu_lightning.action_spaces.candidates import CandidateActionSpace
from selu_lightning.errors import ConfigError
from selu_lightning.modules.agent import NonFiniteLossError, VLMAgent, eval_mode
from selu_lightning.policy.vlm import PolicyConfig
from selu_lightning.rewards.base import EnvReward, RewardSource
from selu_lightning.rl.advantages import gae, normalize_advantages
from selu_lightning.rl.losses import clipped_value_loss, k3_kl, ppo_policy_loss
from selu_lightning.rl.minibatches import CONSTANTS, PPOEpochSampler, collate_transitions, explained_variance, sample_tokens

__all__ = ["ActorPPO", "NonFiniteLossError"]


class ActorPPO(VLMAgent):
    def __init__(
        self,
        policy: PolicyConfig,
        action_space: ActionSpace | None = None,
        reward: RewardSource = lazy_instance(EnvReward),
        gamma: float = 0.9,
        gae_lambda: float = 0.95,
        ppo_epochs: int = 4,
        minibatch_size: int = 8,
        normalize_advantages: bool = True,
        length_grouping: int = 8,
        clip: float = 0.1,
        value_clip: float | None = 0.1,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        kl_coef: float = 0.0,
        lr: float = 1e-5,
        lr_min: float = 1e-9,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        lr_schedule_updates: int | None = None,
        weight_decay: float = 0.0,
        dropout_in_update: bool = False,
        max_nonfinite_steps: int = 5,
        log_examples_every_n_epochs: int = 5,
    ) -> None:
        """
        Args:
            policy: The VLM policy: checkpoint, dtype, LoRA, value head.
            action_space: How output becomes env actions: ``TextActionSpace`` (RL4VLM) or ``CandidateActionSpace``
                (null: ``CandidateActionSpace()``). No default instance, so a YAML naming another class gets that
                class's own defaults, not the default's (jsonargparse carries init_args across a class_path change).
            reward: What steps are rewarded with for learning: ``EnvReward`` (the simulator's, default) or an
                ``EpisodeEndReward`` that judges whole episodes (e.g. a critic's verdict).
            gamma: Discount factor.
            gae_lambda: GAE's lambda.
            ppo_epochs: Passes over each rollout buffer.
            minibatch_size: Transitions per training step (per rank); use ``trainer.accumulate_grad_batches``
                to make larger effective batches.
            normalize_advantages: Zero-mean, unit-std advantages over the whole buffer (of all ranks).
            length_grouping: Sort transitions by length within groups of this many minibatches, so each
                minibatch pads little (1: plain shuffle).
            clip: PPO ratio clip range epsilon.
            value_clip: Clip range of the value update around the rollout value; null: no value clipping.
            value_coef: Weight of the value loss.
            entropy_coef: Weight of the entropy bonus (0: none, as RL4VLM).
            kl_coef: Weight of the per-token k3 KL to the frozen base model (LoRA switched off); needs LoRA.
            lr: Peak learning rate (AdamW).
            lr_min: Final learning rate of the cosine schedule.
            lr_schedule: ``cosine`` from lr to lr_min over the run's updates (one per rollout), or ``constant``.
            lr_schedule_updates: Length of the cosine schedule in updates; null: from what bounds the run
                (``trainer.max_epochs``, or ``trainer.max_steps`` in optimizer steps). Needed for runs bounded
                only by ``trainer.max_time``.
            weight_decay: AdamW weight decay.
            dropout_in_update: Keep dropout (e.g. LoRA dropout) on in PPO updates, as RL4VLM did. Off by default:
                then the first minibatch's ratio is exactly 1 and the update sees the policy that acted.
            max_nonfinite_steps: An optimizer step whose gradients hold NaN/inf is skipped and counted
                (``train/nonfinite_steps``); this many in a row stop the run with an error.
            log_examples_every_n_epochs: Log frames with generated text to TensorBoard this often (0: never).
        """
        super().__init__(policy, action_space if action_space is not None else CandidateActionSpace())
        self.save_hyperparameters(ignore=["policy", "action_space", "reward"])
        if kl_coef > 0 and policy.lora is None:
            raise ConfigError("model.kl_coef > 0 needs LoRA (the reference is the base model with adapters off)")
        if policy.value_head_widths is None:
            raise ConfigError("ActorPPO needs a value head: set model.policy.value_head_widths (e.g. [1024, 512])")
        if ppo_epochs < 1 or minibatch_size < 1:
            raise ConfigError(f"model.ppo_epochs ({ppo_epochs}) and model.minibatch_size ({minibatch_size}) must be >= 1")
        if lr_schedule_updates is not None and lr_schedule_updates < 1:
            raise ConfigError(f"model.lr_schedule_updates must be >= 1 (got {lr_schedule_updates})")
        self.reward = reward
        self._epoch_metrics: dict[str, float] = {}
        self._examples: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ rollout -> training data
    def build_train_data(self, rollout: Any) -> DataLoader:
        """GAE on the reward source's rewards, advantages normalised over every rank, and ``ppo_epochs``
        shuffled passes of length-aware minibatches. Every rank calls this at the same point of the loop:
        the rollout's statistics are summed across ranks here, never in an epoch-end hook (where Lightning's
        own metric syncs run in an order that differs between ranks)."""
        hp = self.hparams
        rewards = self.reward.rewards(rollout)
        advantages, returns = gae(
            rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.truncated, hp.gamma, hp.gae_lambda
        )
        if hp.normalize_advantages:
            advantages = normalize_advantages(advantages, sum_across_ranks=self._sum_across_ranks)
        self._epoch_metrics = self._rollout_metrics(rollout, rewards, returns)
        self._examples = rollout.examples
        items = [
            {
                "sample": d.sample,
                "old_logprobs": float(rollout.logprobs[t, i]),
                "old_values": float(rollout.values[t, i]),
                "advantages": float(advantages[t, i]),
                "returns": float(returns[t, i]),
            }
            for t, row in enumerate(rollout.decisions)
            for i, d in enumerate(row)
        ]
        generator = torch.Generator().manual_seed(rollout.shuffle_seed)
        lengths = [sample_tokens(it["sample"]) for it in items]
        sampler = PPOEpochSampler(lengths, hp.minibatch_size, hp.ppo_epochs, generator, hp.length_grouping)
        return DataLoader(items, batch_sampler=sampler, collate_fn=collate_transitions)

    def _rollout_metrics(self, rollout: Any, rewards: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """This epoch's rollout metrics over all ranks: one sum of a fixed-size vector, whatever the rollout saw."""
        stats = rollout.stats() | {"learning_reward_sum": float(rewards.sum())}
        keys = sorted(stats)
        summed = self._sum_across_ranks(torch.tensor([stats[k] for k in keys], dtype=torch.float64))
        total = dict(zip(keys, summed.tolist()))
        world = self.trainer.world_size if self._trainer is not None else 1
        seconds = max(total["seconds"] / world, 1e-9)  # ranks roll out in parallel
        metrics = {
            "perf/env_steps_per_s": total["steps"] / seconds,
            "perf/gen_tokens_per_s": total["generated_tokens"] / max(total["decide_seconds"] / world, 1e-9),
            "train/parse_failure_rate": total["parse_failures"] / max(total["steps"], 1.0),
            "train/explained_variance": explained_variance(rollout.values.flatten(), returns.flatten()),
            "train/episodes": total["episodes"],
            "train/learning_reward": total["learning_reward_sum"] / max(total["steps"], 1.0),
            "rollout/env_restarts": total["env_restarts"],
            "rollout/steps": total["steps"],
        }
        if total["episodes"] > 0:
            metrics["train/episode_return"] = total["episode_return_sum"] / total["episodes"]
            metrics["train/success_rate"] = total["success_sum"] / total["episodes"]
            metrics["train/episode_length"] = total["episode_length_sum"] / total["episodes"]
        return metrics

    # ------------------------------------------------------------------ update
    def ppo_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Named loss terms (their sum is the loss) and diagnostics for one minibatch, all in fp32."""
        hp = self.hparams
        const = {k: torch.as_tensor(batch[k], dtype=torch.float32, device=self.device) for k in CONSTANTS}
        need_entropy = hp.entropy_coef > 0
        with nullcontext() if hp.dropout_in_update else eval_mode(self, self._update_eval_modules()):
            ev = self.action_space.evaluate(self.policy, batch["samples"], with_entropy=need_entropy)
        pg_loss, stats = ppo_policy_loss(ev.logprobs, const["old_logprobs"], const["advantages"], hp.clip, mask=ev.loss_mask)
        v_loss = clipped_value_loss(ev.values, const["old_values"], const["returns"], hp.value_clip)
        losses = {"loss_policy": pg_loss, "loss_value": hp.value_coef * v_loss}
        if need_entropy:
            losses["loss_entropy"] = -hp.entropy_coef * ev.entropy.mean()
            stats["entropy"] = ev.entropy.detach().mean()
        if hp.kl_coef > 0:
            with torch.no_grad(), self.policy.reference(), eval_mode(self, self._submodules()):
                ref = self.action_space.evaluate(self.policy, batch["samples"], with_entropy=False)
            if ev.token_logprobs is not None and ref.token_logprobs is not None:
                kl = k3_kl(torch.cat(ev.token_logprobs), torch.cat(ref.token_logprobs))
            else:
                kl = k3_kl(ev.logprobs, ref.logprobs)
            losses["loss_kl"] = hp.kl_coef * kl
            stats["kl_to_base"] = kl.detach()
        return losses, stats

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses, stats = self.ppo_losses(batch)
        loss = torch.stack(list(losses.values())).sum()
        n = len(batch["samples"])
        log = dict(on_epoch=True, on_step=False, batch_size=n, sync_dist=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, **log)
        shown = {"approx_kl", "clip_fraction"}  # on the progress bar, with the loss
        self.log_dict({f"train/{k}": v for k, v in stats.items() if k not in shown | {"ratio_max_abs_log"}}, **log)
        self.log_dict({f"train/{k}": stats[k] for k in sorted(shown)}, prog_bar=True, **log)
        self.log("train/loss", loss.detach(), prog_bar=True, **log)
        if batch_idx == 0:
            # 0 when rollout and update score alike (invariant 1); the same key on every rank, every epoch.
            self.log("train/clip_fraction_first_minibatch", stats["clip_fraction"], **log)
        return loss

    def on_train_epoch_end(self) -> None:
        """Log the rollout's metrics (already summed over ranks in :meth:`build_train_data`): no collective."""
        metrics = dict(self._epoch_metrics)
        metrics["train/env_steps"] = metrics.pop("rollout/steps", 0.0) * (self.current_epoch + 1)
        metrics["train/nonfinite_steps"] = float(self._nonfinite_epoch)
        self._nonfinite_epoch = 0
        # Already summed across ranks, so identical everywhere: logged on every rank (a monitor on any of them,
        # e.g. ModelCheckpoint(monitor=train/success_rate), then sees the key on every rank). Explained
        # variance is this rank's own.
        self.log_dict(metrics, on_epoch=True, sync_dist=False)
        self._log_examples(self._examples)

    def _log_examples(self, examples: list[dict[str, Any]]) -> None:
        every = self.hparams.log_examples_every_n_epochs
        experiment = getattr(self.logger, "experiment", None)
        if not every or not examples or self.current_epoch % every or not hasattr(experiment, "add_image"):
            return
        if self.global_rank != 0:
            return
        for k, ex in enumerate(examples):
            experiment.add_image(f"examples/frame_{k}", ex["image"], self.current_epoch, dataformats="HWC")
            experiment.add_text(
                f"examples/step_{k}",
                f"**action** `{ex['action']}`, **reward** {ex['reward']:+g}\n\n```\n{ex['text']}\n```",
                self.current_epoch,
            )

