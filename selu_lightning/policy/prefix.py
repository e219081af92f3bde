"""Score many short continuations of each prompt on that prompt's KV cache: prefill once, then bounded chunks.

:func:`score_candidates` gives, for every prompt and each of its candidate continuations, the fp32 sum of
``log p(token)`` over the candidate's tokens, plus the value of the prompt's last token. It equals
``VLMPolicy.score`` summed per continuation (same masking of image/suppressed tokens, same fp32 log-softmax),
but a prompt of P tokens with C candidates of n tokens costs P + C * n tokens instead of C * (P + n):

1. one backbone forward over the right-padded prompts (images included) keeps every layer's keys and values;
   the last prompt token's hidden state feeds the value head and predicts every candidate's first token;
2. the candidates, in order, are cut into chunks of at most ``chunk_size``. In a chunk, the candidates of one
   prompt are packed into one row; each token attends to its prompt's cached keys and to its own candidate's
   earlier tokens only (a 4D mask), at positions that continue the prompt's. The cache is read, never grown, so
   a chunk holds one copy of its prompts' keys (one per prompt, not per candidate);
3. logits are computed only where a candidate token is predicted, never over padding.

Rollout (no grad) and the PPO update (with grad) call the same function on the same ids, so the first
minibatch's ratio is 1. Under gradient checkpointing the decoder layers keep the cache, which is safe here:
the prompt forward's cache replaces (never appends) its entries and the chunks' cache is read-only, so a
layer replayed in the backward pass sees exactly what it saw the first time. Models whose positions come
from the image grid (multimodal RoPE, the Qwen2-VL family) fall back to scoring every pair in full, chunked.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from selu_lightning.policy.vlm import PromptSample, VLMPolicy, _collate_prompts

__all__ = ["CandidateScores", "score_candidates"]

#: Attention implementations that take an arbitrary 4D mask (bool for sdpa, additive for eager). Others
#: (flash attention, ...) take only a 2D padding mask: each candidate then gets its own row.
_MASK_4D = ("sdpa", "eager")


@dataclass
class CandidateScores:
    logprobs: list[torch.Tensor]
    """Per prompt: [C_i] fp32 ``sum log p(token)`` of each candidate continuation."""
    values: torch.Tensor | None
    """[B] fp32 value of each prompt's last token (None when the policy has no value head)."""


def score_candidates(
    policy: VLMPolicy,
    prompts: Sequence[PromptSample],
    candidates: Sequence[Sequence[torch.Tensor]],
    *,
    chunk_size: int = 64,
    pack: bool | None = None,
) -> CandidateScores:
    """Per-candidate fp32 log-prob sums and per-prompt values, prefilling each prompt once.

    Args:
        policy: A loaded policy; its ``model`` (LoRA included) and ``value_head`` (if any) are run.
        prompts: Processor outputs, one per prompt (1-D ``input_ids``).
        candidates: Per prompt, its candidate continuations as 1-D token id tensors.
        chunk_size: At most this many candidates per continuation forward (bounds activation memory).
        pack: Pack a prompt's candidates into one row with a 4D mask (default: when the attention
            implementation takes one). ``False`` gives each candidate its own row and a 2D mask.
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"score_candidates got {len(prompts)} prompts but {len(candidates)} candidate lists")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    hf = policy.hf_model
    backbone = getattr(hf, "model", None)
    if backbone is None:
        raise TypeError(f"{type(hf).__name__} has no `.model` backbone; not an image-text-to-text model?")
    if hasattr(backbone, "get_rope_index"):
        # Multimodal RoPE (Qwen2-VL family): a continuation's positions are not "prompt length + j" but come
        # from the image grid, so score every (prompt, candidate) pair in full, chunk by chunk.
        return _score_pairs(policy, prompts, candidates, chunk_size)
    text_config = hf.config.get_text_config()
    attn = getattr(text_config, "_attn_implementation", None) or "eager"
    pack = attn in _MASK_4D if pack is None else pack
    if pack and attn not in _MASK_4D:
        raise ValueError(f"packed candidates need a 4D attention mask, which {attn!r} attention does not take")
    device = policy.device
    head = hf.get_output_embeddings()
    suppress = torch.tensor(sorted(policy.suppress_token_ids), dtype=torch.long, device=device)
    lengths = [int(p["input_ids"].numel()) for p in prompts]
    flat = [(i, c.reshape(-1).long().cpu()) for i, conts in enumerate(candidates) for c in conts]

    with _cache_kept_under_checkpointing(hf):
        # 1. Prefill: one forward over every prompt, keeping each layer's keys and values.
        batch = _collate_prompts(policy.materialize(prompts), pad_id=policy._pad_id, left=False)
        batch = {k: v.to(device) for k, v in batch.items()}
        prompt_cache = Cache(layer_class_to_replicate=_PromptLayer)
        hidden = backbone(**batch, cache=prompt_cache, use_cache=False).last_hidden_state
        rows = torch.arange(len(prompts), device=device)
        last = hidden[rows, torch.as_tensor(lengths, device=device) - 1]  # [B, H]
        del hidden
        values = policy.value_head(last) if policy.value_head is not None else None

        # Every candidate's first token is predicted by its prompt's last token: one log-softmax per prompt.
        scores = torch.zeros(len(flat), dtype=torch.float32, device=device)
        firsts = [(k, i, ids[0]) for k, (i, ids) in enumerate(flat) if ids.numel() > 0]
        if firsts:
            index, owner, token = (torch.tensor(col, dtype=torch.long, device=device) for col in zip(*firsts))
            scores = scores.index_add(0, index, _token_logprobs(head, last, suppress)[owner, token])

        # 2. The rest of each candidate, on the prompt cache, in chunks.
        window = getattr(text_config, "sliding_window", None)
        mask_dtype = torch.bool if attn == "sdpa" else head.weight.dtype
        todo = [(k, i, ids) for k, (i, ids) in enumerate(flat) if ids.numel() > 1]
        for start in range(0, len(todo), chunk_size):
            part = todo[start : start + chunk_size]
            chunk = _chunk_inputs(part, lengths, pack=pack, window=window, mask_dtype=mask_dtype)
            cache = _prefix_cache(prompt_cache, chunk.prompt_rows, chunk.prefix_len, device)
            inputs = {k: v.to(device) for k, v in chunk.model_inputs.items()}
            hidden = backbone(**inputs, cache=cache, use_cache=False).last_hidden_state
            hidden = hidden.flatten(0, 1).index_select(0, chunk.positions.to(device))  # real tokens only
            logp = _token_logprobs(head, hidden, suppress)
            token_logp = logp.gather(-1, chunk.targets.to(device)[:, None]).squeeze(-1)
            scores = scores.index_add(0, chunk.candidate.to(device), token_logp)
            del cache, hidden, logp

    return CandidateScores(list(scores.split([len(c) for c in candidates])), values)


# ---------------------------------------------------------------------- helpers
def _score_pairs(
    policy: VLMPolicy, prompts: Sequence[PromptSample], candidates: Sequence[Sequence[torch.Tensor]], chunk_size: int
) -> CandidateScores:
    """The fallback: prompt + candidate in full, ``chunk_size`` pairs per forward, values from the prompts."""
    pairs = [(prompts[i], c) for i, conts in enumerate(candidates) for c in conts]
    sums: list[torch.Tensor] = []
    for start in range(0, len(pairs), chunk_size):
        part = pairs[start : start + chunk_size]
        out = policy.backbone([p for p, _ in part], [c for _, c in part])
        logprobs, _ = policy.continuation_logprobs(out, [c for _, c in part])
        sums += [lp.sum() for lp in logprobs]
    values = None
    if policy.value_head is not None:
        values = policy.values(policy.backbone(prompts, [torch.zeros(0, dtype=torch.long)] * len(prompts)))
    scores = torch.stack(sums) if sums else torch.zeros(0, device=policy.device)
    return CandidateScores(list(scores.split([len(c) for c in candidates])), values)


def _token_logprobs(head: nn.Module, hidden: torch.Tensor, suppress: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of the next-token logits, with image/suppressed tokens at -inf (as VLMPolicy.score)."""
    logits = head(hidden).float()
    if suppress.numel():
        logits = logits.index_fill(-1, suppress, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


@dataclass
class _Chunk:
    prefix_len: int
    """The longest prompt among the chunk's rows: how many cached positions the rows read."""
    prompt_rows: list[int]
    """Each row's prompt index."""
    model_inputs: dict[str, torch.Tensor]
    """``input_ids``, ``attention_mask``, ``position_ids`` of the right-padded rows."""
    positions: torch.Tensor
    """Flat (row * width + column) index of each real token; logits are computed there only."""
    targets: torch.Tensor
    """Per real token, the candidate token it predicts."""
    candidate: torch.Tensor
    """Per real token, the index of its candidate among all candidates."""


def _chunk_inputs(
    chunk: Sequence[tuple[int, int, torch.Tensor]],
    prompt_lengths: Sequence[int],
    *,
    pack: bool,
    window: int | None,
    mask_dtype: torch.dtype,
) -> _Chunk:
    """Right-padded rows of candidate tokens (all but each candidate's last, which predicts nothing here),
    built on the host. ``chunk`` holds ``(candidate index, prompt index, token ids)``; with ``pack`` the
    candidates of one prompt share a row."""
    rows: list[list[tuple[int, torch.Tensor]]] = []
    row_prompt: list[int] = []
    for cand, prompt, ids in chunk:
        if pack and row_prompt and row_prompt[-1] == prompt:
            rows[-1].append((cand, ids))
        else:
            rows.append([(cand, ids)])
            row_prompt.append(prompt)
    n_rows = len(rows)
    width = max(sum(int(ids.numel()) - 1 for _, ids in row) for row in rows)
    prefix = max(prompt_lengths[p] for p in row_prompt)
    input_ids = torch.zeros(n_rows, width, dtype=torch.long)
    targets = torch.zeros(n_rows, width, dtype=torch.long)
    offset = torch.zeros(n_rows, width, dtype=torch.long)  # position within the candidate
    segment = torch.full((n_rows, width), -1, dtype=torch.long)  # candidate index, -1 on padding
    for r, row in enumerate(rows):
        col = 0
        for cand, ids in row:
            n = int(ids.numel()) - 1
            input_ids[r, col : col + n] = ids[:-1]
            targets[r, col : col + n] = ids[1:]
            offset[r, col : col + n] = torch.arange(n)
            segment[r, col : col + n] = cand
            col += n
    valid = segment >= 0
    plen = torch.tensor([prompt_lengths[p] for p in row_prompt], dtype=torch.long)
    position_ids = plen[:, None] + offset
    # Which keys each query sees: its prompt's real tokens, then its own candidate's tokens up to itself.
    key_pos = torch.arange(prefix)
    sees_prompt = (key_pos[None, :] < plen[:, None])[:, None, :].expand(n_rows, width, prefix)
    if window is not None:
        sees_prompt = sees_prompt & (position_ids[:, :, None] - key_pos[None, None, :] < window)
    if pack:
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        sees_self = (segment[:, :, None] == segment[:, None, :]) & valid[:, :, None] & causal
        if window is not None:
            sees_self = sees_self & (offset[:, :, None] - offset[:, None, :] < window)
        allowed = torch.cat([sees_prompt, sees_self], dim=-1)[:, None]  # [R, 1, Q, P + Q]
        if mask_dtype == torch.bool:
            attention_mask = allowed
        else:  # eager attention adds the mask to the scores
            attention_mask = torch.zeros(allowed.shape, dtype=mask_dtype).masked_fill(
                ~allowed, torch.finfo(mask_dtype).min
            )
    else:
        # One candidate per row: a 2D padding mask over [prompt keys, candidate tokens]; the model adds causality.
        attention_mask = torch.cat([(key_pos[None, :] < plen[:, None]), valid], dim=-1).long()
    positions = valid.flatten().nonzero().flatten()
    return _Chunk(
        prefix_len=prefix,
        prompt_rows=row_prompt,
        model_inputs={"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids},
        positions=positions,
        targets=targets.flatten()[positions],
        candidate=segment.flatten()[positions],
    )


def _prefix_cache(prompt_cache: Cache, prompt_rows: list[int], prefix_len: int, device: torch.device) -> Cache:
    """A read-only cache holding, per row, its prompt's first ``prefix_len`` keys and values (one copy per row;
    none when the rows are the prompts themselves)."""
    first = prompt_cache.layers[0].keys
    same = prompt_rows == list(range(first.shape[0])) and prefix_len == first.shape[-2]
    index = None if same else torch.tensor(prompt_rows, dtype=torch.long, device=device)
    layers = []
    for layer in prompt_cache.layers:
        keys, values = layer.keys, layer.values
        if index is not None:
            keys = keys[:, :, :prefix_len].index_select(0, index)
            values = values[:, :, :prefix_len].index_select(0, index)
        layers.append(_ReadOnlyPrefixLayer(keys, values))
    return Cache(layers=layers)


class _PromptLayer(DynamicLayer):
    """Holds one layer's prompt keys and values. A checkpointed layer replayed in the backward pass writes
    again: replacing (instead of appending) keeps that harmless."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys, self.values = key_states, value_states
        self.device, self.is_initialized = key_states.device, True
        return key_states, value_states


class _ReadOnlyPrefixLayer(DynamicLayer):
    """A fixed prefix: each forward attends to prefix + its own new tokens, and the prefix never grows."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@contextmanager
def _cache_kept_under_checkpointing(hf: nn.Module) -> Iterator[None]:
    """Let gradient-checkpointed decoder layers keep our cache (transformers drops a cache it cannot replay)."""
    layers = [
        m for m in hf.modules()
        if getattr(m, "gradient_checkpointing", False) is True and hasattr(m, "_can_checkpoint_with_cache")
    ]  # fmt: skip
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            m.__dict__.pop("_can_checkpoint_with_cache", None)
