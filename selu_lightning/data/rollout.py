"""Rollout collection and the RolloutDataModule that serves it to the PPO update.

Each training epoch, ``train_dataloader()`` plays ``steps_per_epoch`` env steps with the current policy
(one batched decision for all N envs per step, eval mode), computes GAE, normalises advantages (across
ranks), and returns a DataLoader of shuffled minibatches over the frozen buffer for ``ppo_epochs`` passes.
Validation/test batches are lists of held-out episode seeds that the LightningModule plays to the end.
"""

from __future__ import annotations

import pickle
import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Protocol, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from selu_lightning.errors import ConfigError
from selu_lightning.action_spaces.base import Decision
from selu_lightning.envs.base import env_class
from selu_lightning.envs.pool import EnvPool, EnvState, seed_stream
from selu_lightning.rl.advantages import gae, normalize_advantages

__all__ = ["Agent", "Rollout", "collect_rollout", "play_episodes", "RolloutDataModule", "collate_transitions"]


class Agent(Protocol):
    """What rollout needs of a policy (ActorPPO implements it)."""

    def decide(self, states: Sequence[EnvState], task: str, *, greedy: bool, rng: np.random.Generator) -> list[Decision]:
        """One action per state, in one batched call, with dropout off and no grad."""

    def state_values(self, states: Sequence[EnvState], task: str) -> list[float]:
        """V(s) for each state (to bootstrap truncated episodes)."""


@dataclass
class Rollout:
    """A frozen ``[T, N]`` buffer (time-major, one column per env) and what happened while filling it."""

    decisions: list[list[Decision]]
    rewards: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    logprobs: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    episodes: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    decide_seconds: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)
    env_restarts: int = 0

    @property
    def num_steps(self) -> int:
        return int(self.rewards.numel())

    def stats(self) -> dict[str, float]:
        """Sums and counts (so ranks can be added up before dividing)."""
        flat = [d for row in self.decisions for d in row]
        return {
            "episodes": float(len(self.episodes)),
            "episode_return_sum": float(sum(e["return"] for e in self.episodes)),
            "episode_length_sum": float(sum(e["length"] for e in self.episodes)),
            "success_sum": float(sum(e["success"] for e in self.episodes)),
            "parse_failures": float(sum(d.parse_failed for d in flat)),
            "steps": float(self.num_steps),
            "generated_tokens": float(sum(d.generated_tokens for d in flat)),
            "seconds": self.seconds,
            "decide_seconds": self.decide_seconds,
            "env_restarts": float(self.env_restarts),
        }


def collect_rollout(
    agent: Agent, pool: EnvPool, steps_per_env: int, rng: np.random.Generator, num_examples: int = 0
) -> Rollout:
    """Play ``steps_per_env`` steps in every env of the (already reset) pool."""
    T, N = steps_per_env, pool.num_envs
    rewards, values, next_values, logprobs = (torch.zeros(T, N) for _ in range(4))
    terminated, truncated = torch.zeros(T, N, dtype=torch.bool), torch.zeros(T, N, dtype=torch.bool)
    decisions: list[list[Decision]] = []
    episodes: list[dict[str, float]] = []
    examples: list[dict[str, Any]] = []
    finals: list[tuple[int, int, EnvState]] = []  # (step, env, state) of truncated episodes
    start, decide_seconds, restarts_before = time.perf_counter(), 0.0, pool.restarts
    for t in range(T):
        states = list(pool.states)
        tick = time.perf_counter()
        row = agent.decide(states, pool.task_description, greedy=False, rng=rng)
        decide_seconds += time.perf_counter() - tick
        outcomes = pool.step([d.env_action for d in row])
        decisions.append(row)
        for i, (d, o) in enumerate(zip(row, outcomes)):
            rewards[t, i], values[t, i], logprobs[t, i] = o.reward, d.value, d.logprob
            terminated[t, i], truncated[t, i] = o.terminated, o.truncated
            if o.episode is not None:
                episodes.append(o.episode)
        if len(examples) < num_examples:
            examples.append(
                {"image": states[0].image, "text": row[0].text, "action": row[0].env_action, "reward": outcomes[0].reward}
            )
        finals += [(t, i, o.final_state) for i, o in enumerate(outcomes) if o.final_state is not None]
    # One batched value pass for every truncated episode's final state and the states the rollout stops in:
    # V(s_{t+1}) for steps that did not end an episode is the next row's value; the last row bootstraps.
    values_of = agent.state_values([s for _, _, s in finals] + list(pool.states), pool.task_description)
    for (t, i, _), v in zip(finals, values_of):
        next_values[t, i] = v
    last = torch.tensor(values_of[len(finals) :])
    ended = terminated | truncated
    next_values[:-1] = torch.where(ended[:-1], next_values[:-1], values[1:])
    next_values[-1] = torch.where(ended[-1], next_values[-1], last)
    return Rollout(
        decisions, rewards, values, next_values, logprobs, terminated, truncated,
        episodes, time.perf_counter() - start, decide_seconds, examples, pool.restarts - restarts_before,
    )  # fmt: skip


def play_episodes(
    agent: Agent, pool: EnvPool, seeds: Sequence[int], *, greedy: bool, rng: np.random.Generator, max_steps: int = 1000
) -> list[dict[str, float]]:
    """Play one whole episode per seed, all envs together; returns each episode's return/length/success."""
    pool.reset_to(seeds)
    live = list(range(len(seeds)))
    results: dict[int, dict[str, float]] = {}
    for _ in range(max_steps):
        if not live:
            break
        decisions = agent.decide([pool.states[i] for i in live], pool.task_description, greedy=greedy, rng=rng)
        outcomes = pool.step([d.env_action for d in decisions], indices=live, auto_reset=False)
        for i, o in zip(list(live), outcomes):
            if o.episode is not None:
                results[i] = o.episode
                live.remove(i)
    if live:
        raise RuntimeError(f"{len(live)} evaluation episodes did not end within {max_steps} steps")
    return [results[i] for i in range(len(seeds))]


class PPOEpochSampler(Sampler[list[int]]):
    """Minibatches for ``ppo_epochs`` passes over the buffer, each pass a fresh seeded permutation.

    Length-aware: each pass is cut into groups of ``group`` minibatches; within a group transitions are
    sorted by token count before being split, so a minibatch holds sequences of similar length and pads
    little; the minibatch order is then shuffled. ``group=1`` is a plain shuffle.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, ppo_epochs: int, generator: torch.Generator, group: int = 8
    ) -> None:
        self.lengths, self.batch_size, self.ppo_epochs = list(lengths), batch_size, ppo_epochs
        self.generator, self.group = generator, max(int(group), 1)

    def _one_pass(self) -> list[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[k : k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[k] for k in shuffle]

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.ppo_epochs):
            yield from self._one_pass()

    def __len__(self) -> int:
        return self.ppo_epochs * -(-len(self.lengths) // self.batch_size)


def sample_tokens(sample: dict[str, Any]) -> int:
    """Tokens a stored decision costs to score again: its prompt once per continuation, plus continuations."""
    prompt = int(sample["prompt"]["input_ids"].numel())
    conts = sample.get("candidates") or [sample.get("response", torch.zeros(0))]
    return sum(prompt + int(c.numel()) for c in conts)


def collate_transitions(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": [it["sample"] for it in items]}
    for key in ("old_logprobs", "old_values", "advantages", "returns"):
        out[key] = torch.tensor([it[key] for it in items], dtype=torch.float32)
    return out


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant, negative worse."""
    var = returns.var()
    return float("nan") if var == 0 else float(1 - (returns - values).var() / var)


class RolloutDataModule(L.LightningDataModule):
    def __init__(
        self,
        env: str = "numberline",
        env_kwargs: dict[str, Any] | None = None,
        eval_env_kwargs: dict[str, Any] | None = None,
        env_workers: Literal["inprocess", "subprocess"] = "inprocess",
        env_step_timeout: float = 60.0,
        num_envs: int = 8,
        steps_per_epoch: int = 256,
        ppo_epochs: int = 4,
        minibatch_size: int = 8,
        gamma: float = 0.9,
        gae_lambda: float = 0.95,
        normalize_advantages: bool = True,
        length_grouping: int = 8,
        seed: int = 0,
        val_episodes: int = 100,
        test_episodes: int = 200,
        eval_num_envs: int | None = None,
        eval_greedy: bool = True,
        num_examples: int = 4,
    ) -> None:
        """
        Args:
            env: A registered env name (``numberline``, ``ezpoints``, ``points24``, ``blackjack``, ...).
            env_kwargs: Keyword arguments for the env class (e.g. ``{text_state: false}``).
            eval_env_kwargs: Keyword arguments for the evaluation envs, on top of ``env_kwargs`` (e.g.
                ``{split: eval}`` to evaluate ALFWorld on its held-out games).
            env_workers: ``inprocess``, or ``subprocess``: one worker process per env, stepped in parallel and
                restarted (episode dropped, counted in ``rollout/env_restarts``) if it dies or hangs.
            env_step_timeout: Seconds a subprocess env may take for one step or reset before it is restarted.
            num_envs: Envs per rank, stepped together with one batched decision per step.
            steps_per_epoch: Env steps per rank per epoch (one PPO update); a multiple of ``num_envs``.
            ppo_epochs: Passes over each rollout buffer.
            minibatch_size: Transitions per training step (per rank); use ``trainer.accumulate_grad_batches``
                to make larger effective batches.
            gamma: Discount factor.
            gae_lambda: GAE's lambda.
            normalize_advantages: Zero-mean, unit-std advantages over the whole buffer (of all ranks).
            length_grouping: Sort transitions by length within groups of this many minibatches, so each
                minibatch pads little (1: plain shuffle).
            seed: Seeds every env, sampler and the minibatch order together with the rank and env index.
            val_episodes: Held-out episodes per validation run (split over ranks).
            test_episodes: Held-out episodes for ``selu test``.
            eval_num_envs: Envs played together in evaluation (default: ``num_envs``).
            eval_greedy: Greedy actions in evaluation; false samples as in training.
            num_examples: Steps of env 0 kept per epoch (frame + generated text) for TensorBoard.
        """
        super().__init__()
        env_class(env)  # unknown names fail here, before any model loads
        if num_envs < 1 or steps_per_epoch < 1:
            raise ConfigError(f"num_envs ({num_envs}) and steps_per_epoch ({steps_per_epoch}) must be >= 1")
        if steps_per_epoch % num_envs:
            raise ConfigError(
                f"data.steps_per_epoch ({steps_per_epoch}) must be divisible by data.num_envs ({num_envs}) "
                "so every env plays the same number of steps"
            )
        if ppo_epochs < 1 or minibatch_size < 1:
            raise ConfigError(f"ppo_epochs ({ppo_epochs}) and minibatch_size ({minibatch_size}) must be >= 1")
        self.env = env
        self.env_kwargs = dict(env_kwargs or {})
        self.eval_env_kwargs = self.env_kwargs | dict(eval_env_kwargs or {})
        self.env_workers = env_workers
        self.env_step_timeout = env_step_timeout
        self.num_envs = num_envs
        self.steps_per_epoch = steps_per_epoch
        self.ppo_epochs = ppo_epochs
        self.minibatch_size = minibatch_size
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.normalize_advantages = normalize_advantages
        self.length_grouping = length_grouping
        self.seed = seed
        self.val_episodes = val_episodes
        self.test_episodes = test_episodes
        self.eval_num_envs = eval_num_envs or num_envs
        self.eval_greedy = eval_greedy
        self.num_examples = num_examples
        self.pool: EnvPool | None = None
        self.eval_pool: EnvPool | None = None
        self.rng: np.random.Generator | None = None
        self.last_rollout: Rollout | None = None
        self.last_rollout_stats: dict[str, float] = {}
        self._loader: tuple[int, DataLoader] | None = None

    @property
    def env_cls(self) -> type:
        return env_class(self.env)

    @property
    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def _world(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _train_pool(self) -> EnvPool:
        """Built on first use (after every component's setup checks), reset once, then stepped forever."""
        if self.pool is None:
            self.pool = EnvPool(
                self.env, self.num_envs, seed=self.seed, rank=self._rank, env_kwargs=self.env_kwargs,
                workers=self.env_workers, step_timeout=self.env_step_timeout,
            )  # fmt: skip
            self.pool.reset()
            self.rng = np.random.default_rng(seed_stream(self.seed, "sampler", self._rank))
        return self.pool

    def eval_envs(self) -> EnvPool:
        if self.eval_pool is None:
            self.eval_pool = EnvPool(
                self.env, self.eval_num_envs, seed=self.seed, rank=self._rank, stream="val",
                env_kwargs=self.eval_env_kwargs, workers=self.env_workers, step_timeout=self.env_step_timeout,
            )  # fmt: skip
        return self.eval_pool

    # ------------------------------------------------------------------ training
    def train_dataloader(self) -> DataLoader:
        """This epoch's rollout as minibatches. Lightning may ask twice before an update (on resume it loads
        at run start and again at the epoch's start): a new rollout is collected only once the policy has
        changed, i.e. once the optimizer has stepped since the last one."""
        version = self.trainer.global_step
        if self._loader is not None and self._loader[0] == version:
            return self._loader[1]
        loader = self._collect_and_serve()
        self._loader = (version, loader)
        return loader

    def _collect_and_serve(self) -> DataLoader:
        agent: Agent = self.trainer.lightning_module
        pool = self._train_pool()
        rollout = collect_rollout(
            agent, pool, self.steps_per_epoch // self.num_envs, self.rng, num_examples=self.num_examples
        )
        advantages, returns = gae(
            rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.truncated,
            self.gamma, self.gae_lambda,
        )  # fmt: skip
        if self.normalize_advantages:
            advantages = normalize_advantages(advantages)
        self.last_rollout = rollout
        self.last_rollout_stats = rollout.stats() | {
            "explained_variance": explained_variance(rollout.values.flatten(), returns.flatten())
        }
        items = [
            {
                "sample": d.sample,
                "old_logprobs": float(rollout.logprobs[t, i]),
                "old_values": float(rollout.values[t, i]),
                "advantages": float(advantages[t, i]),
                "returns": float(returns[t, i]),
            }
            for t, row in enumerate(rollout.decisions)
            for i, d in enumerate(row)
        ]
        # Minibatch order comes from the rollout generator (checkpointed), not from the epoch number, which
        # Lightning reports differently while it restores a run.
        generator = torch.Generator().manual_seed(int(self.rng.integers(2**63 - 1)))
        lengths = [sample_tokens(it["sample"]) for it in items]
        sampler = PPOEpochSampler(lengths, self.minibatch_size, self.ppo_epochs, generator, self.length_grouping)
        return DataLoader(items, batch_sampler=sampler, collate_fn=collate_transitions)

    # ------------------------------------------------------------------ evaluation
    def eval_seeds(self, stage: str) -> list[list[int]]:
        """This rank's held-out seeds, in batches of ``eval_num_envs``; every rank gets as many batches."""
        total = self.test_episodes if stage == "test" else self.val_episodes
        per_rank = -(-total // self._world)
        seeds = seed_stream(self.seed, "test" if stage == "test" else "val").generate_state(per_rank * self._world)
        mine = [int(s) for s in seeds[self._rank :: self._world]]
        return [mine[i : i + self.eval_num_envs] for i in range(0, len(mine), self.eval_num_envs)]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_seeds("val"), batch_size=None, collate_fn=lambda seeds: seeds)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_seeds("test"), batch_size=None, collate_fn=lambda seeds: seeds)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Every rank's rollout state (envs mid-episode, samplers, RNGs), gathered so one file resumes all ranks."""
        mine = pickle.dumps(
            {
                "pool": self.pool.snapshot() if self.pool is not None else None,
                "rng": self.rng.bit_generator.state if self.rng is not None else None,
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
            }
        )
        ranks = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        return {"rank_states": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ranks = state.get("rank_states", [])
        if len(ranks) != self._world:
            rank_zero_warn(
                f"checkpoint holds rollout state for {len(ranks)} rank(s), this run has {self._world}: "
                "envs restart from fresh episodes (weights, optimizer and schedule still resume)"
            )
            return
        mine = pickle.loads(ranks[self._rank])
        torch.set_rng_state(mine["torch_rng"])
        np.random.set_state(mine["numpy_rng"])
        random.setstate(mine["python_rng"])
        if mine["pool"] is not None:
            self.pool = EnvPool.restore(mine["pool"])
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = mine["rng"]

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def teardown(self, stage: str) -> None:
        for pool in (self.pool, self.eval_pool):
            if pool is not None:
                pool.close()
        self.pool = self.eval_pool = None
