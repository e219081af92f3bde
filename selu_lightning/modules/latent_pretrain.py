"""LatentActionPretrain: builds the latent action space on a frozen VLM, one stage per run.

Stages (``model.stage``), each training only its own parts (``latent.model.STAGE_COMPONENTS``):

- ``idm_warmup``     paired data; world-model next-token CE with the IDM's straight-through Gumbel codes, plus
                     ``entropy_coef`` x the IDM's mean sum p log p. Trains IDM, codebook, merge.
- ``projector_init`` paired data run with and without its image; Gaussian NLL both ways. Trains the projector.
- ``joint``          each batch half paired, half text-only: CE (paired) + CE (text through the text -> image-text
                     mean) + ``nll_coef`` x both NLLs + ``cycle_coef`` x the cycle NLL on text + entropy terms.
                     Trains IDM, codebook, merge, projector.
- ``policy_bc``      the policy's code logits trained with CE against the IDM's argmax codes (paired and, when
                     there is any, text through the projector). Trains the policy.
- ``world_sft``      (optional) world-model CE with the policy's argmax codes on the task's data. Trains
                     codebook and merge (the reference also tunes VLM layers here; the VLM stays frozen in ours).

Data: the episodes the runner hands over (``DemonstrationDataModule``): steps with a frame give paired examples
(prompt with frame + response); every step also gives a text-only example (the same prompt and response without
the frame); episodes without frames (the data module's ``text_only`` stores: ALFWorld / TextWorld transcripts,
other envs' replies) give text-only ones only. Losses cover every text token of prompt + response (image
placeholders and padding excluded), as the reference's, or with ``scored: response`` only the positions that
predict the response.

A stage's checkpoint keeps the whole latent space (not only what the stage trained) and its sizes; the next
stage starts from it (``latent_init``), and ``LatentActionSpace(latent_checkpoint=...)`` acts with it.
Logged: ``train/loss_*`` terms, ``train/recon_ce`` vs ``train/base_ce`` (the base LM's CE on the same
positions), ``train/bc_accuracy``, ``latent/code_perplexity`` and ``latent/dead_codes`` (the IDM's argmax
codes over the epoch, this rank's; no collective at epoch end) and a TensorBoard histogram of code usage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from selu_lightning.action_spaces.base import ActionSpace
from selu_lightning.action_spaces.latent import LATENT_CONFIG_KEY
from selu_lightning.action_spaces.text import TextActionSpace
from selu_lightning.data.trajectories import Trajectory
from selu_lightning.errors import ConfigError
from selu_lightning.export import CONFIG_KEY
from selu_lightning.latent.idm import (
    code_usage,
    negative_entropy,
    straight_through_gumbel,
)
from selu_lightning.latent.model import (
    STAGE_COMPONENTS,
    LatentActionModel,
    LatentConfig,
    load_latent_weights,
    vlm_lm_head,
    vlm_norm,
)
from selu_lightning.latent.projector import cycle_nll, gaussian_nll
from selu_lightning.latent.views import SequenceView, sequence_view
from selu_lightning.latent.world import Readout
from selu_lightning.modules.actor_sft import equal_share, response_example
from selu_lightning.modules.agent import VLMAgent, eval_mode
from selu_lightning.policy.vlm import PolicyConfig

__all__ = ["STAGES", "LatentActionPretrain"]

STAGES = tuple(STAGE_COMPONENTS)
Stage = Literal["idm_warmup", "projector_init", "joint", "policy_bc", "world_sft"]
#: Stages that also read text-only examples (the others read paired ones only).
_TEXT_STAGES = ("joint", "policy_bc")


class LatentActionPretrain(VLMAgent):
    def __init__(
        self,
        policy: PolicyConfig,
        stage: Stage,
        action_space: ActionSpace | None = None,
        latent_init: str | None = None,
        num_codes: int = 128,
        idm_layers: int = 4,
        policy_layers: int = 8,
        merge_layers: int = 2,
        tau: float = 2.0,
        readout: Readout = "additive",
        text_states: Literal["projected", "raw"] = "projected",
        text_data: bool = True,
        scored: Literal["all", "response"] = "all",
        entropy_coef: float = 1e-3,
        nll_coef: float = 1e-5,
        cycle_coef: float = 1e-5,
        minibatch_size: int = 8,
        lr: float = 1e-4,
        lr_min: float = 1e-5,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        lr_schedule_updates: int | None = None,
        weight_decay: float = 0.0,
        max_nonfinite_steps: int = 5,
        seed: int = 0,
    ) -> None:
        """
        Args:
            policy: The VLM (frozen here, adapters included): the backbone the space is built on. Give the
                RL run's ``model_name_or_path`` and ``init_from`` (e.g. the SFT checkpoint); no value head needed.
            stage: Which stage this run trains (module docstring).
            action_space: Prompt wording and whether prompts carry the frame (null: ``TextActionSpace()``).
            latent_init: The previous stage's checkpoint (null: a fresh space; only sensible for ``idm_warmup``).
            num_codes: K, the number of latent actions (the paper: 128).
            idm_layers: Causal layers of the inverse dynamics model (the paper: 4).
            policy_layers: Causal layers of the code policy (the paper: 8; 0: a linear code head on the VLM's
                hidden state, far fewer parameters for RL to train).
            merge_layers: Gated residual MLPs merging the code into h (the paper: 2).
            tau: Gumbel-softmax temperature of the IDM's codes (the paper: 2.0).
            readout: The world model's read-out, the same in every stage and at RL time: ``additive``
                (``lm_head(h + merges)``, the base LM before training) or ``reference`` (the paper's code's
                ``lm_head(norm(h + merges) - h)``); see ``latent/world.py``.
            text_states: What the IDM, world model and policy read for text-only inputs: the projector's
                text -> image-text mean (``projected``, the method) or the raw text state (``raw``: the "without
                projector" ablation; ``joint`` then has no projector NLLs or cycle loss). May change from the
                stage before; the RL run takes the last stage's.
            text_data: Mix text-only examples into ``joint`` and ``policy_bc`` (false: the "without text-only
                data" ablation; paired batches only, no cycle loss).
            scored: Where codes are read and the world-model CE, entropy term and BC are scored: every text token of
                prompt and response (``all``, the reference's pretraining) or only the positions that predict a
                response token (``response``: a space for one task's replies, whose codes need not spell out the
                prompt).
            entropy_coef: Weight of the IDM's mean sum p log p (the paper: 1e-3).
            nll_coef: Weight of the projector NLLs in ``joint`` (the paper: 1e-5; ``projector_init`` uses 1).
            cycle_coef: Weight of the cycle-consistency NLL in ``joint`` (the paper: 1e-5; 0 ablates it).
            minibatch_size: Examples per training step (``joint`` / ``policy_bc``: half paired, half text-only).
            lr: Peak learning rate (AdamW).
            lr_min: Final learning rate of the cosine schedule.
            lr_schedule: ``cosine`` over the run's epochs, or ``constant``.
            lr_schedule_updates: Length of the cosine schedule in epochs; null: from what bounds the run.
            weight_decay: AdamW weight decay.
            max_nonfinite_steps: Optimizer steps with NaN/inf gradients are skipped; this many in a row stop the run.
            seed: Seeds the example order and the text-only draws (with the rank).
        """
        super().__init__(policy, action_space if action_space is not None else TextActionSpace())
        self.save_own_hyperparameters(ignore=["policy", "action_space"])
        if stage not in STAGE_COMPONENTS:
            raise ConfigError(f"model.stage must be one of {', '.join(STAGES)} (got {stage!r})")
        if minibatch_size < 1 or (stage in _TEXT_STAGES and minibatch_size < 2):
            raise ConfigError(f"model.minibatch_size must be >= 1 (>= 2 for {', '.join(_TEXT_STAGES)}) (got {minibatch_size})")
        if min(entropy_coef, nll_coef, cycle_coef) < 0:
            raise ConfigError("model.entropy_coef, nll_coef and cycle_coef must be >= 0")
        if stage != "idm_warmup" and latent_init is None:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"model.stage={stage} starts from a fresh latent space: set model.latent_init to the "
                           "previous stage's checkpoint")  # fmt: skip
        self.stage = stage
        self.latent_config = LatentConfig(num_codes, idm_layers, policy_layers, merge_layers, tau, readout, text_states)
        self.latent: LatentActionModel | None = None
        self._code_counts: torch.Tensor | None = None

    # ------------------------------------------------------------------ setup
    def configure_model(self) -> None:
        super().configure_model()
        if self.latent is not None:
            return
        hf = self.policy.hf_model
        self.policy.requires_grad_(False)  # the VLM (adapters, value head) never trains here
        self.latent = LatentActionModel.for_backbone(self.latent_config, hf)
        if self.hparams.latent_init is not None:
            path = self.hparams.latent_init
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            saved = checkpoint.get(LATENT_CONFIG_KEY)
            if saved is None:
                raise ConfigError(f"model.latent_init {path!r} is not a LatentActionPretrain checkpoint")
            saved = LatentConfig.from_saved(saved).to_dict()
            if self.stage == "joint":  # where text states are first read: the only stage that may change them
                saved["text_states"] = self.latent_config.text_states
            if saved != self.latent_config.to_dict():
                raise ConfigError(f"model.latent_init was built with {saved}; this run has {self.latent_config.to_dict()}")
            built_on = (checkpoint.get(CONFIG_KEY) or {}).get("model_name_or_path")
            if built_on not in (None, self.policy.config.model_name_or_path):
                raise ConfigError(f"model.latent_init was built on {built_on!r}, this run's policy is "
                                  f"{self.policy.config.model_name_or_path!r}")  # fmt: skip
            load_latent_weights(self.latent, checkpoint, path)
        self.latent.train_only(STAGE_COMPONENTS[self.stage])
        self._all_modules = list(self.modules())

    # ------------------------------------------------------------------ episodes -> examples
    def build_train_data(self, episodes: Any) -> DataLoader:
        """Paired and text-only examples from the episodes' steps (Trajectories read once in order, or a
        Rollout's finished ones); a seeded shuffle per epoch. Stages that mix draw the text half of every batch
        from a seeded generator. Under DDP each rank serves its own equal share of a stored set's primary
        examples (:func:`equal_share`), so an epoch is one pass over them."""
        trajectories: Iterable[Trajectory] = getattr(episodes, "trajectories", episodes)
        paired, text = [], []
        for traj in trajectories:
            for step in traj.steps:
                if step.frame is not None and self.action_space.with_image:
                    paired.append(response_example(self.policy, step.prompt, step.frame, step.response, True))
                text.append(response_example(self.policy, step.prompt, None, step.response, False))
        mixes = self.stage in _TEXT_STAGES and bool(text) and self.hparams.text_data
        if self.stage == "policy_bc" and not paired and self.hparams.text_data:
            primary, mixes = text, False  # a text-only policy: BC on projected states alone
        elif not paired:
            raise ConfigError(f"model.stage={self.stage} needs episodes with frames (paired image-text data) "
                              "and an action space with with_image: true")  # fmt: skip
        else:
            primary = paired
        rank, world = (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        if world > 1 and not hasattr(episodes, "trajectories"):  # a stored set: each rank takes its own share
            primary = equal_share(primary, rank, world)
        seed = int(self.hparams.seed) * 1000003 + rank
        size = self.hparams.minibatch_size
        half = (size + 1) // 2 if mixes else size
        draws = np.random.default_rng(seed)
        key = "text" if primary is text else "paired"

        def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
            batch: dict[str, Any] = {"paired": [], "text": []}
            batch[key] = list(items)
            if mixes:
                batch["text"] = [text[int(i)] for i in draws.integers(len(text), size=size - len(items) or 1)]
            return batch

        generator = torch.Generator().manual_seed(seed)
        return DataLoader(primary, batch_size=half, shuffle=True, generator=generator, collate_fn=collate)

    # ------------------------------------------------------------------ losses
    def _views(self, samples: list[dict[str, Any]], with_image: bool) -> SequenceView | None:
        return sequence_view(self.policy, samples, with_image=with_image) if samples else None

    def _scored(self, view: SequenceView) -> torch.Tensor:
        """[B, L] where this run scores codes: every text target, or those predicting response tokens."""
        mask = view.target_mask
        return mask & view.response_mask if self.hparams.scored == "response" else mask

    def _recon(self, x: torch.Tensor, codes_vec: torch.Tensor, view: SequenceView) -> tuple[torch.Tensor, torch.Tensor]:
        """World-model CE at the scored positions, and the base LM's CE there (no grad) for comparison."""
        hf = self.policy.hf_model
        norm, head = vlm_norm(hf), vlm_lm_head(hf)
        mask = self._scored(view)
        xs, targets = x[mask], view.targets[mask]
        logits = self.latent.world.logits(xs, codes_vec[mask], norm, head)
        with torch.no_grad():
            base = F.cross_entropy(head(view.hidden[mask]).float(), targets)
        return F.cross_entropy(logits, targets), base

    def _idm_terms(self, x: torch.Tensor, view: SequenceView, tag: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        latent, hp = self.latent, self.hparams
        idm_logits = latent.idm(x)
        one_hot, _ = straight_through_gumbel(idm_logits, latent.config.tau)
        recon, base = self._recon(x, latent.codebook(one_hot), view)
        mask = self._scored(view)
        self._count_codes(idm_logits.detach().argmax(-1)[mask])
        losses = {f"loss_recon{tag}": recon}
        if hp.entropy_coef > 0:
            losses[f"loss_entropy{tag}"] = hp.entropy_coef * negative_entropy(idm_logits, mask.float())
        return losses, {f"recon_ce{tag}": recon.detach(), f"base_ce{tag}": base}

    def stage_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Named loss terms (their sum is the loss) and diagnostics of this stage for one batch, fp32."""
        latent, hp, stage = self.latent, self.hparams, self.stage
        paired = self._views(batch["paired"], with_image=True)
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        projects = stage == "projector_init" or (stage == "joint" and latent.config.text_states == "projected")
        if projects and paired is not None:
            bare = self._views(batch["paired"], with_image=False)
            mask = paired.text_mask.float()  # the same ids in both runs: one mask
            mu, logvar = latent.projector.text_to_mm(bare.hidden)
            t2m = gaussian_nll(mu, logvar, paired.hidden, mask)
            mu, logvar = latent.projector.mm_to_text(paired.hidden)
            m2t = gaussian_nll(mu, logvar, bare.hidden, mask)
            weight = 1.0 if stage == "projector_init" else hp.nll_coef
            losses["loss_nll_text_to_mm"], losses["loss_nll_mm_to_text"] = weight * t2m, weight * m2t
            stats["nll_text_to_mm"], stats["nll_mm_to_text"] = t2m.detach(), m2t.detach()
        if stage in ("idm_warmup", "joint") and paired is not None:
            terms, diag = self._idm_terms(paired.hidden, paired, "")
            losses |= terms
            stats |= diag
        text = self._views(batch["text"], with_image=False) if stage in _TEXT_STAGES else None  # [] when not mixed
        if stage == "joint" and text is not None:
            terms, diag = self._idm_terms(latent.to_text_space(text.hidden), text, "_text")
            losses |= terms
            stats |= diag
            if projects:
                cycle = cycle_nll(latent.projector, text.hidden, text.text_mask.float())
                stats["cycle_nll"] = cycle.detach()
                if hp.cycle_coef > 0:
                    losses["loss_cycle"] = hp.cycle_coef * cycle
        if stage == "policy_bc":
            bc, correct, count = [], 0.0, 0
            views = [(paired, paired.hidden)] if paired is not None else []
            if text is not None:
                views.append((text, latent.to_text_space(text.hidden)))
            for view, x in views:
                mask = self._scored(view)
                with torch.no_grad():
                    target = latent.idm(x).argmax(-1)[mask]  # softmax argmax, no noise (as the reference)
                logits = latent.policy(x)[mask]
                bc.append(F.cross_entropy(logits, target, reduction="sum"))
                correct += float((logits.argmax(-1) == target).sum())
                count += int(mask.sum())
                self._count_codes(target)
            losses["loss_bc"] = torch.stack(bc).sum() / max(count, 1)
            stats["bc_accuracy"] = torch.tensor(correct / max(count, 1))
        if stage == "world_sft":
            with torch.no_grad():
                codes = latent.policy(paired.hidden).argmax(-1)
            recon, base = self._recon(paired.hidden, latent.codebook.embed(codes), paired)
            self._count_codes(codes[self._scored(paired)])
            losses["loss_recon"] = recon
            stats["recon_ce"], stats["base_ce"] = recon.detach(), base
        if not losses:
            raise ConfigError(f"model.stage={stage} got a batch with nothing to learn from")
        return losses, stats

    def _count_codes(self, codes: torch.Tensor) -> None:
        counts = code_usage(codes.detach().cpu(), self.latent_config.num_codes)
        self._code_counts = counts if self._code_counts is None else self._code_counts + counts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        with eval_mode(self, self._update_eval_modules()):
            losses, stats = self.stage_losses(batch)
        loss = torch.stack(list(losses.values())).sum()
        n = len(batch["paired"]) + len(batch["text"])
        log = dict(on_epoch=True, on_step=False, batch_size=n, sync_dist=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, **log)
        self.log_dict({f"train/{k}": v.to(self.device) for k, v in stats.items()}, **log)
        self.log("train/loss", loss.detach(), prog_bar=True, **log)
        return loss

    def on_train_epoch_start(self) -> None:
        self._code_counts = None

    def on_train_epoch_end(self) -> None:
        """Code usage over the epoch (this rank's counts: no collective in an epoch-end hook)."""
        if self._code_counts is None:
            return
        counts = self._code_counts.float()
        p = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())
        self.log("latent/code_perplexity", perplexity, rank_zero_only=True)
        self.log("latent/dead_codes", (counts == 0).sum().float(), rank_zero_only=True)
        experiment = getattr(self.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_histogram") and self.global_rank == 0:
            codes = torch.repeat_interleave(torch.arange(len(counts)), self._code_counts)
            experiment.add_histogram("latent/code_usage", codes, self.current_epoch)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The whole latent space (every stage's parts, not only this stage's), its sizes and the stage."""
        state = checkpoint["state_dict"]
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] |= {k: v for k, v in state.items() if k.startswith("latent.")}
        checkpoint[LATENT_CONFIG_KEY] = self.latent_config.to_dict()
        checkpoint["selu_latent_stage"] = self.stage
