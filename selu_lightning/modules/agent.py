"""What every VLM agent module shares: the policy and its action space, acting for the runner (``decide``,
``state_values``), held-out evaluation, the optimizer and its schedule, non-finite step skipping, and
checkpoints that hold only trained weights. ``ActorPPO`` and ``ActorSFT`` add how a rollout or a set of
episodes teaches them (``build_train_data``) and their loss (``training_step``).

Subclasses take ``lr``, ``lr_min``, ``lr_schedule``, ``lr_schedule_updates``, ``weight_decay`` and
``max_nonfinite_steps`` as constructor arguments (saved as hyperparameters): the optimizer reads them.
"""

from __future__ import annotations

import importlib
import inspect
import math
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
from lightning.pytorch.core.mixins import hparams_mixin
import torch
from torch import nn

from selu_lightning.action_spaces.base import ActionSpace, Decision
from selu_lightning.envs.pool import EnvState
from selu_lightning.errors import ConfigError
from selu_lightning.export import CONFIG_KEY, policy_config_to_dict
from selu_lightning.policy.vlm import PolicyConfig, VLMPolicy

__all__ = ["VLMAgent", "NonFiniteLossError", "eval_mode"]


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had NaN/inf gradients: the run stops (the last checkpoint stays)."""

#: Policy settings that decide which weights a checkpoint holds: resuming with others is refused.
WEIGHT_DEFINING_KEYS = ("model_name_or_path", "lora", "freeze", "value_head_widths")
ACTION_SPACE_KEY = "selu_action_space"

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


def _class_of(class_path: str | None) -> type | None:
    """The class a config's ``class_path`` names (None when it names none)."""
    if not class_path or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


class VLMAgent(L.LightningModule):
    def __init__(self, policy: PolicyConfig, action_space: ActionSpace) -> None:
        super().__init__()
        self.policy = VLMPolicy(policy)
        self.action_space = action_space
        self.strict_loading = False  # checkpoints hold only the trained weights (adapter + heads)
        self._all_modules: list[nn.Module] = []
        self._nonfinite_in_a_row = 0
        self._nonfinite_epoch = 0

    def save_own_hyperparameters(self, ignore: Sequence[str]) -> None:
        """``save_hyperparameters`` from the calling ``__init__``'s own arguments, also when this module is built
        inside another module's config (a critic in ``model.reward``).

        LightningCLI hands every LightningModule it instantiates the *top-level* model's config as its hparams
        (its instantiator matches any LightningModule subclass): a nested critic would otherwise read the actor's
        settings and miss its own."""
        caller = inspect.currentframe().f_back  # type: ignore[union-attr]
        context = getattr(hparams_mixin, "_given_hyperparameters", None)  # Lightning's private context variable
        given = context.get() if context is not None else None
        owner = _class_of(given.get("_class_path")) if given is not None else None
        if owner is None or owner is type(self):  # not nested (or the config's class cannot be told: as Lightning)
            self.save_hyperparameters(ignore=list(ignore), frame=caller)
            return
        token = context.set(None)
        try:
            self.save_hyperparameters(ignore=list(ignore), frame=caller)
        finally:
            context.reset(token)

    # ------------------------------------------------------------------ setup
    def check_env(self, env_cls: type) -> None:
        """Called by the runner: fail in one line if the action space cannot act in this env."""
        self.action_space.check_env(env_cls)

    def configure_model(self) -> None:
        self.policy.load()
        if self.action_space is not None:  # the SELU critic has none
            self.action_space.attach(self.policy)  # a learned space (latent codes) builds and freezes here
        self._all_modules = list(self.modules())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self._param_groups(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        self._schedule_updates()  # a run whose length is unknown fails here, before any rollout
        floor = self.hparams.lr_min / self.hparams.lr

        def cosine(update: int) -> float:
            progress = min(update / max(self._schedule_updates() - 1, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _param_groups(self) -> list[dict[str, Any]]:
        """One AdamW group, or two when ``value_head_lr`` is set: a fresh value head on a pretrained (or SFT)
        policy needs a far larger step than the policy's fine-tuning rate to learn within a short run. The
        cosine schedule scales both alike."""
        value_lr = getattr(self.hparams, "value_head_lr", None)
        head = self.policy.value_head
        if value_lr is None or head is None:
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        head_ids = {id(p) for p in head.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        return [{"params": rest}, {"params": [p for p in head.parameters() if p.requires_grad], "lr": value_lr}]

    def _schedule_updates(self) -> int:
        """How many updates (rollout epochs) the cosine schedule spans: the config's number, else what bounds
        the run. ``max_steps`` counts optimizer steps: converted with this run's steps per update, known once
        the first rollout is served (the schedule is first read after the first update)."""
        if self.hparams.lr_schedule_updates is not None:
            return int(self.hparams.lr_schedule_updates)
        trainer = self.trainer
        bounds = []
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            bounds.append(int(trainer.max_epochs))
        if trainer.max_steps is not None and trainer.max_steps > 0:
            per_update = self._optimizer_steps_per_update()
            bounds.append(math.ceil(trainer.max_steps / per_update) if per_update else trainer.max_steps)
        if not bounds:
            raise ConfigError(
                "the cosine schedule needs its length: set model.lr_schedule_updates (updates = rollout epochs), "
                "trainer.max_epochs or trainer.max_steps, or use model.lr_schedule=constant"
            )
        return min(bounds)

    def _optimizer_steps_per_update(self) -> int | None:
        batches = self.trainer.num_training_batches
        if not isinstance(batches, int) or batches <= 0:
            return None
        return math.ceil(batches / self.trainer.accumulate_grad_batches)

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
        space = self.action_space
        with eval_mode(self, self._submodules()), self._precision():
            prompts = space.encode(self.policy, states, task)
            decisions = space.act(self.policy, prompts, [s.legal_actions for s in states], greedy=greedy, rng=rng)
        for d, s in zip(decisions, states):
            d.prompt = space.state_prompt(s, task)
        return decisions

    @torch.no_grad()
    def state_values(self, states: Sequence[EnvState], task: str) -> list[float]:
        """V(s) per state, scored in chunks of at most ``VALUE_CHUNK`` prompts (bounded memory); zeros for a
        policy without a value head (nothing bootstraps from them)."""
        if self.policy.value_head is None:
            return [0.0] * len(states)
        prompts = self.action_space.encode(self.policy, states, task)
        values: list[float] = []
        with eval_mode(self, self._submodules()), self._precision():
            for start in range(0, len(prompts), VALUE_CHUNK):
                chunk = prompts[start : start + VALUE_CHUNK]
                out = self.policy.backbone(chunk, [torch.zeros(0, dtype=torch.long)] * len(chunk))
                values += self.policy.values(out).float().cpu().tolist()
        return values

    def _sum_across_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, handed to the collective on the strategy's root device (NCCL takes only CUDA
        tensors); returned on the caller's device."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor
        strategy = trainer.strategy
        return strategy.reduce(tensor.to(strategy.root_device), reduce_op="sum").to(tensor.device)

    def _sum_with_counts(self, sums: dict[str, float], count: int) -> tuple[dict[str, float], list[int]]:
        """``sums`` summed over ranks and every rank's ``count``, in one collective of a fixed-size vector (the
        same keys on every rank; the counts travel as one slot per rank). For methods whose ranks must agree on
        how many minibatches to serve."""
        world = self._trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank if self._trainer is not None else 0
        keys = sorted(sums)
        vector = torch.zeros(len(keys) + world, dtype=torch.float64)
        vector[: len(keys)] = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
        vector[len(keys) + rank] = float(count)
        summed = self._sum_across_ranks(vector).tolist()
        return dict(zip(keys, summed[: len(keys)])), [int(c) for c in summed[len(keys) :]]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip a step whose gradients hold NaN/inf (every rank sees the same synced gradients, so all skip
        together): its gradients are dropped, so AdamW leaves every weight and moment as it was."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16's GradScaler already skips such steps
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        total = torch.stack([g.detach().float().abs().sum() for g in grads]).sum()
        # Under FSDP each rank holds a shard: every rank must take the same decision.
        nonfinite = self._sum_across_ranks((~torch.isfinite(total)).float().reshape(1))
        if float(nonfinite[0]) == 0:
            self._nonfinite_in_a_row = 0
            return
        for p in self.parameters():
            p.grad = None
        self._nonfinite_in_a_row += 1
        self._nonfinite_epoch += 1
        if self._nonfinite_in_a_row >= self.hparams.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self._nonfinite_in_a_row} optimizer steps in a row had NaN/inf gradients (skipped); stopping. "
                "Lower model.lr, check the rewards, or raise model.max_nonfinite_steps"
            )

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Any, stage: str) -> None:
        episodes = batch.play(self)
        n = len(episodes)
        success = torch.tensor([e["success"] for e in episodes], dtype=torch.float32).mean()
        ret = torch.tensor([e["return"] for e in episodes], dtype=torch.float32).mean()
        self.log(f"{stage}/success_rate", success, batch_size=n, sync_dist=True, prog_bar=True)
        self.log(f"{stage}/episode_return", ret, batch_size=n, sync_dist=True)
        steps = sum(e["length"] for e in episodes)
        failed = sum(e.get("parse_failures", 0.0) for e in episodes)
        # Weighted by steps, so the mean over batches and ranks is the rate over all steps played.
        self.log(f"{stage}/parse_failure_rate", failed / max(steps, 1.0), batch_size=max(int(steps), 1), sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, float]]:
        """``selu predict``: play held-out test episodes and return each one's return, length and success."""
        return [dict(e, seed=float(s)) for e, s in zip(batch.play(self), batch.seeds)]

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trained weights (LoRA adapter + value head, or everything when training fully)."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint[CONFIG_KEY] = policy_config_to_dict(self.policy.config)  # lets tools rebuild the model
        checkpoint[ACTION_SPACE_KEY] = type(self.action_space).__name__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, in one line, a checkpoint of another model or action space; then check (loading is
        non-strict: base weights come from the model folder) that every trained weight is there."""
        saved, current = checkpoint.get(CONFIG_KEY), policy_config_to_dict(self.policy.config)
        if saved is not None:
            for key in WEIGHT_DEFINING_KEYS:
                if saved.get(key) != current.get(key):
                    raise ConfigError(
                        f"checkpoint was trained with model.policy.{key}={saved.get(key)!r}, this run has "
                        f"{current.get(key)!r}: it belongs to another experiment"
                    )
        space = checkpoint.get(ACTION_SPACE_KEY)
        if space is not None and space != type(self.action_space).__name__:
            raise ConfigError(f"checkpoint was trained with action space {space}, this run uses {type(self.action_space).__name__}")
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(checkpoint.get("state_dict", {})))
        if missing:
            raise ConfigError(
                f"checkpoint lacks {len(missing)} trained weight(s) of this model (e.g. {missing[0]}): "
                "was it written with another model.policy configuration?"
            )
