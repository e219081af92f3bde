"""Tiny randomly initialised VLMs of real architectures, built offline.

Tests and the CPU quickstart need models that load through exactly the path a user's checkpoint takes:
``AutoProcessor.from_pretrained(folder)`` and ``AutoModelForImageTextToText.from_pretrained(folder)``.
`build_tiny_vlm` writes such a folder (< 1 MB) from nothing: a byte-level BPE tokenizer trained in code on a
small built-in corpus, a tiny config of the real architecture, the real image processor and Processor class,
and random weights drawn from a fixed seed (same seed -> identical files).

Architectures:
  - ``llava``      LLaVA-1.5: CLIP vision tower + Llama text model.
  - ``llava_next`` LLaVA-NeXT (the RL4VLM architecture): CLIP + Mistral, any-resolution tiling.
  - ``idefics3``   Idefics3 / SmolVLM: SigLIP-style vision tower + pixel shuffle + Llama text model.

`resolve_model_path("tiny:llava")` builds into a cache folder once and returns its path; any other name is
returned unchanged, so a config field ``model: tiny:llava`` and ``model: /path/to/llava-1.5-7b`` take one path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["TINY_ARCHS", "build_tiny_vlm", "resolve_model_path"]

TINY_ARCHS = ("llava", "llava_next", "idefics3")

# Bump when the built files change, so cached folders from an older builder are not reused.
TINY_VERSION = "v1"

TINY_PREFIX = "tiny:"

# Text model: hidden 64, 2 layers, 4 heads (2 kv heads), MLP 128.
TEXT_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)
# Vision tower: 32x32 images cut into 8x8 patches -> a 4x4 grid of 16 patch features.
IMAGE_SIZE = 32
PATCH_SIZE = 8
VISION_DIMS = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
)
# LLaVA-NeXT tiles: a square frame picks the single 32x32 tile (base image + 1 tile); wide or tall frames
# take two tiles. Keeping the list short keeps every frame at a few dozen image tokens.
LLAVA_NEXT_PINPOINTS = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE]]
VOCAB_SIZE = 512

# Words the card-game and embodied prompts use, so they tokenize into few pieces. Any other text still
# encodes: the tokenizer is byte-level.
_CORPUS = """
You are playing a game. Your goal is to reach the target number. The current position is shown in the image.
You are an expert card game player. You are observing the image of the current cards in the game.
Your goal is to output a formula that evaluates to the target number 24, using every card exactly once.
The cards are shown in the image. The numbers on the cards are 1 2 3 4 5 6 7 8 9 10.
The face cards J, Q and K count as 10. The ace A counts as 1.
The formula may use the numbers, plus + minus - times * divide / and the brackets ( and ).
You are a blackjack player. You are observing the current game state. The dealer shows one card.
You can choose to stand or hit. Your total must not go over 21. Stand keeps your cards, hit draws a new card.
The number line goes from 0 to 10. The current number is 3 and the target number is 7.
Move the current number towards the target. Move left with minus and move right with plus.
Legal actions are listed below. Choose one of the legal actions and answer in json.
Your response should be a valid json object in the following format:
{"thoughts": "first describe what you see in the image, then think step by step", "action": "+"}
{"thoughts": "the current number is 2, the target is 5, so I move right", "action": "+"}
{"thoughts": "the current number is 8, the target is 4, so I move left", "action": "-"}
{"thoughts": "my cards sum to 12 and the dealer shows 6, so I stand", "action": "stand"}
{"thoughts": "my cards sum to 9, so I hit", "action": "hit"}
{"cards": [1, 2, 3, 4], "formula": "(4 + 2) * (3 + 1)", "number": 24, "action": "="}
{"formula": "10 + 10 + 2 + 2", "action": "="}
Answer with a json object. Do not write anything else. The answer is correct. The answer is wrong.
The action is illegal. The game is over. You won the game. You lost the game. The reward is 1.
You are in the middle of a room. Looking quickly around you, you see a cabinet, a countertop, a fridge,
a drawer, a sink, a shelf, a table, a sofa, a bed, a desk and a microwave.
Your task is to: put a clean apple in the fridge. Your task is to: find a key and put it on the table.
go to the kitchen. open the fridge. take the apple from the countertop. put the apple in the fridge.
pick up the key. open the door. go to the red ball. move forward. turn left. turn right. toggle. done.
Thoughts: what do I see? What should I do next? Action: go forward. Observation: nothing happens.
USER: ASSISTANT: User: Assistant: SYSTEM: System: The image shows the line, the cards and the player.
"""


# --------------------------------------------------------------------------------------------- tokenizer


def _special_tokens(arch: str) -> dict:
    """Special tokens per architecture, named as the real checkpoints name them."""
    if arch == "idefics3":
        # SmolVLM: no BOS is added by the tokenizer; the chat template writes <|im_start|> itself.
        image_tokens = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
        image_tokens += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
        return dict(bos="<|im_start|>", eos="<end_of_utterance>", pad="<pad>", unk="<unk>", extra=image_tokens)
    return dict(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", extra=["<image>"])


def _train_tokenizer(arch: str):
    """Byte-level BPE with single-digit numbers ("10" -> "1", "0"), trained on the built-in corpus."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = _special_tokens(arch)
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    core = [special["unk"], special["bos"], special["eos"], special["pad"]]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=core,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.strip().splitlines(), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special["extra"]])
    if arch != "idefics3":
        # Llama / Mistral tokenizers prepend BOS to every sequence.
        bos = special["bos"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


# USER/ASSISTANT style of llava-1.5 and the vicuna template RL4VLM prompts LLaVA-NeXT with.
_LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}{{ ' ' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'USER: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>' }}{{ '\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}{{ eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# SmolVLM / Idefics3 style; the processor expands each <image> into
# <fake_token_around_image><global-img><image>*N<fake_token_around_image>.
_IDEFICS3_CHAT_TEMPLATE = (
    "{{ '<|im_start|>' }}"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}{{ ':' }}"
    "{%- if message['content'] is string -%}{{ ' ' + message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif part['type'] == 'text' -%}{{ ' ' + part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_utterance>' }}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


def _build_tokenizer(arch: str):
    from transformers import PreTrainedTokenizerFast

    special = _special_tokens(arch)
    kwargs = dict(
        tokenizer_object=_train_tokenizer(arch),
        bos_token=special["bos"],
        eos_token=special["eos"],
        pad_token=special["pad"],
        unk_token=special["unk"],
        padding_side="left",
        model_max_length=TEXT_DIMS["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    if arch == "idefics3":
        kwargs["extra_special_tokens"] = special["extra"][:3]  # the three the Idefics3 processor registers
    else:
        kwargs["extra_special_tokens"] = {"image_token": "<image>"}
    return PreTrainedTokenizerFast(**kwargs)


# ------------------------------------------------------------------------------------------------ models


def _configs(arch: str, tokenizer):
    from transformers import (
        CLIPVisionConfig,
        Idefics3Config,
        Idefics3VisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaNextConfig,
        MistralConfig,
    )

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if arch == "llava":
        return LlavaConfig(
            vision_config=CLIPVisionConfig(**VISION_DIMS, projection_dim=32),
            text_config=LlamaConfig(**TEXT_DIMS, **ids),
            image_token_index=image_token_id,
            image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
            **ids,
        )
    if arch == "llava_next":
        return LlavaNextConfig(
            vision_config=CLIPVisionConfig(**VISION_DIMS, projection_dim=32),
            text_config=MistralConfig(**TEXT_DIMS, sliding_window=None, **ids),
            image_token_index=image_token_id,
            image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
            image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
            **ids,
        )
    if arch == "idefics3":
        return Idefics3Config(
            vision_config=Idefics3VisionConfig(**VISION_DIMS),
            text_config=LlamaConfig(**TEXT_DIMS, **ids),
            image_token_id=image_token_id,
            scale_factor=2,
            **ids,
        )
    raise ValueError(_unknown_arch(arch))


def _processor(arch: str, tokenizer):
    from transformers import (
        CLIPImageProcessorPil,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    clip_image = dict(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    if arch == "llava":
        return LlavaProcessor(
            image_processor=CLIPImageProcessorPil(**clip_image),
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS feature, dropped again by the "default" strategy
            chat_template=_LLAVA_CHAT_TEMPLATE,
        )
    if arch == "llava_next":
        return LlavaNextProcessor(
            image_processor=LlavaNextImageProcessorPil(
                **clip_image, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, do_pad=True
            ),
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=_LLAVA_CHAT_TEMPLATE,
        )
    if arch == "idefics3":
        scale_factor = 2
        return Idefics3Processor(
            image_processor=Idefics3ImageProcessorPil(
                do_resize=True,
                size={"longest_edge": IMAGE_SIZE},
                max_image_size={"longest_edge": IMAGE_SIZE},
                do_image_splitting=False,
                do_rescale=True,
                do_normalize=True,
                image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5],
                do_pad=True,
                do_convert_rgb=True,
            ),
            tokenizer=tokenizer,
            image_seq_len=(IMAGE_SIZE // PATCH_SIZE) ** 2 // scale_factor**2,
            chat_template=_IDEFICS3_CHAT_TEMPLATE,
        )
    raise ValueError(_unknown_arch(arch))


def _unknown_arch(arch: str) -> str:
    return f"unknown tiny architecture {arch!r}; valid: {', '.join(TINY_ARCHS)}"


def build_tiny_vlm(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight VLM of architecture `arch` (processor, model, generation config) to `out_dir`.

    Deterministic: the same `arch` and `seed` give byte-identical weight files.
    """
    if arch not in TINY_ARCHS:
        raise ValueError(_unknown_arch(arch))
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(arch)
    processor = _processor(arch, tokenizer)
    config = _configs(arch, processor.tokenizer)

    # A private generator state keeps the caller's global RNG untouched and the weights seed-determined.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "tiny_vlm.json").write_text(
        json.dumps({"arch": arch, "seed": seed, "version": TINY_VERSION}, indent=2) + "\n"
    )
    return out_dir


def _build_in_clean_process(arch: str, out_dir: Path) -> None:
    """Build here, or in a child process when torch.distributed is up: transformers then writes weights only
    on rank 0, and a rank > 0 would otherwise produce a folder without them."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        build_tiny_vlm(arch, out_dir, seed=0)
        return
    import subprocess
    import sys

    code = "import sys; from selu_lightning.policy.tiny import build_tiny_vlm; build_tiny_vlm(sys.argv[1], sys.argv[2])"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    subprocess.run([sys.executable, "-c", code, arch, str(out_dir)], check=True, env=env)


def _cache_root() -> Path:
    return Path(os.environ.get("SELU_CACHE") or Path.home() / ".cache" / "selu_lightning")


def resolve_model_path(name_or_path: str) -> str:
    """Turn ``tiny:<arch>`` into the folder of a cached tiny model (built on first use); return others unchanged."""
    if not name_or_path.startswith(TINY_PREFIX):
        return name_or_path
    arch = name_or_path[len(TINY_PREFIX) :]
    if arch not in TINY_ARCHS:
        raise ValueError(_unknown_arch(arch))
    folder = _cache_root() / "tiny" / f"{arch}-{TINY_VERSION}-seed0"
    if (folder / "tiny_vlm.json").is_file():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a crash leaves only a temp folder, never a half-written model, and
    # concurrent builders (several DDP ranks) each rename a complete folder; the first one wins.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _build_in_clean_process(arch, tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "tiny_vlm.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)
