"""SELUCritic: a VLM that learns, without any environment reward, to judge whether an episode achieved its
instruction from the episode's final observation (SELU, Li et al. 2024).

1. data      :meth:`build_train_data`: the critic asks itself about each episode's final observation and labels
             its own examples (self-asking, hindsight relabeling, optional negatives:
             :mod:`selu_lightning.critic.data`). Episodes are read without ground truth (invariant 7).
             Two other sources, picked by ``CriticDataModule(labels=...)``: :meth:`build_scene_data` (the
             perception prior: scene questions, :mod:`selu_lightning.critic.prior`) and
             :meth:`build_oracle_data` (the ground-truth upper bound, an ablation).
2. update    :meth:`training_step`: next-token cross-entropy on the answer tokens only ("Yes"/"No" + EOS),
             ActorSFT's loss on the critic's own examples.
3. judge     :meth:`verdict`: p(yes) for (final frame, instruction) pairs, yes / (yes + no) over the first answer
             token, batched (in chunks of ``chunk_size``), or the share of yes among ``self_consistency``
             sampled answers (the baseline); :meth:`answer`: short greedy free text (hindsight).
4. evaluate  held-out episodes whose ground truth comes apart from them in the batch (``JudgedEpisodes``, from
             ``CriticDataModule``: the only reader of ground truth): ``val/critic_accuracy``, ``_precision``,
             ``_recall``, ``_f1``, ``_auroc`` (torchmetrics).
Its checkpoint judges for ActorPPO through ``CriticReward`` (``model.policy.init_from``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score, BinaryPrecision, BinaryRecall

from selu_lightning.action_spaces.base import user_message
from selu_lightning.critic.data import (
    CriticDataStats,
    CriticExample,
    CriticQuery,
    LabelingConfig,
    build_critic_examples,
)
from selu_lightning.critic.prior import scene_examples
from selu_lightning.critic.questions import CriticQuestions
from selu_lightning.critic.tasks import task_structure
from selu_lightning.data.trajectories import Trajectory
from selu_lightning.errors import ConfigError
from selu_lightning.modules.actor_sft import response_cross_entropy, response_example
from selu_lightning.modules.agent import VLMAgent, eval_mode
from selu_lightning.policy.vlm import PolicyConfig, PromptSample

__all__ = ["SELUCritic", "yes_probability", "vote_fraction"]


def yes_probability(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """[B] fp32 p(yes) normalised against p(no) from [B, V] next-token logits: yes / (yes + no), i.e. a
    sigmoid of the logit difference (the rest of the vocabulary does not enter)."""
    logits = logits.float()
    return torch.sigmoid(logits[:, yes_id] - logits[:, no_id])


def vote_fraction(
    logits: torch.Tensor, yes_id: int, no_id: int, samples: int, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """[B] fp32 self-consistency verdicts: ``samples`` first answer tokens drawn per question from the full
    [B, V] next-token distribution at ``temperature``; the fraction of yes among the yes and no votes (0.5
    when no sample was either: the vote is tied). A majority vote is this fraction >= 0.5."""
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    draws = torch.multinomial(probs, samples, replacement=True, generator=generator)
    yes, no = (draws == yes_id).sum(-1).float(), (draws == no_id).sum(-1).float()
    return torch.where(yes + no > 0, yes / (yes + no).clamp(min=1), torch.full_like(yes, 0.5))


class SELUCritic(VLMAgent):
    def __init__(
        self,
        policy: PolicyConfig,
        env: str,
        questions: CriticQuestions | None = None,
        labeling: LabelingConfig | None = None,
        with_image: bool = True,
        observation_text: bool = False,
        answer_max_new_tokens: int = 12,
        chunk_size: int = 16,
        self_consistency: int = 0,
        self_consistency_temperature: float = 1.0,
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
            policy: The critic VLM: checkpoint, dtype, LoRA or full (no value head: ``value_head_widths: null``).
            env: The env whose instructions and observations the critic reads (its task structure), e.g.
                ``virtualhome``.
            questions: How questions are worded (per-verb templates, self-asking or direct).
            labeling: How the critic labels its own data (threshold, hindsight relabeling, negatives).
            with_image: Show the final frame (SELU judges from the frame). Without it, full fine-tuning leaves the
                vision tower and projector frozen: nothing reads them, and DDP needs a gradient for every
                trainable parameter.
            observation_text: Also show the final observation's text (off in the paper: it states the scene).
            answer_max_new_tokens: Length limit of free-text (hindsight) answers.
            chunk_size: Most questions in one forward pass (bounds memory; verdicts are batched within it).
            self_consistency: The self-consistency baseline: > 0 replaces p(yes) by the fraction of yes votes
                among this many answers sampled per question (:func:`vote_fraction`); 0: p(yes) vs p(no).
            self_consistency_temperature: Sampling temperature of those answers.
            minibatch_size: Examples per training step (per rank).
            lr: Peak learning rate (AdamW).
            lr_min: Final learning rate of the cosine schedule.
            lr_schedule: ``cosine`` from lr to lr_min over the run's epochs, or ``constant``.
            lr_schedule_updates: Length of the cosine schedule in epochs; null: from what bounds the run.
            weight_decay: AdamW weight decay.
            max_nonfinite_steps: Optimizer steps with NaN/inf gradients are skipped; this many in a row stop the run.
            seed: Seeds the order of examples (with the rank).
        """
        if not with_image and policy.lora is None:
            policy = dataclasses.replace(policy, freeze=sorted({*policy.freeze, "vision_tower", "projector"}))
        super().__init__(policy, action_space=None)  # the critic judges; it never acts in an env
        self.save_own_hyperparameters(ignore=["policy", "questions", "labeling"])
        if policy.value_head_widths is not None:
            raise ConfigError("SELUCritic has no value head: set model.policy.value_head_widths: null")
        if not (with_image or observation_text):
            raise ConfigError("SELUCritic sees nothing of the final observation: set with_image or observation_text")
        for key, value in (("minibatch_size", minibatch_size), ("chunk_size", chunk_size),
                           ("answer_max_new_tokens", answer_max_new_tokens),
                           ("self_consistency", self_consistency + 1)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"model.{key} must be >= 1 (got {value})")
        self.questions = questions or CriticQuestions()
        self.labeling = labeling or LabelingConfig()
        yes, no = self.questions.answer_yes.strip(), self.questions.answer_no.strip()
        if not yes or yes == no:
            raise ConfigError(f"model.questions.answer_yes and .answer_no must be two different words (got {yes!r}, "
                              f"{no!r})")  # fmt: skip
        self.structure = task_structure(env)
        self.templates = self.questions.resolved(env, self.structure.task_verbs)
        self.data_stats: CriticDataStats | None = None
        self.last_examples: list[CriticExample] = []
        threshold = self.labeling.threshold
        metrics = lambda: MetricCollection({  # noqa: E731
            "accuracy": BinaryAccuracy(threshold), "precision": BinaryPrecision(threshold),
            "recall": BinaryRecall(threshold), "f1": BinaryF1Score(threshold), "auroc": BinaryAUROC(),
        })  # fmt: skip
        self.val_metrics, self.test_metrics = metrics(), metrics()
        if self_consistency_temperature <= 0:
            raise ConfigError(f"model.self_consistency_temperature must be > 0 (got {self_consistency_temperature})")
        self._votes = torch.Generator().manual_seed(int(seed))

    # ------------------------------------------------------------------ setup
    def check_env(self, env_cls: type) -> None:
        raise ConfigError("SELUCritic learns from recorded episodes: use data: CriticDataModule, not an env runner")

    def decide(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError("SELUCritic judges episodes; it does not act (use an actor module to play episodes)")

    def configure_model(self) -> None:
        super().configure_model()
        tok = self.policy.tokenizer
        words = (self.questions.answer_yes, self.questions.answer_no)
        first = [tok(w, add_special_tokens=False)["input_ids"][:1] for w in words]
        if not all(first) or first[0] == first[1]:
            raise ConfigError(
                f"the answer words {words[0]!r} and {words[1]!r} must start with different tokens (p(yes) compares "
                "their first tokens): change model.questions.answer_yes / .answer_no"
            )
        self._yes_id, self._no_id = first[0][0], first[1][0]

    # ------------------------------------------------------------------ prompts
    def user_text(self, query: CriticQuery, template: str) -> str:
        """The user turn for a question: the template around it, after the observation's text if shown."""
        text = template.format(question=query.question)
        return f"Observation: {query.observation}\n{text}" if self.hparams.observation_text else text

    def _frame(self, query: CriticQuery) -> np.ndarray | None:
        if not self.hparams.with_image:
            return None
        if query.frame is None:
            raise ConfigError("the critic judges from the final frame, but an episode has none: record with frames "
                              "(data.keep_frames: true) or set model.with_image: false")  # fmt: skip
        return query.frame

    def _encode(self, queries: Sequence[CriticQuery], template: str) -> list[PromptSample]:
        with_image = self.hparams.with_image
        return [self.policy.encode_prompt(user_message(self.user_text(q, template), with_image), self._frame(q))
                for q in queries]  # fmt: skip

    def _chunks(self, queries: Sequence[CriticQuery]) -> list[Sequence[CriticQuery]]:
        size = self.hparams.chunk_size
        return [queries[k : k + size] for k in range(0, len(queries), size)]

    # ------------------------------------------------------------------ judging
    @torch.no_grad()
    def p_yes(self, queries: Sequence[CriticQuery]) -> torch.Tensor:
        """[B] fp32 p(yes) (against p(no)) for yes/no questions, one teacher-forced pass per chunk (no dropout);
        under ``self_consistency`` the fraction of yes votes among sampled answers instead."""
        out: list[torch.Tensor] = []
        lm_head = self.policy.hf_model.get_output_embeddings()
        votes = self.hparams.self_consistency
        with eval_mode(self, self._submodules()), self._precision():
            for chunk in self._chunks(list(queries)):
                prompts = self._encode(chunk, self.questions.answer_prompt)
                hidden = self.policy.backbone(prompts, [torch.zeros(0, dtype=torch.long)] * len(prompts))
                h = hidden.last_prompt_hidden()
                # The LM head in fp32 with autocast off (only its two answer rows for p(yes)): bf16 logits of
                # magnitude 20-30 would move p(yes) by percents, enough to flip a threshold label.
                ids = [self._yes_id, self._no_id] if not votes else slice(None)
                with torch.autocast(h.device.type, enabled=False):
                    logits = h.float() @ lm_head.weight[ids].float().T
                    if getattr(lm_head, "bias", None) is not None:
                        logits = logits + lm_head.bias[ids].float()
                if votes:
                    temperature = self.hparams.self_consistency_temperature
                    out.append(vote_fraction(logits, self._yes_id, self._no_id, votes, temperature, self._votes))
                else:
                    out.append(yes_probability(logits, 0, 1).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def verdict(
        self,
        frames: Sequence[np.ndarray | None],
        instructions: Sequence[str],
        observations: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """[B] fp32 p(yes) that each final observation shows its instruction done. The question is the verb's
        self-asking one (the direct one under ``questions.style: direct``, or for an instruction whose verb the
        env's task structure cannot read)."""
        if len(frames) != len(instructions) or (observations is not None and len(observations) != len(frames)):
            raise ValueError("verdict needs one frame (and observation) per instruction")
        observations = observations if observations is not None else [""] * len(frames)
        queries = [
            CriticQuery(f, o, self.questions.ask(self.templates, self.structure.task_spec(i), i))
            for f, i, o in zip(frames, instructions, observations)
        ]
        return self.p_yes(queries)

    def judge_episodes(self, trajectories: Sequence[Trajectory]) -> torch.Tensor:
        """:meth:`verdict` on episodes' final observations and instructions."""
        return self.verdict([t.final_frame for t in trajectories], [t.goal for t in trajectories],
                            [t.final_observation for t in trajectories])  # fmt: skip

    @torch.no_grad()
    def answer(self, queries: Sequence[CriticQuery], max_new_tokens: int | None = None) -> list[str]:
        """A short greedy free-text answer per question (hindsight: "Which object is open?")."""
        limit = max_new_tokens or self.hparams.answer_max_new_tokens
        answers: list[str] = []
        with eval_mode(self, self._submodules()), self._precision():
            for chunk in self._chunks(list(queries)):
                prompts = self._encode(chunk, self.questions.hindsight_prompt)
                ids = self.policy.generate(prompts, max_new_tokens=limit, temperature=1.0, greedy=True)
                answers += [self.policy.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
        return answers

    # ------------------------------------------------------------------ episodes -> examples
    def build_train_data(self, episodes: Any) -> DataLoader:
        """The critic's own examples (self-asking + hindsight, answered by the critic as it is now) from episodes
        (a list of Trajectory, or a Rollout's finished ones), shuffled each epoch with a seeded generator."""
        trajectories: Sequence[Trajectory] = getattr(episodes, "trajectories", episodes)
        # Each rank labels its own share of the episodes (the labeling passes are the costly part).
        return self._loader(*self.label(self._my_share(trajectories)))

    def label(self, trajectories: Sequence[Trajectory]) -> tuple[list[CriticExample], CriticDataStats]:
        """The critic's own labels for episodes, answered by the critic as it is now (self-asking, hindsight,
        negatives: :func:`~selu_lightning.critic.data.build_critic_examples`), and their statistics."""
        return build_critic_examples(
            trajectories, self.structure, self.questions, self.templates,
            judge=lambda qs: self.p_yes(qs).tolist(), ask=self.answer, labeling=self.labeling,
        )  # fmt: skip

    def build_scene_data(self, episodes: Sequence[Trajectory]) -> DataLoader:
        """The perception prior's examples (``data.labels: scene``): questions about single observations answered
        from the states their text lists (:mod:`selu_lightning.critic.prior`); no instruction, no success."""
        rng = np.random.default_rng(int(self.hparams.seed) * 1000003 + self._rank_world()[0])
        mine = self._my_share(episodes)
        examples = scene_examples(mine, self.hparams.env, self.structure, self.templates, rng)
        stats = CriticDataStats(episodes=len(mine))
        for e in examples:
            stats.examples_per_verb[e.verb] += e.kind != "which"
        return self._loader(examples, stats)

    def build_oracle_data(self, episodes: Sequence[Trajectory], labels: Sequence[bool]) -> DataLoader:
        """The oracle-labels upper bound (``data.labels: oracle``): each episode's own question answered with
        its ground-truth success. The one training path that sees ground truth, by design; only
        ``CriticDataModule`` calls it, for this ablation."""
        rank, world = self._rank_world()
        examples, stats = [], CriticDataStats()
        for traj, success in list(zip(episodes, labels))[rank::world]:
            stats.episodes += 1
            spec = self.structure.task_spec(traj.goal)
            if spec is None or spec.verb not in self.templates:
                stats.unparsed += 1
                continue
            stats.accepted += bool(success)
            stats.rejected += not success
            stats.examples_per_verb[spec.verb] += bool(success)
            question = self.questions.ask(self.templates, spec, traj.goal)
            examples.append(CriticExample(traj.episode_id, traj.final_frame, traj.final_observation, question,
                                          "yes" if success else "no", traj.goal, spec.verb, "oracle"))  # fmt: skip
        return self._loader(examples, stats)

    def _rank_world(self) -> tuple[int, int]:
        if self._trainer is None:
            return 0, 1
        return self.global_rank, self._trainer.world_size

    def _my_share(self, trajectories: Sequence[Trajectory]) -> list[Trajectory]:
        rank, world = self._rank_world()
        return list(trajectories)[rank::world]

    def _loader(self, examples: list[CriticExample], stats: CriticDataStats) -> DataLoader:
        """Examples as a DataLoader every rank serves equally many minibatches from, shuffled with a seeded
        generator; their statistics summed over ranks into ``data_stats``."""
        rank, _ = self._rank_world()
        counts = self._share_counts(len(examples), stats)
        self.last_examples = examples
        if max(counts) == 0:
            raise ConfigError(f"the critic built no training examples from {self.data_stats.episodes} episodes")
        if min(counts) == 0:
            raise ConfigError(
                f"a rank built no critic examples from its share of the episodes (examples per rank: {counts}): "
                "give the critic more episodes or fewer ranks"
            )
        samples = [self._sample(e) for e in examples]
        # How many examples a rank labels depends on the critic's answers: ranks that built fewer repeat some,
        # so every rank serves the same number of minibatches (an extra step on one rank would hang DDP).
        samples += [samples[k % len(samples)] for k in range(max(counts) - len(samples))]
        generator = torch.Generator().manual_seed(int(self.hparams.seed) * 1000003 + rank)
        return DataLoader(
            samples, batch_size=self.hparams.minibatch_size, shuffle=True, generator=generator,
            collate_fn=lambda items: {"samples": list(items)},
        )  # fmt: skip

    def _share_counts(self, mine: int, stats: CriticDataStats) -> list[int]:
        """Every rank's example count, and the data statistics summed over ranks into ``data_stats`` (one
        collective: the counters and the configured verbs' positives, the same keys on every rank)."""
        fields = ["episodes", "unparsed", "accepted", "rejected", "relabeled", "dropped_unmatched", "dropped_same",
                  "negatives"]  # fmt: skip
        sums = {f: float(getattr(stats, f)) for f in fields}
        sums |= {f"verb:{v}": float(stats.examples_per_verb.get(v, 0)) for v in self.templates}
        total, counts = self._sum_with_counts(sums, mine)
        summed = CriticDataStats(**{f: int(total[f]) for f in fields})
        summed.examples_per_verb.update({v: int(total[f"verb:{v}"]) for v in self.templates if total[f"verb:{v}"]})
        self.data_stats = summed
        return counts

    def _sample(self, example: CriticExample) -> dict[str, Any]:
        """An example as the critic is asked it (the same prompt :meth:`p_yes` or :meth:`answer` builds) and its
        answer's tokens."""
        query = CriticQuery(example.frame, example.observation, example.question)
        if example.kind == "which":  # a free-text answer, asked as hindsight questions are
            text, answer = self.user_text(query, self.questions.hindsight_prompt), example.answer
        else:
            words = {"yes": self.questions.answer_yes, "no": self.questions.answer_no}
            text, answer = self.user_text(query, self.questions.answer_prompt), words[example.answer]
        return response_example(self.policy, text, self._frame(query), answer, self.hparams.with_image)

    # ------------------------------------------------------------------ update
    def critic_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens of the minibatch (fp32)."""
        with eval_mode(self, self._update_eval_modules()):
            return response_cross_entropy(self.policy, batch["samples"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.critic_loss(batch)
        n = len(batch["samples"])
        self.log("train/loss_critic", loss.detach(), on_epoch=True, on_step=False, batch_size=n, sync_dist=True,
                 prog_bar=True)  # fmt: skip
        return loss

    def on_train_epoch_end(self) -> None:
        """The data's statistics (examples per verb, relabel rate, dropped answers): the same on every rank."""
        metrics = self.data_stats.as_metrics() if self.data_stats is not None else {}
        metrics["train/nonfinite_steps"] = float(self._nonfinite_epoch)
        self._nonfinite_epoch = 0
        self.log_dict(metrics, on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------------ evaluation against ground truth
    def _judge_step(self, batch: Any, stage: str, metrics: MetricCollection) -> None:
        """``batch``: ``JudgedEpisodes`` (episodes without ground truth, their success labels apart)."""
        p = self.judge_episodes(batch.trajectories).to(self.device)
        labels = torch.as_tensor(batch.labels, dtype=torch.long, device=self.device)
        metrics.update(p, labels)
        n = len(batch)
        self.log_dict({f"{stage}/critic_{k}": m for k, m in metrics.items()}, on_epoch=True, batch_size=n)
        self.log(f"{stage}/critic_p_yes", p.mean(), on_epoch=True, batch_size=n, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._judge_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._judge_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, Any]]:
        """Each episode's id and p(yes)."""
        p = self.judge_episodes(batch.trajectories).tolist()
        return [{"episode_id": t.episode_id, "p_yes": v} for t, v in zip(batch.trajectories, p)]
