"""ActorSFT: supervised fine-tuning of the policy on recorded episodes (RL4VLM's first stage; SELU's actor
improvement on the trajectories its critic accepts).

1. data      :meth:`build_train_data` turns episodes (a TrajectoryStore's, or a rollout's finished ones) into
             (prompt, response) examples: the prompt as the episode recorded it (frame + text), the response's
             tokens followed by EOS. Ground truth is never read.
2. update    :meth:`training_step`: next-token cross-entropy on the response tokens only (prompt and image
             tokens carry no loss), one mean over every response token of the minibatch, fp32.
3. evaluate  held-out episodes played greedily by the policy, exactly as ActorPPO's (``val/success_rate``).
Its checkpoint starts an ActorPPO run through ``model.policy.init_from``.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from selu_lightning.action_spaces.base import ActionSpace, user_message
from selu_lightning.action_spaces.text import TextActionSpace
from selu_lightning.data.trajectories import Trajectory
from selu_lightning.errors import ConfigError
from selu_lightning.modules.agent import VLMAgent, eval_mode
from selu_lightning.policy.vlm import PolicyConfig, VLMPolicy

__all__ = ["ActorSFT", "response_example", "response_cross_entropy"]


class ActorSFT(VLMAgent):
    def __init__(
        self,
        policy: PolicyConfig,
        action_space: ActionSpace | None = None,
        minibatch_size: int = 16,
        lr: float = 1e-4,
        lr_min: float = 1e-6,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        lr_schedule_updates: int | None = None,
        weight_decay: float = 0.0,
        max_nonfinite_steps: int = 5,
        seed: int = 0,
    ) -> None:
        """
        Args:
            policy: The VLM policy: checkpoint, dtype, LoRA (no value head needed: ``value_head_widths: null``).
            action_space: How the policy acts in held-out evaluation (null: ``TextActionSpace()``); its image
                setting decides whether examples carry their frame.
            minibatch_size: Examples (steps) per training step (per rank).
            lr: Peak learning rate (AdamW).
            lr_min: Final learning rate of the cosine schedule.
            lr_schedule: ``cosine`` from lr to lr_min over the run's epochs, or ``constant``.
            lr_schedule_updates: Length of the cosine schedule in epochs; null: from what bounds the run.
            weight_decay: AdamW weight decay.
            max_nonfinite_steps: Optimizer steps with NaN/inf gradients are skipped; this many in a row stop the run.
            seed: Seeds the order of examples (with the rank).
        """
        super().__init__(policy, action_space if action_space is not None else TextActionSpace())
        self.save_own_hyperparameters(ignore=["policy", "action_space"])
        if minibatch_size < 1:
            raise ConfigError(f"model.minibatch_size must be >= 1 (got {minibatch_size})")

    # ------------------------------------------------------------------ episodes -> examples
    def build_train_data(self, episodes: Any) -> DataLoader:
        """Examples from every step of the given episodes (Trajectories, read once in order: a list or a stream
        from a store; or a Rollout's finished ones), shuffled each epoch with a seeded generator. Built once per
        set of episodes. With several ranks each encodes and trains on its own share of the steps (every
        ``world``-th), all shares equally long (a rank one short repeats its first step: an extra minibatch on
        one rank would hang DDP), so an epoch is one pass over the data, as on one process. A rollout is its
        rank's own already and is not shared out."""
        trajectories: Iterable[Trajectory] = getattr(episodes, "trajectories", episodes)
        rank, world = (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        shares = 1 if hasattr(episodes, "trajectories") else world
        examples, total = [], 0
        for traj in trajectories:
            for step in traj.steps:
                if total % shares == rank % shares:
                    examples.append(self._example(step))
                total += 1
        if total < shares or not examples:
            raise ConfigError(f"ActorSFT got {total} demonstration steps to train on, for {shares} rank(s)")
        examples = padded_share(examples, total, shares)
        self._check_lengths(examples)
        generator = torch.Generator().manual_seed(int(self.hparams.seed) * 1000003 + rank)
        return DataLoader(
            examples, batch_size=self.hparams.minibatch_size, shuffle=True, generator=generator,
            collate_fn=lambda items: {"samples": list(items)},
        )  # fmt: skip

    def _check_lengths(self, examples: Sequence[dict[str, Any]]) -> None:
        """Warn when demonstrations are longer than the action space lets the policy write: generation would cut
        them, and a cut reply has no action to read (every such step becomes a parse failure)."""
        limit = getattr(self.action_space, "max_new_tokens", None)
        if limit is None:
            return
        lengths = [len(e["response"]) for e in examples]  # response tokens + EOS
        over = sum(n > limit for n in lengths)
        if over:
            rank_zero_warn(
                f"{over} of {len(lengths)} demonstration replies ({100 * over / len(lengths):.0f}%) are longer than "
                f"model.action_space.init_args.max_new_tokens={limit} (longest {max(lengths)} tokens with EOS): the "
                "policy's own replies would be cut before their action; raise max_new_tokens"
            )

    def _example(self, step: Any) -> dict[str, Any]:
        """One recorded step as the policy would see it, and the tokens it should write (then EOS)."""
        if self.action_space.with_image and step.frame is None:
            raise ConfigError("the action space puts the frame in the prompt, but a demonstration step has no frame "
                              "(data.text_only stores are transcripts, for LatentActionPretrain)")
        return response_example(self.policy, step.prompt, step.frame, step.response, self.action_space.with_image)

    # ------------------------------------------------------------------ update
    def sft_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean next-token cross-entropy over every response token of the minibatch (fp32)."""
        with eval_mode(self, self._update_eval_modules()):
            return response_cross_entropy(self.policy, batch["samples"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.sft_loss(batch)
        n = len(batch["samples"])
        self.log("train/loss_sft", loss.detach(), on_epoch=True, on_step=False, batch_size=n, sync_dist=True, prog_bar=True)
        return loss


# ---------------------------------------------------------------------- shared with the SELU critic
def equal_share(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Rank ``rank``'s share of ``items``: every ``world``-th one from ``rank`` on, then its first ones again
    until every rank's share is ``ceil(len(items) / world)`` long (ranks must serve equally many minibatches:
    an extra step on one rank would hang DDP)."""
    mine = list(items[rank::world])
    if not mine:
        raise ConfigError(f"{len(items)} examples cannot be shared among {world} ranks")
    return padded_share(mine, len(items), world)


def padded_share(mine: list[Any], total: int, world: int) -> list[Any]:
    """A rank's share of ``total`` items (``mine``, non-empty) with its first ones repeated to ``ceil(total /
    world)``, the length of every rank's share."""
    return mine + mine[: -(-total // world) - len(mine)]


def response_example(
    policy: VLMPolicy, text: str, frame: Any, response: str, with_image: bool
) -> dict[str, Any]:
    """A (prompt, response) example: the user turn ``text`` (with ``frame`` when ``with_image``) encoded as the
    policy encodes prompts, and the response's tokens followed by EOS (so the model learns to stop)."""
    prompt = policy.encode_prompt(user_message(text, with_image), frame if with_image else None)
    ids = policy.tokenizer(response, add_special_tokens=False)["input_ids"]
    eos = next(iter(policy.eos_token_ids))
    return {"prompt": prompt, "response": torch.tensor([*ids, eos], dtype=torch.long)}


def response_cross_entropy(policy: VLMPolicy, samples: Sequence[dict[str, Any]]) -> torch.Tensor:
    """Mean next-token cross-entropy over every response token of the samples (fp32); prompt and image tokens
    carry no loss. The caller picks the dropout mode."""
    responses = [s["response"] for s in samples]
    out = policy.backbone([s["prompt"] for s in samples], responses)
    logprobs, _ = policy.continuation_logprobs(out, responses)
    return -torch.cat(logprobs).float().mean()
