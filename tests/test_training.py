"""ActorPPO trained by a real Lightning Trainer on the tiny model: parameters move, knobs act, eval is held out."""

import lightning as L
import pytest
import torch

from selu_lightning.action_spaces import TextActionSpace
from selu_lightning.envs.pool import EnvPool

from helpers import LossRecorder, cpu_trainer, tiny_data, tiny_module


def test_two_epoch_fit_changes_every_trainable_parameter(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(ppo_epochs=2)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in before) and any("value_head" in n for n in before)
    cpu_trainer(tmp_path, max_epochs=2).fit(module, tiny_data(steps_per_epoch=16))
    unchanged = [n for n, p in module.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"never updated: {unchanged}"
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    assert frozen, "LoRA should leave the base weights frozen"


class GradNormProbe(L.Callback):
    """Reads the gradient norm after clipping, right before the optimizer's grads are zeroed."""

    def __init__(self):
        self.norms = []

    def on_before_zero_grad(self, trainer, module, optimizer):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_gradient_clipping_is_applied(tmp_path):
    probe = GradNormProbe()
    cpu_trainer(tmp_path, gradient_clip_val=1e-3, callbacks=[probe]).fit(tiny_module(lr=1e-2), tiny_data())
    assert probe.norms and max(probe.norms) <= 1e-3 * 1.001


def test_cosine_schedule_spans_max_epochs(tmp_path):
    lrs = []

    class LrProbe(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = tiny_module(lr=1e-3, lr_min=1e-5)
    cpu_trainer(tmp_path, max_epochs=3, callbacks=[LrProbe()]).fit(module, tiny_data())
    assert lrs == pytest.approx([1e-3, 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-5])


def test_entropy_and_kl_terms_enter_the_loss(tmp_path):
    module = tiny_module(entropy_coef=0.1, kl_coef=0.5)
    data = tiny_data()
    cpu_trainer(tmp_path).fit(module, data)
    batch = next(iter(data.train_dataloader()))
    losses, stats = module.ppo_losses(batch)
    assert set(losses) == {"loss_policy", "loss_value", "loss_entropy", "loss_kl"}
    assert losses["loss_entropy"] < 0  # a bonus
    assert stats["kl_to_ref"] > 0  # the adapters moved the policy away from the base model
    module.hparams.kl_coef = 0.0
    assert "loss_kl" not in module.ppo_losses(batch)[0]


def test_full_fine_tuning_keeps_a_frozen_reference_outside_the_checkpoint(tmp_path):
    module = tiny_module(lora=None, lr=1e-2, log_reference_kl=True)
    data = tiny_data()
    cpu_trainer(tmp_path).fit(module, data)
    ref = module.policy._reference[0]
    assert not any(p.requires_grad for p in ref.parameters())
    assert not any(k.startswith("policy._reference") for k in module.state_dict())
    # After an update the policy differs from its frozen start, which the reference still equals.
    moved = [
        (p - r).abs().max().item()
        for (name, p), r in zip(module.policy.model.named_parameters(), ref.parameters())
        if p.requires_grad
    ]
    assert max(moved) > 0
    losses, stats = module.ppo_losses(next(iter(data.train_dataloader())))
    assert "loss_kl" not in losses  # logged, not in the loss
    assert stats["kl_to_ref"] > 0


def test_reference_kl_is_zero_before_any_update(tmp_path):
    module = tiny_module(lora=None, kl_coef=0.1)
    data = tiny_data()
    cpu_trainer(tmp_path, limit_train_batches=0).fit(module, data)
    losses, stats = module.ppo_losses(next(iter(data.train_dataloader())))
    assert stats["kl_to_ref"].item() == pytest.approx(0.0, abs=1e-6)
    assert "loss_kl" in losses


def test_negative_kl_coef_is_a_config_error():
    with pytest.raises(ValueError, match="kl_coef"):
        tiny_module(kl_coef=-0.1)


def test_validation_plays_held_out_episodes_deterministically(tmp_path):
    module = tiny_module()
    data = tiny_data(val_episodes=6, eval_num_envs=4)
    trainer = cpu_trainer(tmp_path, limit_val_batches=None)
    first = trainer.validate(module, data, verbose=False)[0]
    second = trainer.validate(module, data, verbose=False)[0]
    assert 0.0 <= first["val/success_rate"] <= 1.0
    assert first == second  # greedy + fixed seeds
    batches = data.eval_seeds("val")
    assert [len(b) for b in batches] == [4, 2]
    train_first_seeds = set(EnvPool("numberline", 4, seed=0)._first_seeds)
    assert not train_first_seeds & {s for b in batches for s in b}
    assert set(data.eval_seeds("test")[0]).isdisjoint(batches[0])


def test_test_stage_logs_test_metrics(tmp_path):
    out = cpu_trainer(tmp_path, limit_test_batches=1).test(tiny_module(), tiny_data(test_episodes=3), verbose=False)[0]
    assert set(out) == {"test/success_rate", "test/episode_return", "test/parse_failure_rate"}


def test_text_action_space_trains_and_counts_parse_failures(tmp_path):
    module = tiny_module(TextActionSpace(temperature=1.0, max_new_tokens=8))
    data = tiny_data("blackjack")
    cpu_trainer(tmp_path).fit(module, data)
    stats = data.last_rollout.stats()
    assert stats["steps"] == 8 and stats["generated_tokens"] > 0
    # an untrained tiny model rarely writes valid JSON: failures are counted, fallback actions stay legal
    assert stats["parse_failures"] > 0
    assert all(d.env_action in ("stand", "hit") for row in data.last_rollout.decisions for d in row)


def test_checkpoint_holds_only_trained_weights(tmp_path):
    module = tiny_module()
    trainer = cpu_trainer(tmp_path, enable_checkpointing=True)
    trainer.fit(module, tiny_data())
    path = tmp_path / "final.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(state) == trainable


def test_min_new_tokens_fixes_generation_length(tiny_llava_policy):
    import numpy as np

    from selu_lightning.action_spaces.base import user_message

    space = TextActionSpace(temperature=1.0, max_new_tokens=12, min_new_tokens=12)
    frame = np.zeros((300, 300, 3), np.uint8)
    prompts = [tiny_llava_policy.encode_prompt(user_message(f"go {k}", True), frame) for k in range(4)]
    decisions = space.act(tiny_llava_policy, prompts, [["+", "-"]] * 4, greedy=False, rng=np.random.default_rng(0))
    assert [d.generated_tokens for d in decisions] == [12] * 4


def test_eval_env_kwargs_reach_only_the_evaluation_envs():
    data = tiny_data(env_kwargs={"text_state": True}, eval_env_kwargs={"text_state": False})
    assert data.eval_envs().reset_to([1])[0].text == ""
    assert data.eval_envs().reset_to([1])[0].image.shape == (300, 300, 3)
    assert data._train_pool().states[0].text.startswith("Target:")


def test_example_frames_and_text_reach_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from selu_lightning.tb import latest_event_file

    logger = TensorBoardLogger(tmp_path, name="ex")
    module = tiny_module(TextActionSpace(temperature=1.0, max_new_tokens=6), log_examples_every_n_epochs=1)
    cpu_trainer(tmp_path, logger=logger).fit(module, tiny_data(num_examples=2))
    acc = EventAccumulator(str(latest_event_file(tmp_path)), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["examples/frame_0", "examples/frame_1"]
    assert "examples/step_0/text_summary" in acc.Tags()["tensors"]


def test_predict_returns_one_record_per_test_episode(tmp_path):
    out = cpu_trainer(tmp_path).predict(tiny_module(), tiny_data(test_episodes=5, eval_num_envs=4))
    records = [r for batch in out for r in batch]
    assert len(records) == 5 and {"return", "length", "success", "seed"} <= set(records[0])


def test_bf16_autocast_keeps_the_loss_maths_in_fp32(tmp_path):
    module = tiny_module()
    rec = LossRecorder(module)
    cpu_trainer(tmp_path, precision="bf16-mixed").fit(module, tiny_data())
    assert rec.dtypes and all(dtype == torch.float32 for row in rec.dtypes for dtype in row.values())


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    from selu_lightning.policy.vlm import LoraSettings, PolicyConfig, VLMPolicy

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = tiny_module()
        module.policy = VLMPolicy(PolicyConfig("tiny:llava", lora=LoraSettings(r=4, alpha=8), value_head_widths=[32],
                                               gradient_checkpointing=checkpointing))  # fmt: skip
        module.configure_model()
        calls = []
        for layer in module.modules():
            if getattr(layer, "gradient_checkpointing", False) is True:
                inner = layer._gradient_checkpointing_func
                layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
        data = tiny_data()
        cpu_trainer(tmp_path, max_epochs=1, limit_train_batches=0).fit(module, data)
        torch.manual_seed(0)
        batch = next(iter(data.train_dataloader()))
        module.train()
        losses, _ = module.ppo_losses(batch)
        torch.stack(list(losses.values())).sum().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
        assert bool(calls) == checkpointing  # activations really were recomputed (the update runs without dropout)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_value_head_lr_gives_the_head_its_own_rate(tmp_path):
    module = tiny_module(lr=1e-4, lr_min=1e-6, value_head_lr=3e-3)
    cpu_trainer(tmp_path, max_epochs=2).fit(module, tiny_data())
    groups = module.trainer.optimizers[0].param_groups
    head = {id(p) for p in module.policy.value_head.parameters()}
    assert [len(g["params"]) for g in groups] == [len(groups[0]["params"]), len(head)]
    assert {id(p) for p in groups[1]["params"]} == head and not head & {id(p) for p in groups[0]["params"]}
    assert groups[1]["lr"] / groups[0]["lr"] == pytest.approx(30.0)  # the schedule scales both alike


def test_value_head_lr_must_be_positive():
    with pytest.raises(ValueError, match="value_head_lr"):
        tiny_module(value_head_lr=0.0)
