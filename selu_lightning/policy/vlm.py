"""VLMPolicy: any ``AutoModelForImageTextToText`` + its processor, with LoRA and a value head.

Weights load lazily (:meth:`VLMPolicy.load`, called from the LightningModule's ``configure_model``) so that
every configuration error is reported before a multi-GB checkpoint is read, and so FSDP can shard at load.

Two operations serve every action space:

- :meth:`generate`: one batched, left-padded ``generate`` for all envs (sampling only; no scores kept).
- :meth:`score`: one right-padded teacher-forced forward over prompt + continuation that returns fp32
  per-token log-probs of the continuation (logits / temperature, image tokens masked out), the value of the
  last prompt token and, if asked, per-token entropies. Rollout (no grad, eval mode) and the PPO update
  call the same function on the same stored token ids, so old and new log-probs agree by construction.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn

from selu_lightning.errors import ConfigError
from selu_lightning.policy.tiny import resolve_model_path

__all__ = ["LoraSettings", "PolicyConfig", "VLMPolicy", "ScoreOutput", "PromptSample"]

#: One prompt as the processor produced it: ``input_ids`` 1-D, image tensors with their batch dim.
PromptSample = dict[str, torch.Tensor]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Processor outputs that have one entry per token (padded with the prompt), the rest are per image.
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
_MODULE_GROUPS = {
    "language_model": ("model.language_model.", "model.text_model."),
    "vision_tower": ("model.vision_tower.", "model.vision_model.", "model.visual."),
    "projector": ("model.multi_modal_projector.", "model.connector.", "model.visual.merger."),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft). Only the adapter and the value head train."""

    r: int = 8
    """Adapter rank."""
    alpha: int = 16
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input. Active only in train mode, i.e. in PPO updates when
    ``model.dropout_in_update`` is true; rollouts always run without dropout."""
    targets: list[Literal["language_model", "vision_tower", "projector"]] = field(
        default_factory=lambda: ["language_model"]
    )
    """Which parts get adapters on all their linear layers (RL4VLM: all three)."""


@dataclass
class ScoreOutput:
    token_logprobs: list[torch.Tensor]
    """Per continuation: fp32 log p(token) of each continuation token."""
    values: torch.Tensor
    """[B] fp32 value of the last prompt token."""
    entropies: list[torch.Tensor] | None = None
    """Per continuation: fp32 entropy of the (tempered) next-token distribution at each token."""


class ValueHead(nn.Module):
    """MLP on the last prompt token's hidden state (RL4VLM: hidden -> 1024 -> 512 -> 1, ReLU)."""

    def __init__(self, hidden_size: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = hidden_size
        for width in widths:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        layers.append(nn.Linear(last, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.float()).squeeze(-1)


@dataclass
class PolicyConfig:
    """Which VLM to load and how to train it. Validated when parsed, before any weights load."""

    model_name_or_path: str
    """A local checkpoint folder, a hub id (needs the hub or its cache), or ``tiny:<arch>`` for a tiny
    offline model built on first use (``tiny:llava``, ``tiny:llava_next``, ``tiny:idefics3``)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype. Log-probs, values and losses are computed in fp32 whatever this is."""
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    """LoRA adapters; null trains every weight of the model."""
    freeze: list[Literal["language_model", "vision_tower", "projector"]] = field(default_factory=list)
    """With ``lora: null`` (full fine-tuning), parts that keep their loaded weights, e.g. ``[vision_tower]``.
    LLaVA reads an inner vision layer, so its last vision layers get no gradient: freeze the tower under DDP."""
    value_head_widths: list[int] = field(default_factory=lambda: [1024, 512])
    """Hidden widths of the value MLP on the last prompt token's hidden state."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, slower)."""
    trust_remote_code: bool = False
    """Allow a checkpoint's own Python code to run. Off unless you trust the checkpoint."""
    attn_implementation: str | None = None
    """e.g. sdpa, flash_attention_2, eager; null: transformers' default."""
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for AutoProcessor.from_pretrained."""

    def __post_init__(self) -> None:
        _check_model_source(self.model_name_or_path)
        if self.freeze and self.lora is not None:
            raise ConfigError("model.policy.freeze applies to full fine-tuning; with LoRA choose model.policy.lora.targets")


class VLMPolicy(nn.Module):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.model: nn.Module | None = None
        self.value_head: ValueHead | None = None
        self.processor: Any = None

    @property
    def lora(self) -> LoraSettings | None:
        return self.config.lora

    # ------------------------------------------------------------------ loading
    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        """Read the checkpoint, add LoRA and the value head. Idempotent."""
        if self.loaded:
            return
        from transformers import AutoModelForImageTextToText, AutoProcessor

        cfg = self.config
        path = resolve_model_path(cfg.model_name_or_path)
        kwargs: dict[str, Any] = {"dtype": _DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        hf = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **cfg.processor_kwargs)
        self.processor.tokenizer.padding_side = "left"
        if cfg.gradient_checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            hf.config.use_cache = False
        if self.lora is not None:
            from peft import LoraConfig, get_peft_model

            targets = lora_target_modules(hf, self.lora.targets)
            config = LoraConfig(
                r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout, target_modules=targets
            )
            self.model = get_peft_model(hf, config)
        else:
            frozen = set(lora_target_modules(hf, cfg.freeze, linear_only=False)) if cfg.freeze else set()
            for name, param in hf.named_parameters():
                if name.rsplit(".", 1)[0] in frozen:
                    param.requires_grad_(False)
            self.model = hf
        self.value_head = ValueHead(_hidden_size(hf.config), cfg.value_head_widths)
        # from_pretrained returns eval mode; train mode lets dropout act where it is asked for
        # (rollouts and scoring switch it off explicitly).
        self.model.train()
        self.suppress_token_ids = _image_token_ids(hf.config)
        eos = hf.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if not self.eos_token_ids and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids = {self.tokenizer.eos_token_id}

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def hf_model(self) -> nn.Module:
        """The transformers model under any peft wrapper."""
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def device(self) -> torch.device:
        return next(self.value_head.parameters()).device

    @contextmanager
    def reference(self) -> Iterator[None]:
        """The frozen base model: LoRA adapters switched off (needs LoRA)."""
        if self.lora is None:
            raise ConfigError("a reference model (KL penalty) needs LoRA: set model.policy.lora")
        with self.model.disable_adapter():
            yield

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, messages: list[dict[str, Any]], image: np.ndarray | None) -> PromptSample:
        """Chat template + processor for one prompt; the tensors are what generate and score consume."""
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if image is not None:
            from PIL import Image

            kwargs["images"] = [Image.fromarray(image)]
        out = self.processor(**kwargs)
        sample = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        for key in _PER_TOKEN_KEYS:
            if key in sample:
                sample[key] = sample[key][0]
        return sample

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[PromptSample],
        *,
        max_new_tokens: int,
        temperature: float,
        greedy: bool,
        min_new_tokens: int = 0,
    ) -> list[torch.Tensor]:
        """One batched generate for every prompt; returns each response's token ids, cut after EOS."""
        batch = _collate_prompts(prompts, pad_id=self._pad_id, left=True)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        )
        out = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens or None,
            suppress_tokens=sorted(self.suppress_token_ids) or None,
            pad_token_id=self._pad_id,
            use_cache=True,
            **sampling,
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :].cpu()
        return [self._cut_after_eos(row) for row in new_tokens]

    def _cut_after_eos(self, row: torch.Tensor) -> torch.Tensor:
        hits = [i for i, tok in enumerate(row.tolist()) if tok in self.eos_token_ids]
        return row[: hits[0] + 1] if hits else row

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_token_ids))

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        prompts: Sequence[PromptSample],
        continuations: Sequence[torch.Tensor],
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> ScoreOutput:
        """Teacher-forced fp32 log-probs of each continuation after its prompt, plus the prompt's value.

        Right padding keeps every real token at the position it had in generation; logits are computed
        only at continuation positions (never over padding), which keeps memory to tokens x vocab.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} continuations")
        batch, prompt_lens = _collate_sequences(prompts, continuations, pad_id=self._pad_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hf = self.hf_model
        backbone_out = self._backbone(hf)(**batch, use_cache=False)
        hidden = backbone_out.last_hidden_state  # [B, L, H]
        rows = torch.arange(len(prompts), device=hidden.device)
        values = self.value_head(hidden[rows, torch.as_tensor(prompt_lens, device=hidden.device) - 1])

        # Positions whose next-token distribution predicts a continuation token.
        row_idx, pos_idx, targets, lengths = [], [], [], []
        for i, (plen, cont) in enumerate(zip(prompt_lens, continuations)):
            n = int(cont.numel())
            row_idx.append(torch.full((n,), i, dtype=torch.long))
            pos_idx.append(torch.arange(plen - 1, plen - 1 + n))
            targets.append(cont.long())
            lengths.append(n)
        row_t = torch.cat(row_idx).to(hidden.device)
        pos_t = torch.cat(pos_idx).to(hidden.device)
        target_t = torch.cat(targets).to(hidden.device)
        logits = hf.get_output_embeddings()(hidden[row_t, pos_t]).float() / temperature
        if self.suppress_token_ids:
            logits[:, sorted(self.suppress_token_ids)] = float("-inf")
        logp_all = torch.log_softmax(logits, dim=-1)
        token_logprobs = logp_all.gather(-1, target_t[:, None]).squeeze(-1)
        entropies = None
        if with_entropy:
            probs = logp_all.exp()
            ent = -(probs * logp_all.masked_fill(probs == 0, 0.0)).sum(-1)
            entropies = list(ent.split(lengths))
        return ScoreOutput(list(token_logprobs.split(lengths)), values, entropies)

    @staticmethod
    def _backbone(hf: nn.Module) -> nn.Module:
        backbone = getattr(hf, "model", None)
        if backbone is None:
            raise TypeError(f"{type(hf).__name__} has no `.model` backbone; not an image-text-to-text model?")
        return backbone


# ---------------------------------------------------------------------- helpers (pure)
def _check_model_source(name: str) -> None:
    """Fail in one line, before anything loads, when a local checkpoint path does not exist."""
    if name.startswith("tiny:"):
        from selu_lightning.policy.tiny import TINY_ARCHS

        arch = name.split(":", 1)[1]
        if arch not in TINY_ARCHS:
            raise ConfigError(f"unknown tiny model {name!r}; choose one of: {', '.join('tiny:' + a for a in TINY_ARCHS)}")
        return
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"model path {name!r} exists but has no config.json: not a transformers checkpoint")
        return
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(name, "config.json"), str):
                raise ConfigError(f"model {name!r} is not a local folder and not in the hub cache (HF_HUB_OFFLINE is set)")
        return  # a hub id such as llava-hf/llava-v1.6-mistral-7b-hf: transformers fetches it
    raise ConfigError(f"model path {name!r} does not exist (expected a checkpoint folder, a hub id or tiny:<arch>)")


def lora_target_modules(hf: nn.Module, groups: Sequence[str], linear_only: bool = True) -> list[str]:
    """Full names of every ``nn.Linear`` (or, with ``linear_only=False``, every module) inside the chosen
    model parts; never the LM head."""
    unknown = set(groups) - set(_MODULE_GROUPS)
    if unknown:
        raise ConfigError(f"unknown LoRA target group(s) {sorted(unknown)}; choose from {sorted(_MODULE_GROUPS)}")
    projector_prefixes = _MODULE_GROUPS["projector"]
    names = []
    for name, module in hf.named_modules():
        if linear_only and not isinstance(module, nn.Linear):
            continue
        key = name + "."
        in_projector = key.startswith(projector_prefixes)
        for group in groups:
            prefixes = _MODULE_GROUPS[group]
            if key.startswith(prefixes) and (group == "projector" or not in_projector):
                names.append(name)
                break
    if not names:
        raise ConfigError(f"no layers found for model parts {list(groups)} in {type(hf).__name__}")
    return names


def _hidden_size(config: Any) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.hidden_size)


def _image_token_ids(config: Any) -> set[int]:
    """Token ids that only the processor may place (image/video placeholders): never sampled or scored."""
    ids = set()
    for attr in ("image_token_id", "image_token_index", "video_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value >= 0:
            ids.add(value)
    return ids


def _collate_prompts(prompts: Sequence[PromptSample], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Pad per-token tensors (left for generation), concatenate per-image tensors along dim 0."""
    batch: dict[str, torch.Tensor] = {}
    keys = prompts[0].keys()
    for key in keys:
        items = [p[key] for p in prompts]
        if key in _PER_TOKEN_KEYS:
            batch[key] = _pad(items, pad_id if key == "input_ids" else 0, left=left)
        else:
            batch[key] = _cat_images(key, items)
    if "attention_mask" not in batch:
        batch["attention_mask"] = _pad([torch.ones_like(p["input_ids"]) for p in prompts], 0, left=left)
    return batch


def _collate_sequences(
    prompts: Sequence[PromptSample], continuations: Sequence[torch.Tensor], pad_id: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Right-padded prompt + continuation batch, and each prompt's length."""
    full = []
    for prompt, cont in zip(prompts, continuations):
        sample = dict(prompt)
        n = int(cont.numel())
        sample["input_ids"] = torch.cat([prompt["input_ids"], cont.to(prompt["input_ids"].dtype)])
        sample["attention_mask"] = torch.ones_like(sample["input_ids"])
        for key in _PER_TOKEN_KEYS[2:]:
            if key in prompt:
                sample[key] = torch.cat([prompt[key], prompt[key].new_zeros(n)])
        full.append(sample)
    return _collate_prompts(full, pad_id, left=False), [int(p["input_ids"].numel()) for p in prompts]


def _pad(seqs: Sequence[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    width = max(int(s.numel()) for s in seqs)
    out = seqs[0].new_full((len(seqs), width), value)
    for i, s in enumerate(seqs):
        n = int(s.numel())
        if left:
            out[i, width - n :] = s
        else:
            out[i, :n] = s
    return out


def _cat_images(key: str, items: Sequence[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(x.shape[1:]) for x in items}
    if len(shapes) > 1:
        raise ValueError(
            f"processor output {key!r} has per-sample shapes {sorted(shapes)}; frames of one batch must give "
            "equal shapes (use a fixed frame size or turn off image splitting)"
        )
    return torch.cat(list(items), dim=0)
