"""DESIGN.md invariants that need a model: ratio 1 at the first minibatch, fp32 maths, eval-mode rollouts."""

import pytest
import torch

from selu_lightning.action_spaces import CandidateActionSpace, TextActionSpace
from selu_lightning.policy.vlm import LoraSettings

from helpers import LossRecorder, cpu_trainer, tiny_data, tiny_module


SPACES = {
    "candidates": lambda: CandidateActionSpace(),
    "text": lambda: TextActionSpace(temperature=1.0, max_new_tokens=12),
}


@pytest.mark.parametrize("space", sorted(SPACES))
def test_first_minibatch_ratio_is_one_on_ezpoints(space, tmp_path):
    """EZPoints' prompt carries the formula, so it changes every step: each transition's own prompt is scored."""
    torch.manual_seed(0)
    module = tiny_module(SPACES[space](), lora=LoraSettings(r=4, alpha=8, dropout=0.3), minibatch_size=12)
    rec = LossRecorder(module)
    data = tiny_data("ezpoints", num_envs=4, steps_per_epoch=12)
    cpu_trainer(tmp_path, max_epochs=1).fit(module, data)
    prompts = {tuple(d.sample["prompt"]["input_ids"].tolist()) for row in data.last_rollout.decisions for d in row}
    assert len(prompts) > 4, "EZPoints prompts should differ from step to step"
    assert rec.stats[0]["ratio_max_abs_log"] < 1e-4


def test_dropout_in_update_makes_the_first_ratio_noisy(tmp_path):
    """The knob does something: with dropout kept on in the update, recomputed log-probs differ."""
    torch.manual_seed(0)
    module = tiny_module(
        TextActionSpace(temperature=1.0, max_new_tokens=12), lora=LoraSettings(r=4, alpha=8, dropout=0.5),
        dropout_in_update=True, minibatch_size=8,
    )
    module.configure_model()
    with torch.no_grad():  # LoRA's B starts at zero, which would hide the adapter's dropout entirely
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    rec = LossRecorder(module)
    cpu_trainer(tmp_path).fit(module, tiny_data("ezpoints", steps_per_epoch=8))
    assert rec.stats[0]["ratio_max_abs_log"] > 1e-3


def test_rollout_runs_in_eval_mode_and_values_logprobs_are_fp32(tmp_path):
    module = tiny_module(lora=LoraSettings(r=4, alpha=8, dropout=0.5))
    modes = []
    original = module.action_space.act

    def spy(policy, *args, **kwargs):
        modes.append(any(m.training for m in policy.modules()))
        return original(policy, *args, **kwargs)

    module.action_space.act = spy
    data = tiny_data()
    cpu_trainer(tmp_path).fit(module, data)
    assert modes and not any(modes), "some module was in train mode (dropout on) while acting"
    assert data.last_rollout.logprobs.dtype == torch.float32
    ev = module.action_space.evaluate(module.policy, [data.last_rollout.decisions[0][0].sample], with_entropy=True)
    assert ev.logprobs.dtype == ev.values.dtype == ev.entropy.dtype == torch.float32
