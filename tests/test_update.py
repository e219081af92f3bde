"""The PPO update's batching: length-aware minibatches, accumulation and DDP give the gradients of one big batch."""

import os

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selu_lightning.rl.minibatches import PPOEpochSampler, collate_transitions
from selu_lightning.rl.advantages import normalize_advantages

from helpers import cpu_trainer, tiny_data, tiny_module


def test_sampler_covers_each_transition_once_per_pass():
    lengths = list(range(40, 0, -1))
    sampler = PPOEpochSampler(lengths, batch_size=4, ppo_epochs=3, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 30
    for k in range(3):
        flat = sorted(i for b in batches[10 * k : 10 * (k + 1)] for i in b)
        assert flat == list(range(40))


def test_length_grouping_cuts_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 500, (256,), generator=gen).tolist()

    def padded_tokens(group):
        batches = PPOEpochSampler(lengths, 8, 1, torch.Generator().manual_seed(1), group=group)
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded_tokens(8) < 0.8 * padded_tokens(1)


class GradCapture(L.Callback):
    """Keeps a copy of every gradient right before the (first) optimizer step."""

    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def first_step_grads(tmp_path, minibatch, accumulate):
    torch.manual_seed(0)
    capture = GradCapture()
    module = tiny_module(lr=1e-3, minibatch_size=minibatch)
    data = tiny_data(num_envs=4, steps_per_epoch=8)
    cpu_trainer(tmp_path, accumulate_grad_batches=accumulate, callbacks=[capture]).fit(module, data)
    return capture.grads


def test_micro_batch_2_times_accumulation_4_equals_batch_8(tmp_path):
    big = first_step_grads(tmp_path, minibatch=8, accumulate=1)
    small = first_step_grads(tmp_path, minibatch=2, accumulate=4)
    assert big.keys() == small.keys() and big
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6, msg=name)


def _ddp_worker(rank, world, path, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(out[1]))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grads, loss = _grads_on(torch.load(path, weights_only=False), rank, world)
    torch.save({"grads": grads, "loss": loss}, f"{out[0]}.{rank}")
    dist.destroy_process_group()


class _LossOf(torch.nn.Module):
    def __init__(self, actor):
        super().__init__()
        self.actor = actor

    def forward(self, batch):
        losses, _ = self.actor.ppo_losses(batch)
        return torch.stack(list(losses.values())).sum()


def _grads_on(buffer, rank, world):
    """The loss and gradients on this rank's share of a fixed buffer (advantages normalised over all ranks)."""
    torch.manual_seed(0)
    module = tiny_module()
    module.configure_model()
    module.policy.load_state_dict(buffer["weights"])
    share = buffer["items"][rank::world]
    batch = collate_transitions(share)
    sum_across_ranks = None
    if dist.is_initialized():
        def sum_across_ranks(t):
            dist.all_reduce(t)
            return t
    batch["advantages"] = normalize_advantages(torch.as_tensor(batch["advantages"]), sum_across_ranks=sum_across_ranks).numpy()
    model = _LossOf(module)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    loss = model(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return grads, float(loss)


def test_one_process_equals_two_ddp_processes_holding_halves(tmp_path):
    torch.manual_seed(0)
    module = tiny_module()
    data = tiny_data(num_envs=4, steps_per_epoch=8)
    cpu_trainer(tmp_path, max_epochs=1).fit(module, data)
    rollout = data.last_rollout
    items = [
        {"sample": d.sample, "old_logprobs": float(rollout.logprobs[t, i]) + 0.05 * (i - 1.5),
         "old_values": float(rollout.values[t, i]), "advantages": float(t + 2 * i - 3), "returns": float(i)}
        for t, row in enumerate(rollout.decisions) for i, d in enumerate(row)
    ]  # fmt: skip
    path = tmp_path / "buffer.pt"
    torch.save({"items": items, "weights": module.policy.state_dict()}, path)

    single, single_loss = _grads_on(torch.load(path, weights_only=False), 0, 1)
    out = str(tmp_path / "ddp")
    port = 20000 + os.getpid() % 20000
    mp.spawn(_ddp_worker, args=(2, path, (out, port)), nprocs=2, join=True)
    halves = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    assert (halves[0]["loss"] + halves[1]["loss"]) / 2 == pytest.approx(single_loss, rel=1e-5)
    for name, g in single.items():
        torch.testing.assert_close(halves[0]["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(halves[1]["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
