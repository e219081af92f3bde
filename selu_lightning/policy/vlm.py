"""VLMPolicy: any ``AutoModelForImageTextToText`` + its processor, with LoRA and a value head.

Weights load lazily (:meth:`VLMPolicy.load`, called from the LightningModule's ``configure_model``) so that
every configuration error is reported before a multi-GB checkpoint is read, and so FSDP can shard at load.

Two operations serve every action space:

- :meth:`generate`: one batched, left-padded ``generate`` for all envs (sampling only; no scores kept). It
  samples from exactly the distribution :meth:`continuation_logprobs` scores (logits / temperature, image
  tokens and, before ``min_new_tokens``, EOS masked): the checkpoint's own ``generation_config`` sampling
  settings (repetition penalty, top-k/top-p, ...) are dropped at load, since scoring could not reproduce them.
- :meth:`score`: one right-padded teacher-forced pass, split into :meth:`backbone` (hidden states, the one
  expensive forward) and heads on it: :meth:`continuation_logprobs` (fp32 per-token log-probs and entropies)
  and :meth:`values` (the optional value head on the last prompt token). Later heads (latent-code logits, a
  critic's yes/no) read the same hidden states. Rollout (no grad, eval mode) and the PPO update call the
  same functions on the same stored token ids, so old and new log-probs agree by construction.
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["LoraSettings", "PolicyConfig", "VLMPolicy", "ScoreOutput", "BackboneOutput", "PromptSample", "strip_image"]

#: One prompt as the processor produced it: ``input_ids`` 1-D, image tensors with their batch dim.
PromptSample = dict[str, torch.Tensor]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: A stored prompt's uint8 frame (``frames_in_buffer: uint8``), made into pixel values when scored.
FRAME_KEY = "frame_uint8"
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
    values: torch.Tensor | None
    """[B] fp32 value of the last prompt token (None when the policy has no value head)."""
    entropies: list[torch.Tensor] | None = None
    """Per continuation: fp32 entropy of the (tempered) next-token distribution at each token."""


@dataclass
class BackboneOutput:
    """One teacher-forced pass over right-padded prompt + continuation sequences: what every head reads."""

    hidden: torch.Tensor
    """[B, L, H] final (normed) hidden states, model dtype."""
    prompt_lens: list[int]
    """Each row's prompt length; its continuation follows at positions ``prompt_len ...``."""
    cont_lens: list[int]
    """Each row's continuation length."""

    def last_prompt_hidden(self) -> torch.Tensor:
        """[B, H] hidden state of each row's last prompt token (what the value head reads)."""
        rows = torch.arange(len(self.prompt_lens), device=self.hidden.device)
        return self.hidden[rows, torch.as_tensor(self.prompt_lens, device=self.hidden.device) - 1]

    def continuation_hidden(self) -> torch.Tensor:
        """[sum(cont_lens), H] hidden states at the positions that predict each continuation token, rows in order."""
        rows = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(self.cont_lens)])
        pos = torch.cat([torch.arange(p - 1, p - 1 + n) for p, n in zip(self.prompt_lens, self.cont_lens)])
        return self.hidden[rows.to(self.hidden.device), pos.to(self.hidden.device)]


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
        # The head runs in its own weights' dtype (bf16 under bf16-true) and hands back fp32 values.
        weight = self.net[0].weight
        return self.net(hidden.to(weight.dtype)).float().squeeze(-1)


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
    value_head_widths: list[int] | None = field(default_factory=lambda: [1024, 512])
    """Hidden widths of the value MLP on the last prompt token's hidden state; null: no value head (critic-free
    algorithms, SFT). ``[]`` is a linear head."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, slower)."""
    trust_remote_code: bool = False
    """Allow a checkpoint's own Python code to run. Off unless you trust the checkpoint."""
    attn_implementation: str | None = None
    """e.g. sdpa, flash_attention_2, eager; null: transformers' default."""
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for AutoProcessor.from_pretrained."""
    init_from: str | None = None
    """A checkpoint (``.ckpt`` of ActorSFT, ActorPPO, ...) whose trained weights (LoRA adapters, or every weight
    without LoRA, and heads) start this run: e.g. the SFT stage's ``last.ckpt`` for PPO. Its model and LoRA
    settings must match these; a head it lacks (PPO's value head after SFT) starts fresh."""
    frames_in_buffer: Literal["auto", "uint8", "pixel_values"] = "auto"
    """How stored prompts keep their image. ``uint8``: the frame itself (270 KB at 300x300), turned into pixel
    values again whenever it is scored (the image processor is deterministic; checked on the first frame,
    falling back to ``pixel_values`` if it is not). ``pixel_values``: the processor's tensors (about 7 MB per
    LLaVA-NeXT-7B state in fp32), no reprocessing in the update. ``auto``: whichever of the two is smaller,
    decided on the first frame (frames for real checkpoints; pixel values for the tiny test models)."""

    def __post_init__(self) -> None:
        _check_model_source(self.model_name_or_path)
        if self.init_from is not None and not os.path.isfile(os.path.expanduser(self.init_from)):
            raise ConfigError(f"model.policy.init_from {self.init_from!r} is not a checkpoint file")
        if self.freeze and self.lora is not None:
            raise ConfigError("model.policy.freeze applies to full fine-tuning; with LoRA choose model.policy.lora.targets")


class VLMPolicy(nn.Module):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.model: nn.Module | None = None
        self.value_head: ValueHead | None = None
        self.processor: Any = None
        self.unused_modules: list[str] = []
        self._frames_reproducible: bool | None = None
        self._reference: list[nn.Module] = []  # a list hides it from nn.Module: not a submodule

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
        _clean_generation_config(hf)
        # Layers whose output the model never reads (LLaVA takes an inner vision layer) get no adapters and
        # no training: under DDP a parameter without a gradient is an error.
        self.unused_modules = unused_vision_modules(hf)
        if cfg.gradient_checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            hf.config.use_cache = False
        if self.lora is not None:
            from peft import LoraConfig, get_peft_model

            targets = lora_target_modules(hf, self.lora.targets, exclude=self.unused_modules)
            config = LoraConfig(
                r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout, target_modules=targets
            )
            self.model = get_peft_model(hf, config)
        else:
            frozen = set(lora_target_modules(hf, cfg.freeze, linear_only=False)) if cfg.freeze else set()
            unused = tuple(m + "." for m in self.unused_modules)
            for name, param in hf.named_parameters():
                if name.rsplit(".", 1)[0] in frozen or name.startswith(unused):
                    param.requires_grad_(False)
            self.model = hf
        if cfg.value_head_widths is not None:
            self.value_head = ValueHead(_hidden_size(hf.config), cfg.value_head_widths)
        if cfg.init_from is not None:
            self._init_from(os.path.expanduser(cfg.init_from))
        # from_pretrained returns eval mode; train mode lets dropout act where it is asked for
        # (rollouts and scoring switch it off explicitly).
        self.model.train()
        self.suppress_token_ids = _image_token_ids(hf.config)
        eos = hf.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if not self.eos_token_ids and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids = {self.tokenizer.eos_token_id}

    def _init_from(self, path: str) -> None:
        """Load a checkpoint's trained weights (keys ``policy.*`` of a module's state_dict) into this policy."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        saved = checkpoint.get("selu_policy_config") or {}
        for key in ("model_name_or_path", "lora"):
            mine = dataclasses.asdict(self.config).get(key)
            if key in saved and saved[key] != mine:
                raise ConfigError(
                    f"model.policy.init_from was trained with model.policy.{key}={saved[key]!r}, this run has {mine!r}"
                )
        weights = {k[len("policy."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("policy.")}
        try:
            missing, unexpected = self.load_state_dict(weights, strict=False)
        except RuntimeError as err:
            raise ConfigError(f"model.policy.init_from {path!r} does not fit this model: {err}") from None
        if not weights or len(unexpected) == len(weights):
            raise ConfigError(f"model.policy.init_from {path!r} holds no weights of this policy")

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
        return next(self.model.parameters()).device

    def keep_reference(self) -> None:
        """Keep what :meth:`reference` scores with. LoRA: nothing to keep (the adapters switch off). Full
        fine-tuning: a frozen copy of the weights as loaded (after ``init_from``, so the SFT model when PPO
        starts from one), which doubles the policy's memory: use LoRA for large models. The copy is not a
        submodule, so it is in no checkpoint and no optimizer; a resumed run rebuilds it the same way."""
        if self.lora is not None or self._reference:
            return
        import copy

        frozen = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._reference = [frozen]

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Score with the frozen reference: LoRA adapters switched off, or (full fine-tuning) the copy that
        :meth:`keep_reference` kept, swapped in for the duration."""
        if self.lora is not None:
            with self.model.disable_adapter():
                yield
            return
        if not self._reference:
            raise ConfigError("no reference model kept: call keep_reference() after load() (full fine-tuning)")
        ref, current = self._reference[0], self.model
        live, kept = next(current.parameters()), next(ref.parameters())
        if (kept.device, kept.dtype) != (live.device, live.dtype):
            ref.to(device=live.device, dtype=live.dtype)  # where and as the trainer put the policy (bf16-true)
        self._modules["model"] = ref
        try:
            yield
        finally:
            self._modules["model"] = current

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
        if image is not None and self._keeps_frames(image, sample):
            sample = {k: v for k, v in sample.items() if k in _PER_TOKEN_KEYS}
            sample[FRAME_KEY] = torch.from_numpy(np.ascontiguousarray(image))
        return sample

    def _image_tensors(self, frame: torch.Tensor) -> dict[str, torch.Tensor]:
        """The processor's per-image tensors (pixel values, sizes, masks) for one uint8 frame."""
        from PIL import Image

        out = self.processor.image_processor([Image.fromarray(frame.cpu().numpy())], return_tensors="pt")
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def _keeps_frames(self, image: np.ndarray, sample: PromptSample) -> bool:
        """Whether stored prompts keep the uint8 frame: asked for, and the image processor alone gives the
        full processor's tensors (checked once, on the first frame)."""
        mode = self.config.frames_in_buffer
        if mode == "pixel_values":
            return False
        if self._frames_reproducible is None:
            expected = {k: v for k, v in sample.items() if k not in _PER_TOKEN_KEYS}
            again = self._image_tensors(torch.from_numpy(np.ascontiguousarray(image)))
            reproducible = expected.keys() == again.keys() and all(torch.equal(expected[k], again[k]) for k in expected)
            smaller = image.nbytes < sum(v.numel() * v.element_size() for v in expected.values())
            self._frames_reproducible = reproducible and (mode == "uint8" or smaller)
        return self._frames_reproducible

    def materialize(self, prompts: Sequence[PromptSample]) -> list[PromptSample]:
        """Prompts with their image tensors, re-made from stored uint8 frames where a prompt keeps one."""
        out = []
        for p in prompts:
            if FRAME_KEY in p:
                p = {k: v for k, v in p.items() if k != FRAME_KEY} | self._image_tensors(p[FRAME_KEY])
            out.append(p)
        return out

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
        batch = _collate_prompts(self.materialize(prompts), pad_id=self._pad_id, left=True)
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
            eos_token_id=sorted(self.eos_token_ids) or None,  # the ids scoring masks before min_new_tokens
            use_cache=True,
            # Nothing the scoring pass does not reproduce (load() already cleared the checkpoint's settings).
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            **sampling,
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :].cpu()
        return [self._cut_after_eos(row) for row in new_tokens]

    def prompt_inputs(self, prompts: Sequence[PromptSample]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for prompts (as ``generate`` builds them), on the policy's device: for
        decoders that step the backbone themselves (latent actions)."""
        batch = _collate_prompts(self.materialize(prompts), pad_id=self._pad_id, left=True)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _cut_after_eos(self, row: torch.Tensor) -> torch.Tensor:
        hits = [i for i, tok in enumerate(row.tolist()) if tok in self.eos_token_ids]
        return row[: hits[0] + 1] if hits else row

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_token_ids))

    # ------------------------------------------------------------------ scoring: backbone + heads
    def backbone(self, prompts: Sequence[PromptSample], continuations: Sequence[torch.Tensor]) -> BackboneOutput:
        """The one expensive pass: right-padded prompt + continuation, final hidden states (no logits).

        Right padding keeps every real token at the position it had in generation."""
        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} continuations")
        batch, prompt_lens = _collate_sequences(self.materialize(prompts), continuations, pad_id=self._pad_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self._backbone(self.hf_model)(**batch, use_cache=False)
        return BackboneOutput(out.last_hidden_state, prompt_lens, [int(c.numel()) for c in continuations])

    def continuation_logprobs(
        self,
        out: BackboneOutput,
        continuations: Sequence[torch.Tensor],
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
        min_new_tokens: int = 0,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """fp32 log p(token) of each continuation token (and entropies) from the sampling distribution:
        logits / temperature, image tokens never, EOS not before ``min_new_tokens``. Logits are computed only
        at continuation positions (never over padding), which keeps memory to tokens x vocab."""
        targets = torch.cat([c.long() for c in continuations]).to(out.hidden.device)
        logits = self.hf_model.get_output_embeddings()(out.continuation_hidden()).float() / temperature
        if self.suppress_token_ids:
            logits[:, sorted(self.suppress_token_ids)] = float("-inf")
        if min_new_tokens > 0:
            offsets = torch.cat([torch.arange(n) for n in out.cont_lens]).to(logits.device)
            early = (offsets < min_new_tokens)[:, None]
            eos = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            eos[sorted(self.eos_token_ids)] = True
            logits = logits.masked_fill(early & eos, float("-inf"))
        logp_all = torch.log_softmax(logits, dim=-1)
        token_logprobs = logp_all.gather(-1, targets[:, None]).squeeze(-1)
        entropies = None
        if with_entropy:
            probs = logp_all.exp()
            ent = -(probs * logp_all.masked_fill(probs == 0, 0.0)).sum(-1)
            entropies = list(ent.split(out.cont_lens))
        return list(token_logprobs.split(out.cont_lens)), entropies

    def values(self, out: BackboneOutput) -> torch.Tensor:
        """[B] fp32 V(prompt) from the value head on each row's last prompt token."""
        if self.value_head is None:
            raise ConfigError("this algorithm needs a value head: set model.policy.value_head_widths (e.g. [1024, 512])")
        return self.value_head(out.last_prompt_hidden())

    def score(
        self,
        prompts: Sequence[PromptSample],
        continuations: Sequence[torch.Tensor],
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
        min_new_tokens: int = 0,
    ) -> ScoreOutput:
        """Backbone + token log-prob head + value head (when there is one), in one call."""
        out = self.backbone(prompts, continuations)
        logprobs, entropies = self.continuation_logprobs(
            out, continuations, temperature=temperature, with_entropy=with_entropy, min_new_tokens=min_new_tokens
        )
        values = self.values(out) if self.value_head is not None else None
        return ScoreOutput(logprobs, values, entropies)

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
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # in the local hub cache
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
            raise ConfigError(f"model {name!r} is not a local folder and not in the hub cache (HF_HUB_OFFLINE is set)")
        if not _hub_reachable():
            raise ConfigError(
                f"model {name!r} is not a local folder, not in the hub cache, and the hub cannot be reached: "
                "download it where there is a network (huggingface-cli download) or pass a local folder"
            )
        return  # a hub id such as llava-hf/llava-v1.6-mistral-7b-hf: transformers fetches it
    raise ConfigError(f"model path {name!r} does not exist (expected a checkpoint folder, a hub id or tiny:<arch>)")


def _clean_generation_config(hf: nn.Module) -> None:
    """Keep only the special-token ids of the checkpoint's generation_config: its sampling settings
    (repetition penalty, top-k/top-p, no-repeat n-grams, min length, ...) would make the sampled
    distribution differ from the scored one, and PPO's ratio would no longer start at 1."""
    from transformers import GenerationConfig

    old = hf.generation_config
    keep = {k: getattr(old, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")}
    hf.generation_config = GenerationConfig(**{k: v for k, v in keep.items() if v is not None})


def unused_vision_modules(hf: nn.Module) -> list[str]:
    """Vision-tower modules whose output the model never reads, from its ``vision_feature_layer``.

    LLaVA and LLaVA-NeXT read hidden state -2 of the CLIP tower: its last encoder layer and post-norm get no
    gradient. A model that reads the last layer (Idefics3) gives ``[]``."""
    config = getattr(hf, "config", None)
    feature_layer = getattr(config, "vision_feature_layer", None)
    if feature_layer is None:
        return []
    layers_used = max(feature_layer) if isinstance(feature_layer, (list, tuple)) else int(feature_layer)
    names = []
    for prefix, tower in hf.named_modules():
        layers = getattr(getattr(tower, "encoder", None), "layers", None)
        if not (prefix + ".").startswith(_MODULE_GROUPS["vision_tower"]) or layers is None or not isinstance(layers, nn.ModuleList):
            continue
        # hidden_states[k] is the output of layer k-1 (hidden_states[0] = embeddings).
        n = len(layers)
        first_unused = (layers_used if layers_used >= 0 else n + 1 + layers_used)
        names += [f"{prefix}.encoder.layers.{i}" for i in range(first_unused, n)]
        for norm in ("post_layernorm",):
            if hasattr(tower, norm) and first_unused < n + 1:
                names.append(f"{prefix}.{norm}")
        break
    return names


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's endpoint, so an offline machine fails in seconds, not after a minute of
    retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # reachable only through the proxy: leave it to the download to tell
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
    except OSError:
        return False
    return True


def lora_target_modules(
    hf: nn.Module, groups: Sequence[str], linear_only: bool = True, exclude: Sequence[str] = ()
) -> list[str]:
    """Full names of every ``nn.Linear`` (or, with ``linear_only=False``, every module) inside the chosen
    model parts; never the LM head, never inside the ``exclude`` modules (layers the model does not read)."""
    unknown = set(groups) - set(_MODULE_GROUPS)
    if unknown:
        raise ConfigError(f"unknown LoRA target group(s) {sorted(unknown)}; choose from {sorted(_MODULE_GROUPS)}")
    projector_prefixes = _MODULE_GROUPS["projector"]
    names = []
    excluded = tuple(e + "." for e in exclude)
    for name, module in hf.named_modules():
        if linear_only and not isinstance(module, nn.Linear):
            continue
        key = name + "."
        if key.startswith(excluded):
            continue
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


def strip_image(prompt: PromptSample) -> PromptSample:
    """The prompt's per-token tensors only (same ids, image placeholders included), no pixels: the backbone then
    embeds the placeholders as tokens, so an image-free run keeps every position of the image run (latent
    actions' cross-modal projector pairs them)."""
    return {k: v for k, v in prompt.items() if k in _PER_TOKEN_KEYS}


def _collate_prompts(prompts: Sequence[PromptSample], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Pad per-token tensors (left for generation), concatenate per-image tensors along dim 0."""
    if any(FRAME_KEY in p for p in prompts):
        raise ValueError(f"prompts still hold {FRAME_KEY!r}: pass them through VLMPolicy.materialize first")
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
