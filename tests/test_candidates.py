"""Candidate scoring on the prompt's KV cache equals the full prompt + candidate forward, whatever the chunking."""

import numpy as np
import pytest
import torch

from selu_lightning.action_spaces import CandidateActionSpace
from selu_lightning.action_spaces.base import user_message
from selu_lightning.errors import ConfigError
from selu_lightning.policy.prefix import score_candidates
from selu_lightning.policy.tiny import TINY_ARCHS
from selu_lightning.policy.vlm import LoraSettings, PolicyConfig, VLMPolicy

# ALFWorld-like commands of 1-6 tokens (plus EOS), a different number for each prompt.
ACTIONS = [
    ["go to drawer 1", "+", "take apple 2 from countertop 1", "look", "open fridge 1"],
    ["stand"],
    ["hit", "-", "put mug 1 in/on coffeemachine 1", "inventory"],
]


def _policy(arch: str, **config) -> VLMPolicy:
    torch.manual_seed(0)
    lora = LoraSettings(r=4, alpha=8, targets=["language_model", "projector"])
    policy = VLMPolicy(PolicyConfig(f"tiny:{arch}", lora=lora, **({"value_head_widths": [32]} | config)))
    policy.load()
    with torch.no_grad():  # LoRA's B starts at zero, which would hide the adapters from every comparison
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    return policy


@pytest.fixture(scope="module", params=TINY_ARCHS)
def policy(request):
    policy = _policy(request.param)
    policy.eval()
    return policy


def _inputs(policy: VLMPolicy) -> tuple[list, list]:
    """Three prompts of different lengths, each with an image, and their candidates' ids."""
    rng = np.random.default_rng(0)
    space = CandidateActionSpace()
    prompts, candidates = [], []
    for i, actions in enumerate(ACTIONS):
        task = "Put a clean mug in the coffee machine." * (i + 1)
        text = space.prompt_text(task, f"You are in room {i}.", "", actions)
        frame = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        prompts.append(policy.encode_prompt(user_message(text, True), frame))
        candidates.append(space.candidate_ids(policy, actions))
    return prompts, candidates


def _full_scores(policy: VLMPolicy, prompts: list, candidates: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The old path: one teacher-forced forward over every (prompt, candidate) pair."""
    flat_prompts = [p for p, cands in zip(prompts, candidates) for _ in cands]
    out = policy.score(flat_prompts, [c for cands in candidates for c in cands])
    firsts = np.cumsum([0] + [len(c) for c in candidates[:-1]]).tolist()
    return torch.stack([lp.sum() for lp in out.token_logprobs]), out.values[firsts]


def _loss_and_grads(policy: VLMPolicy, scores: torch.Tensor, values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Backward through a loss that weighs every candidate score and value differently; the trained grads."""
    weights = torch.linspace(-1.0, 1.0, scores.numel())
    policy.zero_grad(set_to_none=True)
    ((weights * scores).sum() + (values * torch.arange(1.0, values.numel() + 1)).sum()).backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad and p.grad is not None}


def test_prefix_scores_and_gradients_equal_the_full_forward(policy):
    prompts, candidates = _inputs(policy)
    ref_scores, ref_values = _full_scores(policy, prompts, candidates)
    ref_grads = _loss_and_grads(policy, ref_scores, ref_values)

    out = score_candidates(policy, prompts, candidates, chunk_size=4)
    scores = torch.cat(out.logprobs)
    assert scores.dtype == torch.float32 and scores.requires_grad
    torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.values, ref_values, atol=1e-5, rtol=0)
    grads = _loss_and_grads(policy, scores, out.values)
    assert set(grads) == set(ref_grads)
    assert any("lora_A" in n for n in grads) and any("value_head" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-4, rtol=1e-3, msg=name)

    with torch.no_grad():
        frozen = score_candidates(policy, prompts, candidates, chunk_size=4)
    assert not frozen.values.requires_grad
    torch.testing.assert_close(torch.cat(frozen.logprobs), scores.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pack", [True, False])
def test_chunk_size_does_not_change_scores(policy, pack):
    prompts, candidates = _inputs(policy)
    with torch.no_grad():
        runs = [score_candidates(policy, prompts, candidates, chunk_size=size, pack=pack) for size in (1, 3, 1000)]
    for out in runs[1:]:
        for got, want in zip(out.logprobs, runs[0].logprobs):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.values, runs[0].values, atol=0, rtol=0)
    assert [len(x) for x in runs[0].logprobs] == [len(c) for c in candidates]


def test_chunk_size_bounds_the_candidates_per_forward():
    """The knob acts: CandidateActionSpace(chunk_size=k) runs at most k candidates per forward on the cache."""
    policy = _policy("llava")
    policy.eval()
    prompts, candidates = _inputs(policy)
    forwards: list[int] = []
    backbone = policy.hf_model.model
    hook = backbone.register_forward_hook(lambda m, args, out: forwards.append(out.last_hidden_state.shape[0]))
    try:
        for size in (1, 1000):
            space = CandidateActionSpace(chunk_size=size)
            space.act(policy, prompts, ACTIONS, greedy=True, rng=np.random.default_rng(0))
    finally:
        hook.remove()
    multi_token = sum(int(c.numel()) > 1 for cands in candidates for c in cands)
    # chunk 1: the prompts, then one forward per candidate of 2+ tokens; chunk 1000: the prompts, then one
    # forward whose rows are the prompts (each row packs that prompt's candidates).
    assert forwards == [len(prompts)] + [1] * multi_token + [len(prompts), len(prompts)]


def test_gradient_checkpointing_keeps_the_prompt_cache():
    """Checkpointed layers drop a cache they cannot replay; ours replays exactly, so it stays and matches."""
    policy = _policy("llava", gradient_checkpointing=True)
    policy.train()  # layers checkpoint only in train mode (the update keeps them there)
    prompts, candidates = _inputs(policy)
    ref_scores, ref_values = _full_scores(policy, prompts, candidates)
    ref_grads = _loss_and_grads(policy, ref_scores, ref_values)
    out = score_candidates(policy, prompts, candidates, chunk_size=3)
    torch.testing.assert_close(torch.cat(out.logprobs), ref_scores, atol=1e-4, rtol=0)
    grads = _loss_and_grads(policy, torch.cat(out.logprobs), out.values)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-4, rtol=1e-3, msg=name)
    assert not any("_can_checkpoint_with_cache" in vars(m) for m in policy.modules()), "flag left behind"


@pytest.mark.parametrize("greedy", [True, False])
def test_act_logprob_equals_evaluate_on_the_stored_sample(policy, greedy):
    prompts, _ = _inputs(policy)
    space = CandidateActionSpace(temperature=0.7, chunk_size=3)
    decisions = space.act(policy, prompts, ACTIONS, greedy=greedy, rng=np.random.default_rng(1))
    assert all(isinstance(d.logprob, float) and isinstance(d.value, float) for d in decisions)
    assert [d.env_action for d in decisions][1] == "stand"
    ev = space.evaluate(policy, [d.sample for d in decisions], with_entropy=True)
    assert ev.logprobs.requires_grad
    torch.testing.assert_close(ev.logprobs.detach(), torch.tensor([d.logprob for d in decisions]), atol=1e-5, rtol=0)
    torch.testing.assert_close(ev.values.detach(), torch.tensor([d.value for d in decisions]), atol=1e-5, rtol=0)
    assert ev.entropy[1] == 0 and bool((ev.entropy[[0, 2]] > 0).all())


def test_eager_attention_gets_an_additive_mask():
    policy = _policy("llava", attn_implementation="eager")
    policy.eval()
    prompts, candidates = _inputs(policy)
    with torch.no_grad():
        ref_scores, ref_values = _full_scores(policy, prompts, candidates)
        out = score_candidates(policy, prompts, candidates, chunk_size=3)
    torch.testing.assert_close(torch.cat(out.logprobs), ref_scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.values, ref_values, atol=1e-5, rtol=0)


def test_multimodal_rope_models_score_full_pairs(monkeypatch):
    """Qwen2-VL-style positions do not continue from the prompt length: those models score every pair in full."""
    policy = _policy("llava")
    policy.eval()
    monkeypatch.setattr(policy.hf_model.model, "get_rope_index", lambda *args, **kwargs: None, raising=False)
    calls = []
    original = policy.backbone
    monkeypatch.setattr(policy, "backbone", lambda p, c: calls.append(len(p)) or original(p, c))
    prompts, candidates = _inputs(policy)
    with torch.no_grad():
        ref_scores, ref_values = _full_scores(policy, prompts, candidates)
        out = score_candidates(policy, prompts, candidates, chunk_size=4)
    assert calls[-4:] == [4, 4, 2, len(prompts)], "pairs in chunks of 4, then the prompts for the values"
    torch.testing.assert_close(torch.cat(out.logprobs), ref_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.values, ref_values, atol=1e-6, rtol=0)


def test_a_policy_without_value_head_acts_with_value_zero():
    policy = _policy("llava", value_head_widths=None)
    policy.eval()
    prompts, _ = _inputs(policy)
    space = CandidateActionSpace()
    decisions = space.act(policy, prompts, ACTIONS, greedy=True, rng=np.random.default_rng(0))
    assert [d.value for d in decisions] == [0.0] * len(ACTIONS)
    assert score_candidates(policy, prompts, [[]] * len(prompts)).values is None


def test_chunk_size_must_be_positive():
    with pytest.raises(ConfigError, match="chunk_size"):
        CandidateActionSpace(chunk_size=0)
