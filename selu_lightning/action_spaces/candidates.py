"""Score every legal action string and pick from a categorical over them: no parsing, no fallbacks.

The policy's distribution is ``softmax(s / T)`` with ``s_a = sum log p(tokens of a, then EOS | prompt)``:
one forward scores all candidates of all envs together. Appending EOS makes ``"1"`` and ``"10"`` distinct.
This is what lets a small model learn quickly (the quickstart's default).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from selu_lightning.errors import ConfigError
from selu_lightning.action_spaces.base import ActionSpace, Decision, Evaluation
from selu_lightning.policy.vlm import PromptSample, VLMPolicy

__all__ = ["CandidateActionSpace"]

DEFAULT_TEMPLATE = "{task}\n{state}\nLegal actions: {actions}\nAnswer with one legal action."


class CandidateActionSpace(ActionSpace):
    requires_legal_actions = True

    def __init__(self, temperature: float = 1.0, template: str = DEFAULT_TEMPLATE, with_image: bool = True) -> None:
        """
        Args:
            temperature: Divides the candidate scores before the softmax.
            template: Prompt text with ``{task}``, ``{state}``, ``{goal}``, ``{actions}`` fields.
            with_image: Put the frame in the prompt.
        """
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (got {temperature})")
        self.temperature = temperature
        self.template = template
        self.with_image = with_image

    def prompt_text(self, task: str, state: str, goal: str, legal_actions: Sequence[str]) -> str:
        return self.template.format(task=task, state=state, goal=goal, actions=", ".join(legal_actions))

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
        decisions = []
        for i, (row, actions) in enumerate(zip(logits, legal_actions)):
            logp = torch.log_softmax(row, dim=-1)
            if greedy:
                choice = int(torch.argmax(row))
            else:
                choice = int(rng.choice(len(actions), p=_normalised(logp.exp().double().numpy())))
            samples[i]["choice"] = choice
            decisions.append(
                Decision(
                    env_action=actions[choice],
                    logprob=float(logp[choice]),
                    value=float(values[i]),
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
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """One forward over every (prompt, candidate) pair; per sample the tempered candidate logits."""
        prompts, conts, firsts = [], [], []
        for s in samples:
            firsts.append(len(prompts))
            prompts.extend([s["prompt"]] * len(s["candidates"]))
            conts.extend(s["candidates"])
        out = policy.score(prompts, conts, temperature=1.0)
        seq_scores = torch.stack([lp.sum() for lp in out.token_logprobs])
        logits = [
            seq_scores[start : start + len(s["candidates"])] / self.temperature for start, s in zip(firsts, samples)
        ]
        values = out.values[torch.as_tensor(firsts, device=out.values.device)]
        entropy = None
        if with_entropy:
            logps = [torch.log_softmax(row, -1) for row in logits]
            entropy = torch.stack([-(lp.exp() * lp).sum() for lp in logps])
        return logits, values, entropy


def _normalised(p: np.ndarray) -> np.ndarray:
    return p / p.sum()
