"""Latent actions for RL: per generated token the policy picks one of K codes and the world model decodes the
token from (context, code) greedily. PPO / GRPO then act on codes, and only the small code policy (with the
VLM's final norm, as the reference) and the value head train.

``log pi = cot_weight * sum log pi(code) over thought tokens + sum over action tokens``: RL4VLM's lambda, with
the action boundary found in the decoded text as :class:`TextActionSpace` finds it. With ``logprob: token`` a
position's term is instead log of the summed probability of the codes that decode the same token there (which
codes those were is found at rollout, by reading out all K, and stored). The codes are stored with the response
ids and re-scored by the same teacher-forced pass in rollout and update, so the first PPO ratio is 1 for codes as
for tokens.

Swap by config: ``model.action_space: {class_path: selu_lightning.action_spaces.LatentActionSpace,
init_args: {latent_checkpoint: <LatentActionPretrain policy_bc run>/checkpoints/last.ckpt}}``.

Differences from the reference (MMLatentAction): the world model decodes with the read-out it was trained with
in every stage (``LatentConfig.readout``, additive by default; see ``latent/world.py``); rows decode on the backbone's KV cache,
``decode_batch_size`` of them together (left-padded, with explicit position ids as ``generate`` gives them; the
code policy's attention hides the padding), one at a time for backbones with multimodal rotary positions
(Qwen2-VL family); log-probs are over all K codes at ``temperature`` while sampling is top-k
(``top_k: 0`` samples from exactly the scored distribution).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch

from selu_lightning.action_spaces.base import Decision, Evaluation
from selu_lightning.action_spaces.text import TextActionSpace
from selu_lightning.errors import ConfigError
from selu_lightning.latent.model import (
    LatentActionModel,
    LatentConfig,
    load_latent_weights,
    vlm_lm_head,
    vlm_norm,
)
from selu_lightning.latent.policy import code_logprobs, outcome_logprobs, sample_codes
from selu_lightning.policy.vlm import BackboneOutput, PromptSample, VLMPolicy

__all__ = ["LATENT_CONFIG_KEY", "LatentActionSpace"]

#: Where a LatentActionPretrain checkpoint keeps its LatentConfig.
LATENT_CONFIG_KEY = "selu_latent_config"


class LatentActionSpace(TextActionSpace):
    #: Let the KL reference start from the live pass's pre-norm states (exact: the VLM below the final norm is
    #: frozen). False runs the backbone again, as before; for tests and benchmarks, not a setting.
    reuse_frozen_pass: bool = True

    def __init__(
        self,
        latent_checkpoint: str | None = None,
        temperature: float = 1.0,
        top_k: int = 32,
        max_new_tokens: int = 256,
        cot_weight: float = 0.5,
        template: str = "default",
        with_image: bool = True,
        min_new_tokens: int = 0,
        parse_failure: Literal["random_action", "mask_from_loss"] = "random_action",
        action_parsing: Literal["rl4vlm", "strict"] = "rl4vlm",
        train_final_norm: bool = True,
        decode_batch_size: int = 16,
        logprob: Literal["code", "token"] = "code",
    ) -> None:
        """
        Args:
            latent_checkpoint: A ``LatentActionPretrain`` checkpoint (after ``policy_bc``) built on this run's
                ``model.policy.model_name_or_path``: its codebook, world model, policy and projector. Needed
                before weights load (null only so that a recipe parses without one).
            temperature: Code sampling temperature; log-probs use logits / temperature too.
            top_k: Sample among the k most likely codes (the paper: 32); 0: all codes.
            max_new_tokens: Longest response (one code per token).
            cot_weight: RL4VLM's lambda: the weight of thought-token codes in log pi (action tokens: 1).
            template: Prompt text (as ``TextActionSpace``'s).
            with_image: Put the frame in the prompt. Without it the hidden states pass through the projector's
                text -> image-text mean before the policy and the world model (the space was learned on
                image-text states).
            min_new_tokens: The world model may not decode EOS before this many tokens.
            parse_failure: What text with no legal action teaches (as ``TextActionSpace``'s).
            action_parsing: How the action is read from the decoded text (as ``TextActionSpace``'s).
            train_final_norm: Train the VLM's final norm with the code policy (the reference does); the rest of
                the VLM, LoRA adapters included, is frozen.
            decode_batch_size: Responses decoded together (one backbone step per token for the whole batch);
                1: one at a time, no padding. Backbones with multimodal rotary positions always decode one at a
                time.
            logprob: What a position contributes to log pi: the chosen code's log-prob (``code``, the paper's), or
                the log of the summed probability of every code that decodes to the same token there (``token``:
                the probability of what happened; where all codes give one token it is 0, so codes that change
                nothing add no noise to the policy gradient). ``token`` reads out all K codes per decoded token.
        """
        super().__init__(
            temperature=temperature, max_new_tokens=max_new_tokens, cot_weight=cot_weight, template=template,
            with_image=with_image, min_new_tokens=min_new_tokens, parse_failure=parse_failure,
            action_parsing=action_parsing,
        )  # fmt: skip
        if latent_checkpoint is not None and not os.path.isfile(os.path.expanduser(latent_checkpoint)):
            raise ConfigError(f"model.action_space.init_args.latent_checkpoint {latent_checkpoint!r} is not a file")
        if top_k < 0:
            raise ConfigError(f"model.action_space.init_args.top_k must be >= 0 (got {top_k})")
        if decode_batch_size < 1:
            raise ConfigError(f"model.action_space.init_args.decode_batch_size must be >= 1 (got {decode_batch_size})")
        if logprob not in ("code", "token"):
            raise ConfigError(f"model.action_space.init_args.logprob must be 'code' or 'token' (got {logprob!r})")
        self.logprob = logprob
        self.decode_batch_size = decode_batch_size
        self.latent_checkpoint = latent_checkpoint
        self.top_k = top_k
        self.train_final_norm = train_final_norm
        self.latent: LatentActionModel | None = None
        self._reference: list[torch.nn.Module] = []  # a list hides them from nn.Module: not submodules
        self._backbone_modules: list[torch.nn.Module] | None = None  # listed once, for the dropout check

    # ------------------------------------------------------------------ setup
    def attach(self, policy: VLMPolicy) -> None:
        """Build the latent space on the loaded policy and freeze all but the code policy (+ final norm)."""
        if self.latent is not None:
            return
        if self.latent_checkpoint is None:
            raise ConfigError("LatentActionSpace needs model.action_space.init_args.latent_checkpoint "
                              "(a LatentActionPretrain checkpoint)")  # fmt: skip
        path = os.path.expanduser(self.latent_checkpoint)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if LATENT_CONFIG_KEY not in checkpoint:
            raise ConfigError(f"latent_checkpoint {path!r} is not a LatentActionPretrain checkpoint")
        from selu_lightning.export import CONFIG_KEY

        built_on = (checkpoint.get(CONFIG_KEY) or {}).get("model_name_or_path")
        if built_on is not None and built_on != policy.config.model_name_or_path:
            raise ConfigError(f"latent_checkpoint was built on {built_on!r}; this run's policy is "
                              f"{policy.config.model_name_or_path!r}")  # fmt: skip
        hf = policy.hf_model
        latent = LatentActionModel.for_backbone(LatentConfig.from_saved(checkpoint[LATENT_CONFIG_KEY]), hf)
        load_latent_weights(latent, checkpoint, path)
        latent.drop_unused_in_rl(text_only=not self.with_image)
        latent.train_only(("policy",))
        latent.to(policy.device)
        policy.model.requires_grad_(False)
        vlm_norm(hf).requires_grad_(self.train_final_norm)
        self.latent = latent

    def keep_reference(self, policy: VLMPolicy) -> None:
        """The KL reference is what trains here, frozen as attached: the code policy and the VLM's final norm
        (the rest of the VLM is frozen anyway, so no copy of it is made). Not submodules: in no optimizer and no
        checkpoint; a resumed run rebuilds them from ``latent_checkpoint`` the same way."""
        if self._reference:
            return
        import copy

        latent, norm = self._latent(), vlm_norm(policy.hf_model)
        self._reference = [copy.deepcopy(m).requires_grad_(False).eval() for m in (latent.policy, norm)]

    @contextmanager
    def reference(self, policy: VLMPolicy) -> Iterator[None]:
        """The frozen code policy and final norm swapped in for the duration (modules, not weights: the live
        ones stay in the autograd graph of the current update)."""
        if not self._reference:
            raise RuntimeError("no latent reference kept: ActorPPO.configure_model calls keep_reference()")
        latent, norm = self._latent(), vlm_norm(policy.hf_model)
        parent, name = _parent_of(policy.hf_model, norm)
        code_ref, norm_ref = self._reference
        for kept, live in ((code_ref, latent.policy), (norm_ref, norm)):  # where and as the trainer put the live ones
            weight = next(live.parameters())
            kept.to(device=weight.device, dtype=weight.dtype)
        current = latent.policy
        latent._modules["policy"], parent._modules[name] = code_ref, norm_ref
        try:
            yield
        finally:
            latent._modules["policy"], parent._modules[name] = current, norm

    def _latent(self) -> LatentActionModel:
        if self.latent is None:
            raise RuntimeError("LatentActionSpace used before attach(policy) (the module's configure_model)")
        return self.latent

    def _states(self, h: torch.Tensor) -> torch.Tensor:
        """What the policy and world model read: h, or its image-text estimate for text-only prompts."""
        return h if self.with_image else self._latent().to_text_space(h)

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def act(
        self,
        policy: VLMPolicy,
        prompts: Sequence[PromptSample],
        legal_actions: Sequence[Sequence[str]],
        *,
        greedy: bool,
        rng: np.random.Generator,
    ) -> list[Decision]:
        # The rollout's own generator seeds code sampling: a resumed run samples what an uninterrupted one would.
        generator = torch.Generator(device=policy.device).manual_seed(int(rng.integers(2**63 - 1)))
        size = self.decode_batch_size if not _multimodal_rope(policy.hf_model) else 1
        decoded = [row for i in range(0, len(prompts), size)
                   for row in self.decode(policy, prompts[i : i + size], greedy=greedy, generator=generator)]  # fmt: skip
        responses = [tokens for tokens, _, _ in decoded]
        extras = [{"codes": c} if same is None else {"codes": c, "same_codes": same} for _, c, same in decoded]
        return self.decisions(policy, prompts, responses, legal_actions, rng, extras=extras)

    def decode(
        self,
        policy: VLMPolicy,
        prompts: Sequence[PromptSample],
        *,
        greedy: bool,
        generator: torch.Generator | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Responses to ``prompts``, decoded together: per step a code per row (argmax when ``greedy``, else
        top-k sampled), then the world model's most likely token given it; a row stops after its EOS. Returns
        per row (token ids, codes, and with ``logprob: token`` a [tokens, K] bool of the codes that would have
        decoded the same token, else None), on the CPU.

        Rows are left-padded; position ids count each row's real tokens (as ``generate`` sets them), and the code
        policy's attention hides the padding, so a row decodes as it would alone up to float rounding. A batch of
        one passes no position ids (the backbone's own, e.g. multimodal rotary ones)."""
        latent, hf = self._latent(), policy.hf_model
        backbone, norm, head = policy._backbone(hf), vlm_norm(hf), vlm_lm_head(hf)
        inputs = policy.prompt_inputs(prompts)
        mask = inputs["attention_mask"]
        batched = len(prompts) > 1
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0) if batched else None
        extra = {"position_ids": positions} if batched else {}
        out = backbone(**inputs, use_cache=True, **extra)
        cache = _cache_of(out)
        x = self._states(out.last_hidden_state)
        policy_cache: list = []
        key_mask = mask.bool() if batched else None
        logits = latent.policy(x, cache=policy_cache, key_mask=key_mask)[:, -1]
        banned = sorted(policy.suppress_token_ids)
        eos = sorted(policy.eos_token_ids)
        rows = len(prompts)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        codes: list[list[int]] = [[] for _ in range(rows)]
        same: list[list[torch.Tensor]] = [[] for _ in range(rows)]
        running = [True] * rows

        def read_out(state: torch.Tensor, code_vectors: torch.Tensor, step: int) -> torch.Tensor:
            token_logits = latent.world.logits(state, code_vectors, norm, head)
            if banned:
                token_logits[..., banned] = float("-inf")
            if step < self.min_new_tokens and eos:
                token_logits[..., eos] = float("-inf")
            return token_logits.argmax(-1)

        k = latent.config.num_codes
        for step in range(self.max_new_tokens):
            code = logits.argmax(-1) if greedy else sample_codes(logits, self.temperature, self.top_k, generator)
            token = read_out(x[:, -1], latent.codebook.embed(code), step)
            if self.logprob == "token":  # every code's token at this step: [rows, K]
                every = read_out(x[:, -1, None].expand(-1, k, -1), latent.codebook.weight[None].expand(rows, -1, -1), step)
                alike = (every == token[:, None]).cpu()
            for i, (t, c) in enumerate(zip(token.tolist(), code.tolist())):
                if running[i]:
                    tokens[i].append(t)
                    codes[i].append(c)
                    if self.logprob == "token":
                        same[i].append(alike[i])
                    running[i] = t not in policy.eos_token_ids
            if not any(running) or step + 1 == self.max_new_tokens:
                break
            # Finished rows keep stepping (their tokens are no longer kept) so the batch stays rectangular.
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            if batched:
                positions = positions[:, -1:] + 1
                extra = {"position_ids": positions}
                key_mask = mask.bool()
            out = backbone(input_ids=token[:, None].to(policy.device), attention_mask=mask, use_cache=True,
                           **{_cache_arg(backbone): cache}, **extra)  # fmt: skip
            cache = _cache_of(out)
            x = self._states(out.last_hidden_state)
            logits = latent.policy(x, cache=policy_cache, key_mask=key_mask)[:, -1]
        return [(torch.tensor(t, dtype=torch.long), torch.tensor(c, dtype=torch.long),
                 torch.stack(m) if self.logprob == "token" else None) for t, c, m in zip(tokens, codes, same)]  # fmt: skip

    # ------------------------------------------------------------------ update
    def evaluate(self, policy: VLMPolicy, samples: Sequence[dict[str, Any]], *, with_entropy: bool) -> Evaluation:
        """Weighted code log-probs of the stored (tokens, codes) and values, one teacher-forced backbone pass.

        The VLM below its final norm is frozen, so the KL reference would compute the same states: when that
        pass ran without dropout, its final norm's input is kept (``Evaluation.frozen``) and
        :meth:`evaluate_reference` starts from it instead of running the backbone again."""
        norm = vlm_norm(policy.hf_model)
        seen: list[torch.Tensor] = []
        hook = norm.register_forward_hook(lambda _module, args, _out: seen.append(args[0]) if args else None)
        try:
            out = policy.backbone([s["prompt"] for s in samples], [s["response"] for s in samples])
        finally:
            hook.remove()
        token_logprobs, logprobs, entropy = self._code_scores(out, samples, with_entropy=with_entropy)
        values = policy.values(out) if policy.value_head is not None else None
        mask = torch.tensor([float(s.get("trainable", True)) for s in samples], device=logprobs.device)
        frozen = None
        if self.reuse_frozen_pass and len(seen) == 1 and not self._dropout_possible(policy):
            frozen = BackboneOutput(seen[0].detach(), out.prompt_lens, out.cont_lens)
        return Evaluation(logprobs, values, entropy, token_logprobs=token_logprobs, loss_mask=mask, frozen=frozen)

    def evaluate_reference(self, policy: VLMPolicy, samples: Sequence[dict[str, Any]], live: Evaluation) -> Evaluation:
        """The reference's code log-probs from the live pass's pre-norm states: the reference norm and code
        policy (swapped in by :meth:`reference`) on them, no second backbone pass."""
        if not isinstance(live.frozen, BackboneOutput):
            return super().evaluate_reference(policy, samples, live)
        pre = live.frozen
        out = BackboneOutput(vlm_norm(policy.hf_model)(pre.hidden), pre.prompt_lens, pre.cont_lens)
        token_logprobs, logprobs, _ = self._code_scores(out, samples, with_entropy=False)
        return Evaluation(logprobs, None, token_logprobs=token_logprobs)  # type: ignore[arg-type]

    def _code_scores(
        self, out: BackboneOutput, samples: Sequence[dict[str, Any]], *, with_entropy: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Per sample the positions' code log-probs, the weighted log pi per sample, and (if asked) the mean
        code entropy per sample, from the final hidden states of a teacher-forced pass."""
        logits = self._latent().policy(self._states(out.hidden))
        # The positions that predicted each response token are where its code was chosen.
        per_token = BackboneOutput(logits, out.prompt_lens, out.cont_lens).continuation_hidden()
        if all("same_codes" in s for s in samples):  # rolled out with logprob: token
            same = torch.cat([s["same_codes"] for s in samples]).to(per_token.device)
            logp, ent = outcome_logprobs(per_token, same, self.temperature)
        else:
            codes = torch.cat([s["codes"] for s in samples]).to(per_token.device)
            logp, ent = code_logprobs(per_token, codes, self.temperature)
        token_logprobs = list(logp.split(out.cont_lens))
        logprobs = torch.stack([(lp * s["weights"].to(lp.device)).sum() for lp, s in zip(token_logprobs, samples)])
        entropy = None
        if with_entropy:
            entropy = torch.stack([e.mean() if e.numel() else e.new_zeros(()) for e in ent.split(out.cont_lens)])
        return token_logprobs, logprobs, entropy

    def _dropout_possible(self, policy: VLMPolicy) -> bool:
        """Whether any backbone module is in train mode (dropout on, e.g. ``dropout_in_update``): then its
        states are not the reference's, which scores in eval mode."""
        if self._backbone_modules is None:
            self._backbone_modules = list(policy._backbone(policy.hf_model).modules())
        return any(m.training for m in self._backbone_modules)


def _parent_of(root: torch.nn.Module, child: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The module holding ``child`` and its attribute name (to swap it for another module)."""
    for module in root.modules():
        for name, sub in module._modules.items():
            if sub is child:
                return module, name
    raise ValueError(f"{type(child).__name__} is not inside {type(root).__name__}")


def _multimodal_rope(hf: torch.nn.Module) -> bool:
    """Whether the backbone places tokens by multimodal rotary positions (Qwen2-VL family: ``mrope_section``),
    which 2-D position ids would break."""
    config = getattr(hf.config, "text_config", None) or hf.config
    for key in ("rope_scaling", "rope_parameters"):
        rope = getattr(config, key, None) or getattr(hf.config, key, None)
        if isinstance(rope, dict) and "mrope_section" in rope:
            return True
    return False


def _cache_arg(backbone: torch.nn.Module) -> str:
    """The KV-cache keyword of this backbone's forward (``cache`` in newer transformers, else ``past_key_values``)."""
    import inspect

    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
