"""Regressions of the spine's bugs, each pinned where it bit: collectives, schedules, precision, sampling vs
scoring, non-finite steps, parse failures, resuming."""

import json
import shutil
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from selu_lightning.action_spaces import TextActionSpace
from selu_lightning.errors import ConfigError
from selu_lightning.modules.actor_ppo import NonFiniteLossError
from selu_lightning.policy.vlm import LoraSettings, PolicyConfig

from helpers import LossRecorder, cpu_trainer, tiny_data, tiny_module


# ---------------------------------------------------------------------- collectives
class RecordingStrategy:
    """Test double for a multi-GPU strategy: its root device is not the CPU, and it records what each
    collective is handed (NCCL accepts only tensors on the GPU)."""

    def __init__(self, root_device):
        self.root_device = torch.device(root_device)
        self.devices = []

    def reduce(self, tensor, reduce_op="sum"):
        self.devices.append(tensor.device)
        return torch.full(tensor.shape, 2.0, dtype=tensor.dtype)  # as if a second, identical rank held 1s


def test_collectives_receive_tensors_on_the_strategys_root_device():
    module = tiny_module()
    strategy = RecordingStrategy("meta")
    module._trainer = SimpleNamespace(world_size=2, strategy=strategy)
    out = module._sum_across_ranks(torch.ones(3))
    assert strategy.devices == [torch.device("meta")]
    assert out.device.type == "cpu" and out.tolist() == [2.0, 2.0, 2.0]


def test_every_rollout_collective_goes_through_the_root_device(tmp_path):
    """Advantage normalisation and rollout metrics both reduce through ``_sum_across_ranks``."""
    module, data = tiny_module(), tiny_data()
    cpu_trainer(tmp_path).fit(module, data)
    calls = []
    original = module._sum_across_ranks
    module._sum_across_ranks = lambda t: calls.append(t.shape) or original(t)
    module.build_train_data(data.last_rollout)
    assert len(calls) == 3  # [sum, count], squared deviations, the metrics vector


# ---------------------------------------------------------------------- schedule
class LrProbe(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cosine_schedule_spans_a_max_steps_bounded_run(tmp_path):
    """max_steps (optimizer steps) bounds the run: Lightning sets max_epochs=-1; the schedule must not
    collapse to lr_min after one update."""
    probe = LrProbe()
    module = tiny_module(lr=1e-3, lr_min=1e-5, minibatch_size=4)  # 8 steps / 4 = 2 optimizer steps per update
    cpu_trainer(tmp_path, max_epochs=-1, max_steps=6, callbacks=[probe]).fit(module, tiny_data())
    assert probe.lrs == pytest.approx([1e-3, 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-5])


def test_cosine_schedule_length_from_config(tmp_path):
    probe = LrProbe()
    module = tiny_module(lr=1e-3, lr_min=1e-5, lr_schedule_updates=2)
    cpu_trainer(tmp_path, max_epochs=3, callbacks=[probe]).fit(module, tiny_data())
    assert probe.lrs == pytest.approx([1e-3, 1e-5, 1e-5])


def test_cosine_schedule_without_a_length_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="lr_schedule_updates"):
        cpu_trainer(tmp_path, max_epochs=-1, max_time={"minutes": 1}).fit(tiny_module(), tiny_data())


# ---------------------------------------------------------------------- sampling == scoring
def test_checkpoint_generation_config_does_not_change_the_sampling_distribution(tmp_path):
    """A checkpoint whose generation_config sets a repetition penalty, top-k, top-p and n-gram blocking:
    sampling must still draw from the distribution scoring computes, so the first ratio is 1."""
    from selu_lightning.policy.tiny import resolve_model_path

    folder = tmp_path / "ckpt"
    shutil.copytree(resolve_model_path("tiny:llava"), folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.update(repetition_penalty=1.8, top_k=3, top_p=0.5, no_repeat_ngram_size=2, do_sample=True, temperature=0.3)
    (folder / "generation_config.json").write_text(json.dumps(gen))
    torch.manual_seed(0)
    module = tiny_module(TextActionSpace(temperature=1.0, max_new_tokens=16), minibatch_size=8)
    module.policy.config = PolicyConfig(str(folder), lora=LoraSettings(r=4, alpha=8), value_head_widths=[32])
    rec = LossRecorder(module)
    cpu_trainer(tmp_path).fit(module, tiny_data("ezpoints"))
    assert module.policy.hf_model.generation_config.repetition_penalty in (None, 1.0)
    assert rec.stats[0]["ratio_max_abs_log"] < 1e-4


# ---------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
@pytest.mark.parametrize("space", ["candidates", "text"])
def test_bf16_fits_keep_rl_maths_in_fp32(precision, space, tmp_path):
    action_space = TextActionSpace(temperature=1.0, max_new_tokens=6) if space == "text" else None
    module = tiny_module(action_space)
    rec = LossRecorder(module)
    captured = []
    original = module.build_train_data
    module.build_train_data = lambda rollout: captured.append(rollout) or original(rollout)
    cpu_trainer(tmp_path, precision=precision).fit(module, tiny_data())
    rollout = captured[0]
    assert rollout.logprobs.dtype == rollout.values.dtype == torch.float32
    assert rec.dtypes and all(dtype == torch.float32 for step in rec.dtypes for dtype in step.values())
    assert rec.stats[0]["ratio_max_abs_log"] < 1e-4
    if precision == "bf16-true":
        assert next(module.policy.model.parameters()).dtype == torch.bfloat16


# ---------------------------------------------------------------------- non-finite steps
def _nan_at(module, steps):
    """Test double: the loss of the given training steps (0-based) becomes NaN."""
    original, seen = module.ppo_losses, {"n": 0}

    def maybe_nan(batch):
        losses, stats = original(batch)
        if seen["n"] in steps:
            losses["loss_policy"] = losses["loss_policy"] * float("nan")
        seen["n"] += 1
        return losses, stats

    module.ppo_losses = maybe_nan


class WeightsAtEachStep(L.Callback):
    def __init__(self):
        self.snapshots = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.snapshots.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})


def test_a_nan_loss_skips_its_step_and_is_counted(tmp_path):
    module = tiny_module(lr=1e-2, minibatch_size=2, log_examples_every_n_epochs=0)
    _nan_at(module, {1})
    probe = WeightsAtEachStep()
    trainer = cpu_trainer(tmp_path, callbacks=[probe])
    trainer.fit(module, tiny_data())  # 8 steps / 2 = 4 optimizer steps
    after_first, after_nan = probe.snapshots[1], probe.snapshots[2]
    assert all(torch.equal(after_first[n], after_nan[n]) for n in after_first), "the NaN step moved weights"
    assert not all(torch.equal(probe.snapshots[0][n], after_first[n]) for n in after_first)
    assert trainer.logged_metrics["train/nonfinite_steps"] == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nan_losses_in_a_row_stop_the_run(tmp_path):
    module = tiny_module(minibatch_size=2, max_nonfinite_steps=3)
    _nan_at(module, {0, 1, 2, 3})
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row"):
        cpu_trainer(tmp_path).fit(module, tiny_data())


# ---------------------------------------------------------------------- parse failures
@pytest.mark.parametrize("mode", ["random_action", "mask_from_loss"])
def test_parse_failure_mode_decides_what_unparsable_text_teaches(mode, tiny_llava_policy):
    space = TextActionSpace(temperature=1.0, max_new_tokens=6, parse_failure=mode)
    from selu_lightning.envs.pool import EnvState

    states = [EnvState(np.zeros((32, 32, 3), np.uint8), "s", "", ["stand", "hit"]) for _ in range(4)]
    prompts = space.encode(tiny_llava_policy, states, "Blackjack.")
    decisions = space.act(tiny_llava_policy, prompts, [s.legal_actions for s in states], greedy=False,
                          rng=np.random.default_rng(0))  # fmt: skip
    assert all(d.parse_failed for d in decisions)  # a random tiny model never names a legal action
    assert all(d.env_action in ("stand", "hit") for d in decisions)  # the env still gets a legal action
    ev = space.evaluate(tiny_llava_policy, [d.sample for d in decisions], with_entropy=False)
    expected = 1.0 if mode == "random_action" else 0.0
    assert ev.loss_mask.tolist() == [expected] * 4


def test_parse_failure_mode_is_validated():
    with pytest.raises(ConfigError, match="parse_failure"):
        TextActionSpace(parse_failure="ignore")


# ---------------------------------------------------------------------- rollout buffer memory
def _nbytes(sample):
    return sum(v.numel() * v.element_size() for v in sample.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("arch", ["llava", "llava_next", "idefics3"])
def test_uint8_frames_in_the_buffer_score_exactly_like_pixel_values(arch):
    """Stored prompts keep the uint8 frame, not fp32 pixel values; scoring re-makes identical pixel values."""
    from selu_lightning.action_spaces.base import user_message
    from selu_lightning.policy.vlm import FRAME_KEY, VLMPolicy

    frame = (np.random.default_rng(0).random((300, 300, 3)) * 255).astype(np.uint8)
    scores, sizes = {}, {}
    for mode in ("uint8", "pixel_values"):
        torch.manual_seed(0)
        policy = VLMPolicy(PolicyConfig(f"tiny:{arch}", lora=None, value_head_widths=[8], frames_in_buffer=mode))
        policy.load()
        prompt = policy.encode_prompt(user_message("Target: 3", True), frame)
        assert (FRAME_KEY in prompt) == (mode == "uint8")
        out = policy.score([prompt], [torch.tensor([5, 6, 7])])
        scores[mode] = (out.token_logprobs[0], out.values)
        sizes[mode] = _nbytes(prompt)
    torch.testing.assert_close(scores["uint8"][0], scores["pixel_values"][0], rtol=0, atol=0)
    torch.testing.assert_close(scores["uint8"][1], scores["pixel_values"][1], rtol=0, atol=0)
    # the frame and the token ids, nothing else (a real LLaVA-NeXT's fp32 pixel values for it: ~6.8 MB)
    assert frame.nbytes <= sizes["uint8"] < frame.nbytes + 4096


def test_no_numpy_conversion_of_a_tensor_that_may_live_on_the_gpu():
    """``.numpy()`` on a CUDA tensor raises: every host conversion in the package goes through ``.cpu()``."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "selu_lightning"
    offending = [
        f"{path.relative_to(package)}:{n}"
        for path in package.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.numpy\(\)", line) and not re.search(r"\.cpu\(\)(\.detach\(\))?\.numpy\(\)|\.detach\(\)\.cpu\(\)\.numpy\(\)", line)
    ]
    assert not offending, offending


def test_auto_keeps_whichever_is_smaller():
    """``frames_in_buffer: auto``: the tiny LLaVA's 32x32 pixel values are smaller than a 300x300 frame, so
    they are kept; a real LLaVA-NeXT's (~6.8 MB fp32) are not."""
    from selu_lightning.action_spaces.base import user_message
    from selu_lightning.policy.vlm import FRAME_KEY, VLMPolicy

    policy = VLMPolicy(PolicyConfig("tiny:llava", lora=None, value_head_widths=[8]))
    policy.load()
    assert policy.config.frames_in_buffer == "auto"
    big = policy.encode_prompt(user_message("x", True), np.zeros((300, 300, 3), np.uint8))
    assert FRAME_KEY not in big and "pixel_values" in big


def test_last_value_skips_newer_runs_that_did_not_log_the_tag(tmp_path):
    """The README's read-back command still works after a `selu predict` run wrote an event file without it."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from selu_lightning.tb import last_value

    with SummaryWriter(tmp_path / "version_0") as w:
        w.add_scalar("val/success_rate", 0.5, 1)
        w.add_scalar("val/success_rate", 0.9, 2)
    time.sleep(0.05)
    with SummaryWriter(tmp_path / "version_1") as w:
        w.add_scalar("other", 1.0, 1)
    assert last_value(tmp_path, "val/success_rate") == pytest.approx(0.9)
    with pytest.raises(KeyError):
        last_value(tmp_path, "nope")


def test_a_hub_id_without_network_fails_at_once_in_one_line(monkeypatch):
    import socket

    def unreachable(*args, **kwargs):  # test double for a machine with no network
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ConfigError, match="the hub cannot be reached"):
        PolicyConfig("some-org/not-cached-anywhere-7b")


def test_sigterm_stops_a_rollout_at_the_next_step():
    """A scheduler's grace period is shorter than a 7B rollout: the runner does not wait for its end."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from selu_lightning.data.rollout import _rollout_progress

    trainer = SimpleNamespace(received_sigterm=False, progress_bar_callback=None)
    progress = _rollout_progress(trainer)
    progress(1, 8, 0, 0)
    trainer.received_sigterm = True
    with pytest.raises(SIGTERMException):
        progress(2, 8, 0, 0)


@pytest.mark.parametrize("world, exception, step, saves", [
    (1, RuntimeError("env bug"), 5, True), (2, RuntimeError("env bug"), 5, False), (2, KeyboardInterrupt(), 5, True),
    (1, KeyboardInterrupt(), 0, False),  # before the first update: the starting weights are no run to resume
])  # fmt: skip
def test_interrupt_checkpoint_never_waits_on_ranks_that_did_not_fail(world, exception, step, saves, tmp_path):
    from selu_lightning.cli import InterruptCheckpoint

    saved = []
    trainer = SimpleNamespace(world_size=world, global_step=step, save_checkpoint=lambda path: saved.append(path))
    InterruptCheckpoint(dirpath=str(tmp_path), filename="interrupted").on_exception(trainer, None, exception)
    assert bool(saved) == saves
