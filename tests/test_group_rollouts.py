"""Group rollouts and the critic-free algorithms end to end: groups share seeds and differ only in sampling,
the first minibatch's ratio is 1, no value head is built or saved, DDP gives one process's advantages."""

import os
import warnings

import lightning as L
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from selu_lightning.action_spaces.base import Decision
from selu_lightning.data.rollout import Rollout, collect_rollout
from selu_lightning.data.trajectories import EpisodeRecorder
from selu_lightning.envs.pool import EnvPool
from selu_lightning.errors import ConfigError

from helpers import LossRecorder, cpu_trainer, tiny_data, tiny_module


class RandomAgent:
    """Test double for a policy: a uniformly random legal action per state, drawn from the runner's generator;
    each sample is tagged with (rank, step, env) so advantages can be traced back to their step."""

    def __init__(self, rank: int = 0) -> None:
        self.rank, self.t = rank, 0

    def decide(self, states, task, *, greedy, rng):
        out = []
        for i, s in enumerate(states):
            sample = {"prompt": {"input_ids": torch.zeros(3, dtype=torch.long)}, "response": torch.zeros(2),
                      "tag": (self.rank, self.t, i)}  # fmt: skip
            out.append(Decision(str(rng.choice(s.legal_actions)), float(-i - 1), 0.0, sample, "thought"))
        self.t += 1
        return out

    def state_values(self, states, task):
        return [0.0] * len(states)


def group_rollout(rank: int = 0, num_envs: int = 8, group_size: int = 4, steps: int = 12, recorder=None) -> Rollout:
    pool = EnvPool("numberline", num_envs, seed=0, rank=rank)
    pool.reset()
    rng = np.random.default_rng([7, rank])
    return collect_rollout(RandomAgent(rank), pool, steps, rng, recorder=recorder, group_size=group_size)


def _first_steps(rollout: Rollout) -> dict[int, tuple[int, int]]:
    """Each episode's first step (t, env)."""
    first: dict[int, tuple[int, int]] = {}
    T, N = rollout.episode_ids.shape
    for t in range(T):
        for i in range(N):
            first.setdefault(int(rollout.episode_ids[t, i]), (t, i))
    return first


# ---------------------------------------------------------------------- group rollouts
def test_groups_share_seeds_and_differ_only_in_sampling():
    recorder = EpisodeRecorder(8, "train-0")
    rollout = group_rollout(recorder=recorder)
    assert rollout.num_steps == 8 * 12  # every env played every step: equal work per rank
    assert rollout.group_size == 4
    first = _first_steps(rollout)
    starts: dict[int, set] = {}
    for e, (t, i) in first.items():
        starts.setdefault(rollout.episode_groups[e], set()).add(rollout.state_keys[t][i])
    assert all(len(keys) == 1 for keys in starts.values()), "a group's episodes started in different states"
    # the recorded episodes carry their seed: one per episode group, a new one for every group
    seeds: dict[int, set] = {}
    for traj in rollout.trajectories:
        g = rollout.episode_groups[int(rollout.episode_ids[traj.end])]
        seeds.setdefault(g, set()).add(traj.seed)
    assert all(len(s) == 1 and None not in s for s in seeds.values())
    assert len({next(iter(s)) for s in seeds.values()}) == len(seeds)
    assert rollout.episode_ids[0].tolist() == list(range(8))  # the first round: envs 0-3 and 4-7 are two groups
    assert len({rollout.episode_groups[e] for e in range(8)}) == 2
    # ... and they then differ only by the sampled actions: some group plays different actions from one state
    actions = [[d.env_action for d in row] for row in rollout.decisions]
    assert any(len({actions[0][i] for i in range(k, k + 4)}) > 1 for k in (0, 4))
    # a group is complete exactly when its 4 episodes ended inside the rollout
    for g in set(rollout.episode_groups):
        members = [e for e, gg in enumerate(rollout.episode_groups) if gg == g]
        done = len(members) == 4 and all(rollout.episode_complete[e] for e in members)
        assert (g in rollout.complete_groups()) == done
    assert rollout.complete_groups()  # NumberLine's episodes (<= 10 steps) fit in 12 steps


def test_each_group_rollout_starts_fresh_episodes_from_new_seeds():
    pool = EnvPool("numberline", 4, seed=0)
    pool.reset()
    rng = np.random.default_rng(0)
    a = collect_rollout(RandomAgent(), pool, 3, rng, group_size=2)
    b = collect_rollout(RandomAgent(), pool, 3, rng, group_size=2)
    assert a.state_keys[0][0] == a.state_keys[0][1] and b.state_keys[0][0] == b.state_keys[0][1]
    assert a.episode_ids[0].tolist() == b.episode_ids[0].tolist() == [0, 1, 2, 3]  # fresh episodes again


def test_a_plain_rollout_is_unchanged_by_the_group_machinery():
    pool = EnvPool("numberline", 4, seed=0)
    pool.reset()
    rollout = collect_rollout(RandomAgent(), pool, 3, np.random.default_rng(0))
    assert rollout.group_size == 1 and rollout.episode_ids is None and rollout.state_keys is None


# ---------------------------------------------------------------------- the algorithms in a fit
class WeightsAtStart(L.Callback):
    """The trainable weights as loaded, before the first update."""

    def on_train_start(self, trainer, module):
        self.weights = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("algorithm", ["grpo", "gigpo"])
def test_group_algorithm_fit_first_ratio_is_one_and_builds_no_value_head(algorithm, tmp_path):
    torch.manual_seed(0)
    module = tiny_module(algorithm=algorithm, minibatch_size=8, lr=1e-2)
    rec = LossRecorder(module)
    snapshot = WeightsAtStart()
    trainer = cpu_trainer(tmp_path, callbacks=[snapshot], enable_checkpointing=True)
    trainer.fit(module, tiny_data(num_envs=4, group_size=2, steps_per_epoch=48))
    assert module.policy.value_head is None
    assert not any("value_head" in n for n, _ in module.named_parameters())
    assert rec.stats[0]["ratio_max_abs_log"] < 1e-4  # rollout and update score alike
    logged = trainer.logged_metrics
    assert float(logged["train/clip_fraction_first_minibatch"]) == 0.0
    assert "train/loss_value" not in logged and "train/explained_variance" not in logged
    assert float(logged["train/groups"]) >= 1 and 0 < float(logged["train/group_step_fraction"]) <= 1
    assert "train/group_return_std" in logged and "train/zero_variance_group_fraction" in logged
    assert ("train/anchor_group_size" in logged) == (algorithm == "gigpo")
    changed = [n for n, p in module.named_parameters() if p.requires_grad and not torch.equal(p, snapshot.weights[n])]
    assert changed, "the update moved no weight"
    ckpt = torch.load(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path,
                      weights_only=False)  # fmt: skip
    assert not any("value_head" in k for k in ckpt["state_dict"])


def test_state_values_are_zero_without_a_value_head():
    module = tiny_module(algorithm="grpo")
    module.configure_model()
    assert module.policy.value_head is None
    pool = EnvPool("numberline", 2, seed=0)
    assert module.state_values(pool.reset(), pool.task_description) == [0.0, 0.0]


def test_clip_defaults_per_algorithm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tiny_module().clip == 0.1  # RL4VLM's PPO
        assert tiny_module(algorithm="grpo").clip == 0.2
        assert tiny_module(algorithm="dr_grpo", clip=0.3).clip == 0.3


def test_group_algorithm_without_groups_fails_before_weights_load(tmp_path):
    module = tiny_module(algorithm="gigpo")
    with pytest.raises(ConfigError, match="data.group_size >= 2"):
        cpu_trainer(tmp_path).fit(module, tiny_data())
    assert module.policy.model is None


def test_bad_group_settings_are_config_errors():
    with pytest.raises(ConfigError, match="divide data.num_envs"):
        tiny_data(num_envs=4, group_size=3)
    with pytest.raises(ConfigError, match="PPO needs a value head"):
        from selu_lightning.modules.actor_ppo import ActorPPO
        from selu_lightning.policy.vlm import PolicyConfig

        ActorPPO(PolicyConfig("tiny:llava", lora=None, value_head_widths=None))


def test_ppo_runs_on_group_rollouts(tmp_path):
    """Group rollouts are ordinary [T, N] rollouts too: PPO's GAE reads them unchanged (equal-rollout comparisons)."""
    module = tiny_module(minibatch_size=8)
    rec = LossRecorder(module)
    cpu_trainer(tmp_path).fit(module, tiny_data(num_envs=4, group_size=2, steps_per_epoch=16))
    assert rec.stats and rec.stats[0]["ratio_max_abs_log"] < 1e-4


# ---------------------------------------------------------------------- DDP == one process
def _merge(rollouts: list[Rollout]) -> Rollout:
    """Ranks' group rollouts side by side, as one process holding all their envs (ids made unique)."""
    merged = Rollout(
        [sum((r.decisions[t] for r in rollouts), []) for t in range(len(rollouts[0].decisions))],
        *(torch.cat([getattr(r, k) for r in rollouts], dim=1)
          for k in ("rewards", "values", "next_values", "logprobs", "terminated", "truncated")),
    )  # fmt: skip
    ids, groups, complete, e0, g0 = [], [], [], 0, 0
    for r in rollouts:
        ids.append(r.episode_ids + e0)
        groups += [g + g0 for g in r.episode_groups]
        complete += r.episode_complete
        e0, g0 = e0 + len(r.episode_groups), g0 + len(set(r.episode_groups))
    merged.group_size, merged.episode_ids = rollouts[0].group_size, torch.cat(ids, dim=1)
    merged.episode_groups, merged.episode_complete = groups, complete
    merged.state_keys = [sum((r.state_keys[t] for r in rollouts), []) for t in range(len(rollouts[0].decisions))]
    return merged


def _advantages(loader) -> tuple[dict, int]:
    """{sample tag: advantage} of the learned (weight 1) transitions, and the number of minibatches."""
    learned = {it["sample"]["tag"]: it["advantages"] for it in loader.dataset if it.get("weights", 1.0) == 1.0}
    return learned, len(loader)


class _GlooStrategy:
    root_device = torch.device("cpu")

    def reduce(self, tensor, reduce_op="sum"):
        torch.distributed.all_reduce(tensor)
        return tensor


def _ddp_rank(rank: int, port: str, out: str) -> None:
    from types import SimpleNamespace

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = tiny_module(algorithm="gigpo", minibatch_size=4)
        module._trainer = SimpleNamespace(world_size=2, global_rank=rank, strategy=_GlooStrategy())
        loader = module.build_train_data(group_rollout(rank))
        torch.save(_advantages(loader), f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_with_groups_on_two_ranks_gives_one_process_advantages(tmp_path):
    """Two gloo processes, each with its own envs' groups, against one process holding both ranks' groups."""
    port = str(21000 + os.getpid() % 20000)
    mp.spawn(_ddp_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    (adv0, batches0), (adv1, batches1) = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert batches0 == batches1, "ranks serve different numbers of minibatches: DDP would hang"
    assert adv0 and adv1 and len(adv0) != len(adv1)  # unequal used steps: padding evened the minibatches out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = tiny_module(algorithm="gigpo", minibatch_size=4)
    merged = _merge([group_rollout(0), group_rollout(1)])
    expected, _ = _advantages(one.build_train_data(merged))
    assert adv0 | adv1 == pytest.approx(expected)
    assert set(adv0 | adv1) == set(expected)


def test_every_group_knob_changes_the_advantages():
    """algorithm, gigpo_step_weight, gigpo_scale_by_std and group_eps each reach the advantages."""
    rollout = group_rollout()

    def advantages(**kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = tiny_module(minibatch_size=4, **kwargs)
        adv, _ = _advantages(module.build_train_data(rollout))
        return [adv[k] for k in sorted(adv)]

    base = advantages(algorithm="gigpo")
    changes = [{"algorithm": "grpo"}, {"algorithm": "dr_grpo"}, {"gigpo_step_weight": 0.3},
               {"gigpo_scale_by_std": False}, {"group_eps": 0.5}]  # fmt: skip
    for change in changes:
        change = {"algorithm": "gigpo"} | change
        assert advantages(**change) != pytest.approx(base), change
    assert advantages(algorithm="gigpo", gigpo_step_weight=0.0) == pytest.approx(advantages(algorithm="grpo"))
