"""Score every legal action string and pick from a categorical over them: no parsing, no fallbacks.

The policy's distribution is ``softmax(s / T)`` with ``s_a = sum log p(tokens of a, then EOS | prompt)``.
Appending EOS makes ``"1"`` and ``"10"`` distinct. Each prompt is run once and its candidates are scored on
its KV cache, ``chunk_size`` candidates at a time (:func:`selu_lightning.policy.prefix.score_candidates`):
ALFWorld's 20-50 commands cost their own tokens, not 20-50 copies of the prompt. Rollout and update call the
same function, so the first PPO minibatch's ratio is 1. This is what lets a small model learn quickly (the
quickstart's default).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from selu_lightning.errors import ConfigError
from selu_lightning.action_spaces.base import ActionSpace, Decision, Evaluation
from selu_lightning.policy.prefix import score_candidates
from selu_lightning.policy.vlm import PromptSample, VLMPolicy

__all__ = ["CandidateActionSpace"]

DEFAULT_TEMPLATE = "{task}\n{state}\nLegal actions: {actions}\nAnswer with one legal action."


class CandidateActionSpace(ActionSpace):
    requires_legal_actions = True

    def __init__(
        self,
        temperature: float = 1.0,
        template: str = "default",
        with_image: bool = True,
        chunk_size: int = 64,
    ) -> None:
        """
        Args:
            temperature: Divides the candidate scores before the softmax.
            template: Prompt text with ``{task}``, ``{state}``, ``{goal}``, ``{actions}`` fields; ``default``:
                this space's own (give ``default`` when swapping from another space's configured template).
            with_image: Put the frame in the prompt.
            chunk_size: Candidates scored per forward on the prompts' KV cache. Each prompt runs once; a chunk
                holds one copy of its prompts' cache, so smaller chunks bound memory, larger ones run faster.
        """
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (got {temperature})")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 (got {chunk_size})")
        self.temperature = temperature
        self.template = DEFAULT_TEMPLATE if template == "default" else template
        self.with_image = with_image
        self.chunk_size = chunk_size

    def candidate_ids(self, policy: VLMPolicy, actions: Sequence[str]) -> list[torch.Tensor]:
        eos = policy.tokenizer.eos_token_id
        encoded = policy.tokenizer(list(actions), add_special_tokens=False)["input_ids"]
        return [torch.tensor(ids + [eos], dtype=torch.long) for ids in encoded]

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
        if any(len(a) == 0 for a in legal_actions):
            raise ValueError("CandidateActionSpace got an observation with no legal actions")
        samples = [
            {"prompt": p, "candidates": self.candidate_ids(policy, actions), "choice": 0}
            for p, actions in zip(prompts, legal_actions)
        ]
        logits, values, _ = self._candidate_logits(policy, samples, with_entropy=False)
        # One device-to-host copy for the whole batch; sampling and bookkeeping run on the host.
        logps = torch.cat([torch.log_softmax(row, -1) for row in logits]).cpu().split([len(a) for a in legal_actions])
        values_host = values.float().cpu().tolist() if values is not None else [0.0] * len(samples)
        decisions = []
        for i, (logp, actions) in enumerate(zip(logps, legal_actions)):
            if greedy:
                choice = int(torch.argmax(logp))
            else:
                choice = int(rng.choice(len(actions), p=_normalised(np.exp(np.array(logp.tolist(), dtype=np.float64)))))
            samples[i]["choice"] = choice
            decisions.append(
                Decision(
                    env_action=actions[choice],
                    logprob=float(logp[choice]),
                    value=values_host[i],
                    sample=samples[i],
                    text=actions[choice],
                )
            )
        return decisions

    def evaluate(self, policy: VLMPolicy, samples: Sequence[dict[str, Any]], *, with_entropy: bool) -> Evaluation:
        logits, values, entropy = self._candidate_logits(policy, samples, with_entropy=with_entropy)
        logprobs = torch.stack([torch.log_softmax(row, -1)[s["choice"]] for row, s in zip(logits, samples)])
        return Evaluation(logprobs, values, entropy)

    def _candidate_logits(
        self, policy: VLMPolicy, samples: Sequence[dict[str, Any]], *, with_entropy: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Per sample the tempered candidate logits (fp32) and the prompt's value: each prompt runs once."""
        out = score_candidates(
            policy, [s["prompt"] for s in samples], [s["candidates"] for s in samples], chunk_size=self.chunk_size
        )
        logits = [row / self.temperature for row in out.logprobs]
        values = out.values
        entropy = None
        if with_entropy:
            logps = [torch.log_softmax(row, -1) for row in logits]
            entropy = torch.stack([-(lp.exp() * lp).sum() for lp in logps])
        return logits, values, entropy


def _normalised(p: np.ndarray) -> np.ndarray:
    return p / p.sum()
