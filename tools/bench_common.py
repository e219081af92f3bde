"""What both benchmarks build: a policy that writes a fixed number of tokens per step.

``--model`` takes what ``model.policy.model_name_or_path`` takes (a checkpoint folder, a hub id, ``tiny:<arch>``)
and, for the benchmarks only, ``full:<name>``: a full-size architecture with random weights built from its
config directly on ``--device``, with no download (weights are never written to disk):

- ``full:llava_next_mistral_7b``     LLaVA-NeXT-Mistral-7B (llava-v1.6-mistral-7b-hf's config: Mistral-7B text
  model, CLIP ViT-L/14-336 vision tower, any-resolution tiling), ~7.57B parameters;
- ``full:llava_next_mistral_smoke``  the same processor, tokenizer and loading path with tiny dims (CPU smoke test).

The folder of a ``full:`` model holds config, generation config and processor (a byte-level BPE tokenizer built
offline as in ``selu_lightning.policy.tiny``, padded to Mistral's 32000 ids + ``<image>``); the weights are made
when the policy loads, by ``AutoModelForImageTextToText.from_config`` under ``torch.device(device)``, so the
policy goes through exactly the loading path of a real checkpoint (processor, LoRA, value head).

    python tools/bench_common.py --count full:llava_next_mistral_7b   # parameter count on the meta device
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from selu_lightning.action_spaces import TextActionSpace
from selu_lightning.cli import quiet_noise
from selu_lightning.modules.actor_ppo import ActorPPO
from selu_lightning.policy.vlm import LoraSettings, PolicyConfig

FULL_PREFIX = "full:"
#: Written into a ``full:`` model's folder: the loader builds random weights from config for such folders only.
RANDOM_INIT_MARKER = "random_init.json"

# llava-hf/llava-v1.6-mistral-7b-hf, as its config.json gives it.
_MISTRAL_7B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    max_position_embeddings=32768, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    sliding_window=None, tie_word_embeddings=False,
)  # fmt: skip
_CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
_TEXT_VOCAB = 32064  # the model's embedding rows (Mistral's 32000 + <image> + padding to a multiple of 64)
_TOKENIZER_VOCAB = 32000  # ids 0..31999 as Mistral's tokenizer; <image> is 32000
FULL_MODELS: dict[str, dict[str, Any]] = {
    "llava_next_mistral_7b": dict(text=_MISTRAL_7B, vision=_CLIP_L_336),
    "llava_next_mistral_smoke": dict(
        text=dict(_MISTRAL_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
        vision=dict(_CLIP_L_336, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    projection_dim=32),
    ),  # fmt: skip
}


def _full_name(model: str) -> str:
    name = model[len(FULL_PREFIX) :]
    if name not in FULL_MODELS:
        raise SystemExit(f"unknown {model!r}; choose one of: {', '.join(FULL_PREFIX + n for n in FULL_MODELS)}")
    return name


# --------------------------------------------------------------------------------- full-size, random weights
def _full_tokenizer():
    """The tiny models' byte-level BPE, its id space padded to Mistral's (fillers ``<fill_N>``), ``<image>`` = 32000."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from selu_lightning.policy import tiny

    data = json.loads(tiny._train_tokenizer("llava_next").to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), _TOKENIZER_VOCAB):
        vocab[f"<fill_{i}>"] = i
    for token in data["added_tokens"]:
        if token["content"] == "<image>":
            token["id"] = _TOKENIZER_VOCAB
    special = tiny._special_tokens("llava_next")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=special["bos"], eos_token=special["eos"], pad_token=special["pad"], unk_token=special["unk"],
        padding_side="left", model_max_length=_MISTRAL_7B["max_position_embeddings"], clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip


def full_model_config(name: str, tokenizer: Any = None) -> Any:
    """``LlavaNextConfig`` of a ``full:`` model (``name`` without the prefix)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    dims = FULL_MODELS[name]
    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return LlavaNextConfig(
        vision_config=CLIPVisionConfig(**dims["vision"]),
        text_config=MistralConfig(**dims["text"], vocab_size=_TEXT_VOCAB, **ids),
        image_token_index=_TOKENIZER_VOCAB, image_grid_pinpoints=_PINPOINTS, image_seq_length=576,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False, **ids,
    )  # fmt: skip


def build_full_folder(model: str, out_dir: str | Path | None = None) -> Path:
    """Config + generation config + processor of a ``full:`` model in a folder (no weights)."""
    from transformers import (
        GenerationConfig,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    from selu_lightning.policy import tiny

    name = _full_name(model)
    out = Path(out_dir or tempfile.mkdtemp(prefix=f"selu-{name}-"))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _full_tokenizer()
    size = FULL_MODELS[name]["vision"]["image_size"]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_resize=True,
            do_center_crop=True, do_rescale=True, do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711], do_convert_rgb=True, image_grid_pinpoints=_PINPOINTS,
            do_pad=True,
        ),
        tokenizer=tokenizer, patch_size=FULL_MODELS[name]["vision"]["patch_size"],
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=tiny._LLAVA_CHAT_TEMPLATE,
    )  # fmt: skip
    config = full_model_config(name, tokenizer)
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out)  # fmt: skip
    processor.save_pretrained(out)
    (out / RANDOM_INIT_MARKER).write_text(json.dumps({"model": model}) + "\n")
    return out


@contextmanager
def random_init_loading(device: str | torch.device) -> Iterator[None]:
    """While active, ``AutoModelForImageTextToText.from_pretrained`` of a folder written by `build_full_folder`
    builds the model from its config with random weights directly on ``device``; other folders load as usual."""
    from unittest import mock

    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    original = AutoModelForImageTextToText.from_pretrained

    def from_pretrained(path: Any, *args: Any, **kwargs: Any) -> Any:
        if not (Path(str(path)) / RANDOM_INIT_MARKER).is_file():
            return original(path, *args, **kwargs)
        config = AutoConfig.from_pretrained(path)
        extra = {k: kwargs[k] for k in ("attn_implementation",) if kwargs.get(k)}
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=kwargs.get("dtype") or torch.float32, **extra)
        model.generation_config = GenerationConfig.from_pretrained(path)
        return model.eval()

    with mock.patch.object(AutoModelForImageTextToText, "from_pretrained", from_pretrained):
        yield


def count_parameters_on_meta(model: str) -> int:
    """Parameters of a ``full:`` model, built on the meta device (no memory)."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        hf = AutoModelForImageTextToText.from_config(full_model_config(_full_name(model), _full_tokenizer()))
    assert all(p.device.type == "meta" for p in hf.parameters())
    return sum(p.numel() for p in hf.parameters())


# --------------------------------------------------------------------------------------------- the module
def build_text_module(args: argparse.Namespace) -> ActorPPO:
    """ActorPPO with LoRA on LM + vision tower + projector (as RL4VLM) and fixed-length generations."""
    space = TextActionSpace(temperature=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    lora = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, targets=["language_model", "vision_tower", "projector"])
    full = args.model.startswith(FULL_PREFIX)
    source = str(build_full_folder(args.model)) if full else args.model
    config = PolicyConfig(source, dtype=args.dtype, lora=lora,
                          gradient_checkpointing=getattr(args, "gradient_checkpointing", False))  # fmt: skip
    module = ActorPPO(config, action_space=space)
    if full:
        with random_init_loading(args.device):
            module.configure_model()
    else:
        module.configure_model()
    return module.to(args.device)


# ------------------------------------------------------------------------------- GPU ceilings (for fractions)
#: name fragment -> (spec HBM GB/s, measured copy GB/s or None, spec dense bf16 TFLOP/s, measured matmul TFLOP/s or None).
#: H200 measured on this project's GPU machine (device-to-device copy, 8192^3 bf16 matmul); others are spec only.
GPU_CEILINGS = {
    "H200": (4800.0, 4300.0, 989.0, 790.0),
    "H100": (3350.0, None, 989.0, None),
    "A100": (2039.0, None, 312.0, None),
}


def gpu_ceilings(device: str) -> tuple[float, float | None, float, float | None]:
    """(spec GB/s, measured GB/s, spec TFLOP/s, measured TFLOP/s) of the current GPU; H100 SXM figures if unknown."""
    name = torch.cuda.get_device_name(torch.device(device)) if str(device).startswith("cuda") else ""
    for key, row in GPU_CEILINGS.items():
        if key in name:
            return row
    return GPU_CEILINGS["H100"]


def cuda_peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**30 if str(device).startswith("cuda") else None


def main() -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    parser = argparse.ArgumentParser(description="Parameter count of a full: model on the meta device")
    parser.add_argument("--count", default=FULL_PREFIX + "llava_next_mistral_7b")
    args = parser.parse_args()
    n = count_parameters_on_meta(args.count)
    print(json.dumps({"model": args.count, "parameters": n, "parameters_billion": round(n / 1e9, 3),
                      "bf16_gib": round(2 * n / 2**30, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
