"""Turn a training checkpoint into folders that plain transformers + peft load, without this package."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from selu_lightning.errors import ConfigError
from selu_lightning.policy.vlm import LoraSettings, PolicyConfig, VLMPolicy

__all__ = ["policy_config_to_dict", "policy_config_from_dict", "export_adapter"]

CONFIG_KEY = "selu_policy_config"


def policy_config_to_dict(config: PolicyConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def policy_config_from_dict(data: dict[str, Any]) -> PolicyConfig:
    data = dict(data)
    if data.get("lora") is not None:
        data["lora"] = LoraSettings(**data["lora"])
    return PolicyConfig(**data)


def export_adapter(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` with the trained weights as transformers/peft expect them.

    With LoRA: a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), loadable with
    ``PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), out_dir)``. Without LoRA: a
    full ``save_pretrained`` checkpoint. Either way also the processor, and ``value_head.safetensors`` with
    ``value_head.json`` (its widths) for whoever wants the critic.
    """
    from safetensors.torch import save_file

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if CONFIG_KEY not in ckpt:
        raise ConfigError(f"{checkpoint} holds no policy configuration: not a selu_lightning ActorPPO checkpoint?")
    policy = VLMPolicy(policy_config_from_dict(ckpt[CONFIG_KEY]))
    policy.load()
    prefix = "policy."
    weights = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    missing = {n for n, p in policy.named_parameters() if p.requires_grad} - set(weights)
    if missing:
        raise ConfigError(f"checkpoint lacks {len(missing)} trained weight(s), e.g. {sorted(missing)[0]}")
    policy.load_state_dict(weights, strict=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(out)
    policy.processor.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in policy.value_head.state_dict().items()}, out / "value_head.safetensors")
    (out / "value_head.json").write_text(
        json.dumps({"input": "last prompt token hidden state", "widths": policy.config.value_head_widths}) + "\n"
    )
    return out
