"""DESIGN.md invariants that need a model: ratio 1 at the first minibatch, fp32 maths, eval-mode rollouts."""

import pytest
import torch

from selu_lightning.action_spaces import CandidateActionSpace, TextActionSpace
from selu_lightning.policy.vlm import LoraSettings

from helpers import LossRecorder, cpu_trainer, tiny_data, tiny_module


def _perturb_lora(module):
    """LoRA's B starts at zero, which would hide the adapter (and its dropout) entirely."""
    module.configure_model()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)


SPACES = {
    "candidates": lambda: CandidateActionSpace(),
    "text": lambda: TextActionSpace(temperature=1.0, max_new_tokens=12),
}


@pytest.mark.parametrize("space", sorted(SPACES))
def test_first_minibatch_ratio_is_one_on_ezpoints(space, tmp_path):
    """EZPoints' prompt carries the formula, so it changes every step: each transition's own prompt is scored."""
    torch.manual_seed(0)
    module = tiny_module(SPACES[space](), lora=LoraSettings(r=4, alpha=8, dropout=0.3), minibatch_size=12)
    _perturb_lora(module)  # with B = 0 dropout on the adapter could not change anything
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
    _perturb_lora(module)
    rec = LossRecorder(module)
    cpu_trainer(tmp_path).fit(module, tiny_data("ezpoints", steps_per_epoch=8))
    assert rec.stats[0]["ratio_max_abs_log"] > 1e-3


def test_rollout_runs_in_eval_mode_and_values_logprobs_are_fp32_on_fp32_weights(tmp_path):
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


def test_rl_maths_is_fp32_on_bf16_weights(tmp_path):
    """Invariant 3 with weights in bf16 and no precision plugin casting anything: nothing calls .float() for
    the test; the rollout buffer, the re-scored log-probs and every loss term come out fp32 by themselves."""
    from selu_lightning.policy.vlm import PolicyConfig

    module = tiny_module(TextActionSpace(temperature=1.0, max_new_tokens=6))
    module.policy.config = PolicyConfig("tiny:llava", dtype="bfloat16", lora=LoraSettings(r=4, alpha=8), value_head_widths=[32])
    rec = LossRecorder(module)
    data = tiny_data()
    cpu_trainer(tmp_path).fit(module, data)
    assert next(module.policy.hf_model.parameters()).dtype == torch.bfloat16
    assert data.last_rollout.logprobs.dtype == data.last_rollout.values.dtype == torch.float32
    ev = module.action_space.evaluate(module.policy, [data.last_rollout.decisions[0][0].sample], with_entropy=True)
    assert ev.logprobs.dtype == ev.values.dtype == ev.entropy.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in ev.token_logprobs)
    assert all(dtype == torch.float32 for step in rec.dtypes for dtype in step.values())


def test_act_stores_the_cot_action_boundary_found_by_characters(tiny_llava_policy, monkeypatch):
    """Invariant 2 in what act() stores: the response's tokens before the action field weigh cot_weight,
    the rest 1, located through decoded character offsets of this tokenizer (no token ids assumed)."""
    import numpy as np

    from selu_lightning.action_spaces.parsing import action_boundary
    from selu_lightning.envs.pool import EnvState

    policy = tiny_llava_policy
    text = '{"thoughts": "the target is up", "action": "+"}'
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"] + [policy.tokenizer.eos_token_id]
    monkeypatch.setattr(policy, "generate", lambda prompts, **kw: [torch.tensor(ids) for _ in prompts])
    space = TextActionSpace(cot_weight=0.25)
    state = EnvState(np.zeros((32, 32, 3), np.uint8), "Target: 3", "", ["+", "-"])
    decision = space.act(policy, space.encode(policy, [state], "t"), [["+", "-"]], greedy=True,
                         rng=np.random.default_rng(0))[0]  # fmt: skip
    assert decision.env_action == "+" and not decision.parse_failed
    weights = decision.sample["weights"].tolist()
    boundary = action_boundary(text)
    ends = [len(policy.tokenizer.decode(ids[: k + 1], skip_special_tokens=True)) for k in range(len(ids))]
    expected = [1.0 if end > boundary else 0.25 for end in ends]
    assert weights == expected
    assert 0.25 in weights and 1.0 in weights and weights == sorted(weights)  # thoughts first, then the action


def test_env_and_sampler_seeds_depend_on_the_rank():
    """Invariant 4: two ranks never play the same episodes or draw the same samples."""
    from types import SimpleNamespace

    from selu_lightning.envs.pool import EnvPool

    pools = []
    for rank in (0, 1):
        data = tiny_data()
        data.trainer = SimpleNamespace(global_rank=rank, world_size=2, lightning_module=None)
        pools.append(data._train_pool())
        assert data.pool.rank == rank
    try:
        assert not set(pools[0]._first_seeds) & set(pools[1]._first_seeds)
        assert EnvPool("numberline", 2, seed=0, rank=0)._first_seeds != EnvPool("numberline", 2, seed=0, rank=1)._first_seeds
    finally:
        for pool in pools:
            pool.close()


def test_training_seeds_never_meet_evaluation_seeds():
    """Invariant 6 for every training seed a run can use: every rank, every env, and restart seeds."""
    from selu_lightning.envs.pool import seed_stream

    data = tiny_data(val_episodes=200, test_episodes=400, eval_num_envs=16)
    held_out = {s for stage in ("val", "test") for batch in data.eval_seeds(stage) for s in batch}
    assert len(held_out) == 600
    train = {
        int(seed_stream(0, "train", rank, env, *restart).generate_state(1)[0])
        for rank in range(8) for env in range(32) for restart in ([], [1], [2], [3])
    }  # fmt: skip
    assert len(train) == 8 * 32 * 4 and not train & held_out
    val, test = ({s for b in data.eval_seeds(stage) for s in b} for stage in ("val", "test"))
    assert not val & test
