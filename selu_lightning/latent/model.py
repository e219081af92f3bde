"""LatentActionModel: the learned parts of the latent action space in one module, sized from the backbone.

``idm`` (inverse dynamics), ``codebook``, ``world`` (the merge of the world model; its norm and LM head are the
VLM's), ``policy`` (code logits at every position) and ``projector`` (text <-> image-text). The VLM itself is
never part of it: it stays frozen and is read through :class:`~selu_lightning.policy.vlm.VLMPolicy`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from selu_lightning.errors import ConfigError
from selu_lightning.latent.codebook import Codebook
from selu_lightning.latent.idm import InverseDynamics
from selu_lightning.latent.layers import CodeStack
from selu_lightning.latent.projector import CrossModalProjector
from selu_lightning.latent.world import READOUTS, Readout, WorldModel

__all__ = ["STAGE_COMPONENTS", "LatentActionModel", "LatentConfig", "backbone_dims", "vlm_lm_head", "vlm_norm"]

#: What each pretraining stage trains (everything else, the VLM included, is frozen).
STAGE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "idm_warmup": ("idm", "codebook", "world"),
    "projector_init": ("projector",),
    "joint": ("idm", "codebook", "world", "projector"),
    "policy_bc": ("policy",),
    "world_sft": ("codebook", "world"),
}


@dataclass
class LatentConfig:
    """Sizes of the latent action space (the reference: 128 codes, 4 IDM layers, 8 policy layers, 2 merges)."""

    num_codes: int = 128
    idm_layers: int = 4
    policy_layers: int = 8
    """Causal layers of the code policy; 0: a linear code head on the frozen VLM's hidden state (RMSNorm +
    Linear(d, K), about d x K parameters to train in RL: 0.5 M at 7B sizes with 128 codes, where 8 layers are
    about 1.9 B)."""
    merge_layers: int = 2
    tau: float = 2.0
    """Gumbel-softmax temperature of the IDM's code samples."""
    readout: Readout = "additive"
    """How the world model turns the merged state into logits (``latent/world.py``; ``reference``: the paper's
    code's training form)."""
    text_states: Literal["projected", "raw"] = "projected"
    """What the IDM, world model and policy read for a text-only input: the projector's text -> image-text mean
    (the method) or the raw text hidden state (the "without projector" ablation)."""

    def __post_init__(self) -> None:
        for name in ("num_codes", "idm_layers", "merge_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"latent {name} must be >= 1 (got {getattr(self, name)})")
        if self.policy_layers < 0:
            raise ConfigError(f"latent policy_layers must be >= 0 (got {self.policy_layers})")
        if self.num_codes < 2:
            raise ConfigError(f"latent num_codes must be >= 2 (got {self.num_codes})")
        if not self.tau > 0:
            raise ConfigError(f"latent tau must be > 0 (got {self.tau})")
        if self.text_states not in ("projected", "raw"):
            raise ConfigError(f"latent text_states must be 'projected' or 'raw' (got {self.text_states!r})")
        if self.readout not in READOUTS:
            raise ConfigError(f"latent readout must be one of {', '.join(READOUTS)} (got {self.readout!r})")

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> LatentConfig:
        """The config a checkpoint was built with (checkpoints from before ``readout`` existed used ``reference``)."""
        return cls(**{"readout": "reference", **saved})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _text_config(hf: nn.Module) -> Any:
    config = hf.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def backbone_dims(hf: nn.Module) -> dict[str, Any]:
    """Hidden size, attention heads, MLP width and norm eps of the VLM's language model."""
    text = _text_config(hf)
    return {
        "hidden_size": int(text.hidden_size),
        "heads": int(text.num_attention_heads),
        "ffn_size": int(getattr(text, "intermediate_size", 4 * text.hidden_size)),
        "eps": float(getattr(text, "rms_norm_eps", None) or getattr(text, "layer_norm_eps", 1e-6)),
    }


def vlm_norm(hf: nn.Module) -> nn.Module:
    """The language model's final norm (what produced h; the world model reads out through it again)."""
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise ConfigError(f"{type(hf).__name__}: no final norm found on its decoder (get_decoder().norm)")
    return norm


def vlm_lm_head(hf: nn.Module) -> nn.Module:
    head = hf.get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(hf).__name__} has no LM head (get_output_embeddings())")
    return head


class LatentActionModel(nn.Module):
    def __init__(self, config: LatentConfig, hidden_size: int, heads: int, ffn_size: int, eps: float) -> None:
        super().__init__()
        self.config = config
        k = config.num_codes
        self.idm = InverseDynamics(CodeStack(hidden_size, k, config.idm_layers, heads, ffn_size, eps))
        self.codebook = Codebook(k, hidden_size)
        self.world = WorldModel(hidden_size, ffn_size, config.merge_layers, config.readout)
        self.policy = CodeStack(hidden_size, k, config.policy_layers, heads, ffn_size, eps)
        self.projector = CrossModalProjector(hidden_size)

    @classmethod
    def for_backbone(cls, config: LatentConfig, hf: nn.Module) -> LatentActionModel:
        return cls(config, **backbone_dims(hf))

    def train_only(self, components: tuple[str, ...]) -> None:
        """requires_grad on the named components, off on the rest."""
        unknown = set(components) - {"idm", "codebook", "world", "policy", "projector"}
        if unknown:
            raise ValueError(f"unknown latent components {sorted(unknown)}")
        for name, module in self.named_children():  # after drop_unused_in_rl, only what is left
            module.requires_grad_(name in components)

    def drop_unused_in_rl(self, text_only: bool) -> None:
        """Free what acting and scoring codes never run: the IDM, and the projector unless text-only prompts are
        mapped through it (``text_states: projected``). With a 7B backbone each IDM layer is a full-width transformer block (about 0.24 B
        parameters at Mistral-7B's sizes), held on every rank for nothing."""
        del self.idm
        if not (text_only and self.config.text_states == "projected"):
            del self.projector

    def to_text_space(self, h: torch.Tensor) -> torch.Tensor:
        """Text-only hidden states as the image-text space's: the text -> image-text mean (no gradient into
        the projector from what reads it, as in the reference); unchanged with ``text_states: raw``."""
        if self.config.text_states == "raw":
            return h
        mean, _ = self.projector.text_to_mm(h)
        return mean.detach()


def load_latent_weights(model: LatentActionModel, checkpoint: dict[str, Any], path: str) -> None:
    """Load the ``latent.*`` weights of a LatentActionPretrain checkpoint, all of them."""
    weights = {k[len("latent."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("latent.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"latent checkpoint {path!r} does not fit this latent space: {str(err).splitlines()[0]}") from None
