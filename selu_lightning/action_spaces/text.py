"""RL4VLM's action space: the model writes chain-of-thought, then ``"action": ...``; PPO on the text."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch

from selu_lightning.errors import ConfigError
from selu_lightning.action_spaces.base import ActionSpace, Decision, Evaluation
from selu_lightning.action_spaces.parsing import action_boundary, parse_action
from selu_lightning.policy.vlm import PromptSample, VLMPolicy

__all__ = ["TextActionSpace", "token_weights"]

DEFAULT_TEMPLATE = (
    "{task}\n{state}\nLegal actions: {actions}\n"
    'First think step by step, then answer in JSON: {{"thoughts": "<your reasoning>", "action": "<one legal action>"}}'
)


def token_weights(prefix_lengths: Sequence[int], boundary: int | None, cot_weight: float) -> torch.Tensor:
    """Per-token weight: ``cot_weight`` for chain-of-thought tokens, 1 for action tokens.

    ``prefix_lengths[k]`` is the length in characters of the decoded text of tokens ``0..k``. A token is an
    action token if any of its characters lies at or after the boundary. With no boundary (None) the whole
    response is chain-of-thought (the env action was then a random fallback, not something the text chose).
    """
    ends = torch.as_tensor(list(prefix_lengths), dtype=torch.long)
    if boundary is None:
        return torch.full(ends.shape, float(cot_weight), dtype=torch.float32)
    weights = torch.full(ends.shape, float(cot_weight), dtype=torch.float32)
    weights[ends > boundary] = 1.0
    return weights


def _devices(policy: VLMPolicy) -> list[int]:
    device = policy.device
    return [device.index or 0] if device.type == "cuda" else []


class TextActionSpace(ActionSpace):
    """``log pi = cot_weight * sum log p(CoT tokens) + sum log p(action tokens)``, logits / temperature."""

    def __init__(
        self,
        temperature: float = 0.2,
        max_new_tokens: int = 256,
        cot_weight: float = 0.5,
        template: str = "default",
        with_image: bool = True,
        min_new_tokens: int = 0,
        parse_failure: Literal["random_action", "mask_from_loss"] = "random_action",
        action_parsing: Literal["rl4vlm", "strict"] = "rl4vlm",
    ) -> None:
        """
        Args:
            temperature: Sampling temperature; log-probs use the same tempered distribution.
            max_new_tokens: Longest response; a response cut here usually fails to parse.
            cot_weight: RL4VLM's lambda, the weight of chain-of-thought tokens in the log-prob (0.5 cards,
                0.2 ALFWorld). 1 treats every token alike; 0 ignores the reasoning.
            template: Prompt text with ``{task}``, ``{state}``, ``{goal}``, ``{actions}`` fields; ``default``:
                this space's own (give ``default`` when swapping from another space's configured template).
            with_image: Put the frame in the prompt.
            min_new_tokens: Generate at least this many tokens (EOS is blocked until then, in sampling and in
                scoring alike). Benchmarks use it to fix the generation length; 0 lets the model stop when it likes.
            parse_failure: What text with no legal action teaches. Either way the env gets a random legal
                action. ``random_action`` (RL4VLM): the text is trained on with that action's reward (tokens
                before the boundary weighted as chain-of-thought). ``mask_from_loss``: the step is left out of
                the policy loss (its value target still trains the value head).
            action_parsing: How the action is read from the text. ``rl4vlm``: as RL4VLM's ``text_projection``
                (lower-cased text from the first ``"action":`` on, or its last character without one; exactly
                one legal action found in it). ``strict``: the ``action`` field's value must equal one legal
                action (case and quotes aside).
        """
        super().__init__()
        if action_parsing not in ("rl4vlm", "strict"):
            raise ConfigError(f"action_parsing must be 'rl4vlm' or 'strict' (got {action_parsing!r})")
        if parse_failure not in ("random_action", "mask_from_loss"):
            raise ConfigError(f"parse_failure must be 'random_action' or 'mask_from_loss' (got {parse_failure!r})")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (got {temperature}); greedy decoding is used for evaluation")
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.cot_weight = cot_weight
        self.template = DEFAULT_TEMPLATE if template == "default" else template
        self.with_image = with_image
        self.min_new_tokens = min_new_tokens
        self.parse_failure = parse_failure
        self.action_parsing = action_parsing

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
        # generate() samples from torch's global RNG: draw its seed from the rollout's own generator so a
        # resumed run samples exactly what an uninterrupted one would, without touching the caller's RNG.
        with torch.random.fork_rng(devices=_devices(policy)):
            torch.manual_seed(int(rng.integers(2**63 - 1)))
            responses = policy.generate(
                prompts,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                greedy=greedy,
                min_new_tokens=self.min_new_tokens,
            )
        return self.decisions(policy, prompts, responses, legal_actions, rng)

    def decisions(
        self,
        policy: VLMPolicy,
        prompts: Sequence[PromptSample],
        responses: Sequence[torch.Tensor],
        legal_actions: Sequence[Sequence[str]],
        rng: np.random.Generator,
        extras: Sequence[dict[str, Any]] | None = None,
    ) -> list[Decision]:
        """Generated responses -> parsed env actions, thought/action token weights, and each decision's
        log-prob and value scored by :meth:`evaluate` (``extras``: more per-sample fields it reads, e.g. codes)."""
        tokenizer = policy.tokenizer
        decisions_input = []
        for response in responses:
            ids = response.tolist()
            prefixes = tokenizer.batch_decode(
                [ids[: k + 1] for k in range(len(ids))], skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            text = prefixes[-1] if prefixes else ""
            decisions_input.append((text, [len(p) for p in prefixes]))
        weights = [
            token_weights(lengths, action_boundary(text, rule=self.action_parsing), self.cot_weight)
            for text, lengths in decisions_input
        ]
        samples = [{"prompt": p, "response": r, "weights": w} for p, r, w in zip(prompts, responses, weights)]
        for sample, extra in zip(samples, extras or [{}] * len(samples)):
            sample.update(extra)
        decisions = []
        for i, (text, _) in enumerate(decisions_input):
            action = parse_action(text, legal_actions[i], rule=self.action_parsing)
            failed = action is None
            samples[i]["trainable"] = not (failed and self.parse_failure == "mask_from_loss")
            if failed:
                action = str(rng.choice(list(legal_actions[i])))
            decisions.append(
                Decision(
                    env_action=action,
                    logprob=0.0,
                    value=0.0,
                    sample=samples[i],
                    text=text,
                    parse_failed=failed,
                    generated_tokens=int(responses[i].numel()),
                )
            )
        # Scored by the very function the update calls, on the stored ids: the first ratio is 1.
        scored = self.evaluate(policy, samples, with_entropy=False)
        values = scored.values.tolist() if scored.values is not None else [0.0] * len(decisions)
        for d, logprob, value in zip(decisions, scored.logprobs.tolist(), values):
            d.logprob, d.value = logprob, value
        return decisions

    def evaluate(self, policy: VLMPolicy, samples: Sequence[dict[str, Any]], *, with_entropy: bool) -> Evaluation:
        out = policy.score(
            [s["prompt"] for s in samples],
            [s["response"] for s in samples],
            temperature=self.temperature,
            with_entropy=with_entropy,
            min_new_tokens=self.min_new_tokens,
        )
        device = out.token_logprobs[0].device
        logprobs = torch.stack(
            [(lp * s["weights"].to(device)).sum() for lp, s in zip(out.token_logprobs, samples)]
        )
        entropy = None
        if out.entropies is not None:
            entropy = torch.stack([e.mean() if e.numel() else e.new_zeros(()) for e in out.entropies])
        mask = torch.tensor([float(s.get("trainable", True)) for s in samples], device=device)
        return Evaluation(logprobs, out.values, entropy, token_logprobs=out.token_logprobs, loss_mask=mask)
