"""ActorPPO: RL4VLM's PPO over a VLM policy. The whole loop, readable in one place:

1. rollout     the runner (``RolloutDataModule``) calls :meth:`decide` for N envs per step (eval, no grad)
2. advantages  :meth:`build_train_data`: rewards from ``model.reward``, GAE, normalisation over every rank's
               buffer (``rl.advantages``), shuffled length-aware minibatches for ``ppo_epochs`` passes
3. update      :meth:`training_step` re-scores the stored token ids and applies the pure losses (``rl.losses``)
4. evaluate    :meth:`validation_step` plays held-out episodes to the end (greedy by default)

``model.algorithm`` chooses the advantage estimator on the same loop: ``ppo`` (GAE with a value head, above) or
the critic-free group estimators ``grpo``, ``dr_grpo`` and ``gigpo`` (``rl.group``), which read group rollouts
(``data.group_size``), build no value head and have no value loss.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn

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
from selu_lightning.rl.group import GROUP_ALGORITHMS, GroupStats, group_advantages
from selu_lightning.rl.losses import clipped_value_loss, k3_kl, ppo_policy_loss
from selu_lightning.rl.minibatches import CONSTANTS, PPOEpochSampler, collate_transitions, explained_variance, sample_tokens

__all__ = ["ActorPPO", "NonFiniteLossError"]

#: The ratio clip each algorithm gets when ``model.clip`` is null: RL4VLM's PPO 0.1, the group algorithms' 0.2.
DEFAULT_CLIP = {"ppo": 0.1, "grpo": 0.2, "dr_grpo": 0.2, "gigpo": 0.2}


def _critic_free(policy: PolicyConfig, algorithm: str) -> PolicyConfig:
    """The policy config a group algorithm builds: no value head (a warning names a configured one)."""
    if algorithm not in DEFAULT_CLIP:
        raise ConfigError(f"model.algorithm must be one of {sorted(DEFAULT_CLIP)} (got {algorithm!r})")
    if algorithm == "ppo" or policy.value_head_widths is None:
        return policy
    rank_zero_warn(
        f"model.algorithm={algorithm} learns without a critic: model.policy.value_head_widths "
        f"{policy.value_head_widths} is ignored, no value head is built (set it to null to silence this)"
    )
    policy = copy.copy(policy)
    policy.value_head_widths = None
    return policy


class ActorPPO(VLMAgent):
    def __init__(
        self,
        policy: PolicyConfig,
        action_space: ActionSpace | None = None,
        reward: RewardSource = lazy_instance(EnvReward),
        algorithm: Literal["ppo", "grpo", "dr_grpo", "gigpo"] = "ppo",
        gamma: float = 0.9,
        gae_lambda: float = 0.95,
        ppo_epochs: int = 4,
        minibatch_size: int = 8,
        normalize_advantages: bool = True,
        length_grouping: int = 8,
        gigpo_step_weight: float = 1.0,
        gigpo_scale_by_std: bool = True,
        group_eps: float = 1e-6,
        clip: float | None = None,
        value_clip: float | None = 0.1,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        kl_coef: float = 0.0,
        log_reference_kl: bool = False,
        lr: float = 1e-5,
        value_head_lr: float | None = None,
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
            algorithm: The advantage estimator. ``ppo``: GAE with a value head (RL4VLM). ``grpo``: each episode's
                return normalised within its group, (R - mean) / (std + eps), given to all its steps.
                ``dr_grpo``: R - mean (no std division; an action's log-prob is already a sum over its tokens, so
                there is no per-length normalisation to remove). ``gigpo``: GRPO's episode advantage plus
                ``gigpo_step_weight`` x a step advantage from anchor states (identical env state keys in a
                group). The three group estimators need ``data.group_size`` >= 2 and build no value head (a
                configured ``value_head_widths`` is ignored with a warning); there is no value loss.
            gamma: Discount factor (GAE; GiGPO's discounted step returns).
            gae_lambda: GAE's lambda (PPO).
            ppo_epochs: Passes over each rollout buffer.
            minibatch_size: Transitions per training step (per rank); use ``trainer.accumulate_grad_batches``
                to make larger effective batches.
            normalize_advantages: Zero-mean, unit-std advantages over the whole buffer (of all ranks); PPO only
                (the group estimators normalise within groups).
            length_grouping: Sort transitions by length within groups of this many minibatches, so each
                minibatch pads little (1: plain shuffle).
            gigpo_step_weight: GiGPO's weight of the step (anchor-state) advantage (omega; verl-agent: 1.0).
            gigpo_scale_by_std: GiGPO divides both its episode and step advantages by their group's std
                (verl-agent's ``mean_std_norm``); false: mean subtraction only (``mean_norm``).
            group_eps: Added to a group's std before dividing (GRPO, GiGPO).
            clip: PPO ratio clip range epsilon; null: the algorithm's default (0.1 for ``ppo`` as RL4VLM, 0.2 for the
                group algorithms).
            value_clip: Clip range of the value update around the rollout value; null: no value clipping.
            value_coef: Weight of the value loss (PPO).
            entropy_coef: Weight of the entropy bonus (0: none, as RL4VLM).
            kl_coef: Weight of the per-token k3 KL to the frozen reference: the base model with LoRA switched
                off, or under full fine-tuning a frozen copy of the starting weights (the SFT model with
                ``policy.init_from``; twice the policy's memory); with latent actions, the code policy and final
                norm as the latent checkpoint gave them (the action space's ``reference``).
            log_reference_kl: Log ``train/kl_to_ref`` (the same k3 estimate) even when ``kl_coef`` is 0: one
                more forward pass per minibatch, no effect on the update.
            lr: Peak learning rate (AdamW).
            value_head_lr: Peak learning rate of the value head (null: ``lr``). A fresh head on an SFT policy
                barely moves at a fine-tuning rate (``train/explained_variance`` stays at 0); RL4VLM used one rate.
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
        policy = _critic_free(policy, algorithm)
        super().__init__(policy, action_space if action_space is not None else CandidateActionSpace())
        self.save_own_hyperparameters(ignore=["policy", "action_space", "reward"])
        if kl_coef < 0:
            raise ConfigError(f"model.kl_coef must be >= 0 (got {kl_coef})")
        if algorithm == "ppo" and policy.value_head_widths is None:
            raise ConfigError("PPO needs a value head: set model.policy.value_head_widths (e.g. [1024, 512])")
        self.clip = float(clip if clip is not None else DEFAULT_CLIP[algorithm])
        if not self.clip > 0 or group_eps <= 0:
            raise ConfigError(f"model.clip ({clip}) and model.group_eps ({group_eps}) must be > 0")
        if ppo_epochs < 1 or minibatch_size < 1:
            raise ConfigError(f"model.ppo_epochs ({ppo_epochs}) and model.minibatch_size ({minibatch_size}) must be >= 1")
        if value_head_lr is not None and value_head_lr <= 0:
            raise ConfigError(f"model.value_head_lr must be > 0 (got {value_head_lr})")
        if lr_schedule_updates is not None and lr_schedule_updates < 1:
            raise ConfigError(f"model.lr_schedule_updates must be >= 1 (got {lr_schedule_updates})")
        self.reward = reward
        self._epoch_metrics: dict[str, float] = {}
        self._examples: list[dict[str, Any]] = []

    def configure_model(self) -> None:
        super().configure_model()
        if self.hparams.kl_coef > 0 or self.hparams.log_reference_kl:
            strategy = type(self._trainer.strategy).__name__ if self._trainer is not None else ""
            if self.policy.lora is None and "FSDP" in strategy:
                raise ConfigError(
                    "a KL reference under full fine-tuning is an unsharded copy of the model, which FSDP cannot "
                    "hold: use LoRA (model.policy.lora), or model.kl_coef=0 and model.log_reference_kl=false"
                )
            self.action_space.keep_reference(self.policy)

    def check_group_size(self, group_size: int) -> None:
        """Called by the runner before weights load: the group estimators compare episodes from one start."""
        if self.hparams.algorithm in GROUP_ALGORITHMS and group_size < 2:
            raise ConfigError(
                f"model.algorithm={self.hparams.algorithm} compares episodes played from one start: set "
                "data.group_size >= 2 (e.g. 8), with data.num_envs a multiple of it"
            )

    # ------------------------------------------------------------------ rollout -> training data
    def build_train_data(self, rollout: Any) -> DataLoader:
        """GAE on the reward source's rewards, advantages normalised over every rank, and ``ppo_epochs``
        shuffled passes of length-aware minibatches. Every rank calls this at the same point of the loop:
        the rollout's statistics are summed across ranks here, never in an epoch-end hook (where Lightning's
        own metric syncs run in an order that differs between ranks)."""
        hp = self.hparams
        if hp.algorithm in GROUP_ALGORITHMS:
            return self._group_train_data(rollout)
        self.reward.device = self.device  # a model-based judge runs beside the actor
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

    def _group_train_data(self, rollout: Any) -> DataLoader:
        """GRPO / Dr.GRPO / GiGPO advantages on the complete episode groups of this rank's group rollout.

        A group lives on one rank, so its statistics need no collective: DDP gives the advantages one process
        would give the same groups. Steps of incomplete groups are left out; ranks then hold different numbers
        of steps, so each pads its list to the largest (copies with weight 0: no policy-loss signal) and every
        rank serves the same number of minibatches."""
        hp = self.hparams
        if rollout.episode_ids is None:
            raise ConfigError(f"model.algorithm={hp.algorithm} needs group rollouts: set data.group_size >= 2")
        self.reward.device = self.device  # a model-based judge runs beside the actor
        rewards = self.reward.rewards(rollout)
        complete = rollout.complete_groups()
        T, N = rewards.shape
        steps = [
            (t, i) for t in range(T) for i in range(N)
            if rollout.episode_groups[int(rollout.episode_ids[t, i])] in complete
        ]  # fmt: skip
        episodes = [int(rollout.episode_ids[t, i]) for t, i in steps]
        groups = [rollout.episode_groups[e] for e in episodes]
        keys = [rollout.state_keys[t][i] for t, i in steps] if hp.algorithm == "gigpo" else None
        advantages, stats = group_advantages(
            hp.algorithm, [float(rewards[t, i]) for t, i in steps], episodes, groups, keys, gamma=hp.gamma,
            step_weight=hp.gigpo_step_weight, scale=hp.gigpo_scale_by_std, eps=hp.group_eps,
        )  # fmt: skip
        items = [
            {
                "sample": rollout.decisions[t][i].sample,
                "old_logprobs": float(rollout.logprobs[t, i]),
                "old_values": 0.0,
                "advantages": float(a),
                "returns": 0.0,
                "weights": 1.0,
            }
            for (t, i), a in zip(steps, advantages.tolist())
        ]
        counts, group_metrics = self._group_metrics(stats, len(items), rollout.num_steps)
        target = max(max(counts), 1)
        filler = items or [
            {"sample": rollout.decisions[0][0].sample, "old_logprobs": float(rollout.logprobs[0, 0]),
             "old_values": 0.0, "advantages": 0.0, "returns": 0.0}
        ]  # fmt: skip
        items += [dict(filler[k % len(filler)], weights=0.0) for k in range(target - len(items))]
        self._epoch_metrics = self._rollout_metrics(rollout, rewards, rewards) | group_metrics
        self._epoch_metrics.pop("train/explained_variance")  # no critic
        self._examples = rollout.examples
        generator = torch.Generator().manual_seed(rollout.shuffle_seed)
        lengths = [sample_tokens(it["sample"]) for it in items]
        sampler = PPOEpochSampler(lengths, hp.minibatch_size, hp.ppo_epochs, generator, hp.length_grouping)
        return DataLoader(items, batch_sampler=sampler, collate_fn=collate_transitions)

    def _group_metrics(self, stats: GroupStats, used: int, steps: int) -> tuple[list[int], dict[str, float]]:
        """Every rank's count of used steps, and the group metrics over all ranks (one collective)."""
        total, counts = self._sum_with_counts(stats.as_dict() | {"used_steps": float(used), "steps": float(steps)}, used)
        metrics = {
            "train/groups": total["groups"],
            "train/group_step_fraction": total["used_steps"] / max(total["steps"], 1.0),
        }
        if total["groups"] > 0:
            metrics["train/group_return_std"] = total["group_return_std_sum"] / total["groups"]
            metrics["train/zero_variance_group_fraction"] = total["zero_variance_groups"] / total["groups"]
        else:
            rank_zero_warn(
                "no episode group finished inside this rollout: nothing to learn from. Raise data.steps_per_epoch "
                "(each env needs room for whole episodes) or lower data.num_envs"
            )
        if total["anchor_groups"] > 0:
            metrics["train/anchor_group_size"] = total["anchor_steps"] / total["anchor_groups"]
            metrics["train/anchor_shared_step_fraction"] = total["shared_anchor_steps"] / total["anchor_steps"]
        return counts, metrics

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
        mask = ev.loss_mask
        # Group algorithms: rows padded to even out minibatch counts across ranks carry weight 0 in every term.
        pad = const["weights"] if hp.algorithm != "ppo" else None
        if pad is not None:
            mask = pad if mask is None else mask * pad
        pg_loss, stats = ppo_policy_loss(ev.logprobs, const["old_logprobs"], const["advantages"], self.clip, mask=mask)
        losses = {"loss_policy": pg_loss}
        if ev.values is not None:  # the group algorithms have no value head
            v_loss = clipped_value_loss(ev.values, const["old_values"], const["returns"], hp.value_clip)
            losses["loss_value"] = hp.value_coef * v_loss
        if need_entropy:
            entropy = ev.entropy.mean() if pad is None else (ev.entropy * pad).sum() / pad.sum().clamp_min(1.0)
            losses["loss_entropy"] = -hp.entropy_coef * entropy
            stats["entropy"] = entropy.detach()
        if hp.kl_coef > 0 or hp.log_reference_kl:
            with torch.no_grad(), self.action_space.reference(self.policy), eval_mode(self, self._submodules()):
                ref = self.action_space.evaluate_reference(self.policy, batch["samples"], ev)
            if ev.token_logprobs is not None and ref.token_logprobs is not None:
                per_token = None
                if pad is not None:
                    counts = torch.tensor([len(t) for t in ev.token_logprobs], device=pad.device)
                    per_token = pad.repeat_interleave(counts)
                kl = k3_kl(torch.cat(ev.token_logprobs), torch.cat(ref.token_logprobs), per_token)
            else:
                kl = k3_kl(ev.logprobs, ref.logprobs, pad)
            if hp.kl_coef > 0:
                losses["loss_kl"] = hp.kl_coef * kl
            stats["kl_to_ref"] = kl.detach()
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

