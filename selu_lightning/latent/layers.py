"""Small causal transformer stacks on the backbone's hidden states: the inverse dynamics model and the latent
policy are each one of these, ending in K code logits.

The reference (MMLatentAction) builds these from the backbone's own decoder-layer class (Qwen2.5-VL, with its
rotary positions). Here one backbone-agnostic pre-norm block (RMSNorm, causal attention, SiLU-gated MLP) serves
every ``AutoModelForImageTextToText``: its input, the final hidden state h, already carries each token's position,
so the block adds no positional encoding of its own. Sizes (heads, MLP width, norm eps) follow the backbone's
text config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CausalBlock", "CodeStack", "KVCache", "padded_causal_mask"]

#: Per block, the keys and values seen so far (incremental decoding); an empty list starts a new sequence.
KVCache = list[list[torch.Tensor]]


def padded_causal_mask(key_mask: torch.Tensor, queries: int) -> torch.Tensor:
    """[B, n, T] attention mask for the last ``queries`` of T positions: causal, padding keys hidden. A query on
    padding sees itself only, so no row is empty (an all-hidden row would give NaN that spreads through the
    values of later layers)."""
    total = key_mask.shape[-1]
    past = total - queries
    causal = torch.ones(queries, total, dtype=torch.bool, device=key_mask.device).tril(diagonal=past)
    itself = torch.zeros_like(causal)
    itself[torch.arange(queries), torch.arange(queries) + past] = True
    return (causal[None] & key_mask.bool()[:, None, :]) | itself[None]


class CausalBlock(nn.Module):
    """Pre-norm causal self-attention + SiLU-gated MLP, each added to the residual stream."""

    def __init__(self, hidden_size: int, heads: int, ffn_size: int, eps: float) -> None:
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {heads} heads")
        self.heads = heads
        self.attn_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.gate = nn.Linear(hidden_size, ffn_size, bias=False)
        self.up = nn.Linear(hidden_size, ffn_size, bias=False)
        self.down = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, cache: list[torch.Tensor] | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` [B, L, d]. With ``cache`` (a list, filled in place), ``x`` continues the cached sequence.
        ``key_mask`` [B, cached + L] (True: a real position) hides padding from every query (left-padded batches)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None:
            if cache:
                past = cache[0].shape[2]
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        if key_mask is not None:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=padded_causal_mask(key_mask, n)[:, None])
        elif past == 0:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new queries sit after the cached keys: query i sees keys 0 .. past + i
            mask = torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(diagonal=past)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(attn.transpose(1, 2).reshape(b, n, d))
        y = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class CodeStack(nn.Module):
    """``layers`` causal blocks on h -> RMSNorm -> Linear(d, K): code logits at every position (fp32). With 0
    layers a position's logits read only its own h, which the VLM has already computed from the whole context."""

    def __init__(self, hidden_size: int, num_codes: int, layers: int, heads: int, ffn_size: int, eps: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CausalBlock(hidden_size, heads, ffn_size, eps) for _ in range(layers))
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        self.head = nn.Linear(hidden_size, num_codes, bias=False)

    def forward(self, h: torch.Tensor, cache: KVCache | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask``: as :meth:`CausalBlock.forward` (left-padded batches)."""
        x = h.to(self.head.weight.dtype)
        if cache is not None and not cache:
            cache.extend([] for _ in self.blocks)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i], key_mask)
        return self.head(self.norm(x)).float()
