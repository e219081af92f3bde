"""Tiny real-architecture VLMs: built offline, loaded through the Auto classes a user's checkpoint takes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from selu_lightning.policy.tiny import TINY_ARCHS, build_tiny_vlm, resolve_model_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never need the hub

from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

# Image tokens one 300x300 frame becomes (Idefics3 adds <fake_token_around_image><global-img>...<fake...> around them).
IMAGE_TOKENS_PER_FRAME = {"llava": 16, "llava_next": 36, "idefics3": 4}
PROMPTS = [
    "Go.",
    "You are playing a game. The target is 10 and the current position is 3.",
    'Legal actions are + and -. Answer in json: {"thoughts": "...", "action": "+"} über 日本',
]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_vlm(arch, root / arch, seed=0) for arch in TINY_ARCHS}


@pytest.fixture(scope="module")
def loaded(tiny_dirs):
    return {
        arch: (AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder))
        for arch, folder in tiny_dirs.items()
    }


def _frames(n: int, seed: int = 0, shape=(300, 300, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def _batch(processor, prompts, frames, **kwargs):
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for p in prompts
    ]
    return processor(text=texts, images=frames, return_tensors="pt", padding=True, **kwargs)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_loads_as_real_checkpoint(arch, tiny_dirs, loaded):
    processor, model = loaded[arch]
    folder = tiny_dirs[arch]
    assert (folder / "model.safetensors").stat().st_size < 2_000_000
    assert type(model).__name__.lower().startswith(arch.replace("_", ""))
    assert processor.image_token_id == model.config.image_token_id
    assert processor.tokenizer.convert_tokens_to_ids(processor.image_token) == model.config.image_token_id
    assert processor.tokenizer.padding_side == "left"
    assert 400 <= len(processor.tokenizer) <= 600
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    gen = model.generation_config
    tok = processor.tokenizer
    assert (gen.eos_token_id, gen.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert gen.bos_token_id == tok.bos_token_id


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tokenizer_splits_digits_and_encodes_any_text(arch, loaded):
    tok = loaded[arch][0].tokenizer
    assert tok.tokenize("10") == ["1", "0"]
    text = 'target 24 = (10 + 2) * 2 {"thoughts": "ok", "action": "stand"} über 日本 🙂'
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    # The corpus words are single tokens, so prompts stay short.
    assert len(tok.tokenize(" target")) == 1 and len(tok.tokenize(" action")) == 1


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_chat_template_roles(arch, loaded):
    processor = loaded[arch][0]
    messages = [
        {"role": "system", "content": "You are a player."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "go"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "next"},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    no_prompt = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert prompt.count("<image>") == 1
    assert prompt.startswith(no_prompt) and prompt != no_prompt
    assert prompt.index("You are a player.") < prompt.index("go") < prompt.index("ok") < prompt.index("next")
    assert processor.tokenizer.eos_token in prompt  # the assistant turn is closed with EOS
    if arch != "idefics3":
        assert processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
            add_generation_prompt=True,
            tokenize=False,
        ) == "USER: <image>\nhi ASSISTANT:"


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_batch_generate_with_padding(arch, loaded):
    processor, model = loaded[arch]
    inputs = _batch(processor, PROMPTS, _frames(3))
    image_id = model.config.image_token_id
    assert (inputs["input_ids"] == image_id).sum(1).tolist() == [IMAGE_TOKENS_PER_FRAME[arch]] * 3
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][:, 0].all()  # left padding

    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=True, suppress_tokens=[image_id])
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape[0] == 3 and prompt_len < out.shape[1] <= prompt_len + 8
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"])
    assert not (out[:, prompt_len:] == image_id).any()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_forward_backward_and_image_reaches_logits(arch, loaded):
    processor, model = loaded[arch]
    inputs = _batch(processor, PROMPTS, _frames(3))
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    model.zero_grad()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["lm_head.weight"].abs().sum() > 0
    assert any("multi_modal_projector" in n or "connector" in n for n in grads)  # the vision path is trained

    with torch.no_grad():
        other = _batch(processor, PROMPTS, _frames(3, seed=1))
        a = model(**inputs).logits[:, -1]
        b = model(**other).logits[:, -1]
    assert not torch.allclose(a, b)


def test_non_square_frames_and_idefics3_image_splitting(loaded):
    processor, model = loaded["llava_next"]
    inputs = _batch(processor, PROMPTS[:2], _frames(2, shape=(200, 300, 3)))
    assert torch.isfinite(model(**inputs).logits).all()

    processor, model = loaded["idefics3"]
    split = _batch(processor, PROMPTS[:2], _frames(2), do_image_splitting=True, size={"longest_edge": 64})
    assert split["pixel_values"].shape[1] == 5  # 2x2 tiles + the global image
    assert torch.isfinite(model(**split).logits).all()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_build_is_deterministic(arch, tmp_path, tiny_dirs):
    again = build_tiny_vlm(arch, tmp_path / "again", seed=0)
    for f in sorted(p.name for p in tiny_dirs[arch].iterdir()):
        assert (again / f).read_bytes() == (tiny_dirs[arch] / f).read_bytes(), f
    other = build_tiny_vlm(arch, tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_resolve_model_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SELU_CACHE", str(tmp_path))
    folder = resolve_model_path("tiny:llava")
    assert folder == str(tmp_path / "tiny" / "llava-v1-seed0")
    stamp = os.stat(os.path.join(folder, "model.safetensors")).st_mtime_ns
    assert resolve_model_path("tiny:llava") == folder  # cached, not rebuilt
    assert os.stat(os.path.join(folder, "model.safetensors")).st_mtime_ns == stamp
    assert os.listdir(tmp_path / "tiny") == ["llava-v1-seed0"]  # no temp folder left behind

    assert resolve_model_path("/models/llava-1.5-7b-hf") == "/models/llava-1.5-7b-hf"
    assert resolve_model_path("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(ValueError, match="llava, llava_next, idefics3"):
        resolve_model_path("tiny:nope")
