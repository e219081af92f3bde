"""The env runner: rollouts with the current policy each epoch, held-out evaluation, env state in checkpoints.

``RolloutDataModule`` owns the simulators and nothing about learning. Each training epoch its
``train_dataloader()`` plays ``steps_per_epoch`` env steps with the LightningModule as the agent (one batched
decision for all N envs per step, eval mode) and hands the frozen :class:`Rollout` to the module's
``build_train_data(rollout)``: the method decides what a rollout teaches it (GAE + PPO minibatches for
ActorPPO; filtered SFT examples, critic questions or group advantages for later methods). Validation/test
batches are :class:`EvalEpisodes`: held-out seeds plus the envs to play them on; the module calls
``batch.play(self)``. Data flows one way: the runner calls the agent, never the reverse.

Group rollouts (``data.group_size`` G > 1, for GRPO / Dr.GRPO / GiGPO): the N envs of a rank form N / G groups.
Every rollout starts fresh episodes: the G envs of a group reset from one seed (drawn from the runner's
checkpointed generator), so they start in one state and differ only in sampling. The rollout still plays exactly
``steps_per_epoch / N`` steps in every env (every rank collects the same number of steps, and serves the same
number of minibatches). An env whose episode ends starts its group's next episode, from the group's next seed: the
k-th episode of each env of a group shares one seed, and those G episodes form one *episode group*. Episode groups
whose G episodes all ended inside the rollout are complete; the steps of the others (episodes cut by the
rollout's end, or lost to a worker restart) teach nothing and are not carried into the next rollout, which
starts fresh again. Give each env room for at least one whole episode (``steps_per_epoch / num_envs`` >= the env's
longest episode); the module logs the fraction of steps that were used.
"""

from __future__ import annotations

import pickle
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Literal, Protocol, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import numpy as np
import torch
from torch.utils.data import DataLoader

from selu_lightning.errors import ConfigError
from selu_lightning.action_spaces.base import Decision
from selu_lightning.data.trajectories import EpisodeRecorder, Trajectory
from selu_lightning.envs.base import env_class
from selu_lightning.envs.pool import EnvCrashed, EnvPool, EnvState, seed_stream

__all__ = ["Agent", "Rollout", "EvalEpisodes", "collect_rollout", "play_episodes", "RolloutDataModule"]


class Agent(Protocol):
    """What the runner needs of a LightningModule (ActorPPO implements it)."""

    def decide(self, states: Sequence[EnvState], task: str, *, greedy: bool, rng: np.random.Generator) -> list[Decision]:
        """One action per state, in one batched call, with dropout off and no grad."""

    def state_values(self, states: Sequence[EnvState], task: str) -> list[float]:
        """V(s) for each state (to bootstrap truncated episodes); zeros for a policy without a value head."""

    def build_train_data(self, rollout: "Rollout") -> Any:
        """This epoch's training batches (a DataLoader or any iterable) from a frozen rollout."""


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
    trajectories: list[Trajectory] = field(default_factory=list)
    """Episodes that finished in this rollout (whole, including steps from earlier rollouts)."""
    shuffle_seed: int = 0
    """Seeds the method's minibatch order (drawn from the runner's checkpointed generator)."""
    group_size: int = 1
    """G of a group rollout (see the module docstring); 1: a plain rollout whose envs continue across rollouts."""
    episode_ids: torch.Tensor | None = None
    """Group rollouts: ``[T, N]`` the rollout-local id (0, 1, ...) of the episode each step belongs to."""
    episode_groups: list[int] = field(default_factory=list)
    """Group rollouts: per episode id, the id of its episode group (G episodes from one seed)."""
    episode_complete: list[bool] = field(default_factory=list)
    """Group rollouts: per episode id, whether it ended inside this rollout (not cut, not lost to a restart)."""
    state_keys: list[list[Hashable]] | None = None
    """Group rollouts: ``[T][N]`` the env's state key of the state each step acted from (GiGPO's anchors)."""

    def complete_groups(self) -> set[int]:
        """Episode groups whose G episodes all ended inside this rollout."""
        done: dict[int, int] = {}
        for g, complete in zip(self.episode_groups, self.episode_complete):
            done[g] = done.get(g, 0) + int(complete)
        return {g for g, n in done.items() if n == self.group_size}

    @property
    def num_steps(self) -> int:
        return int(self.rewards.numel())

    def stats(self) -> dict[str, float]:
        """Sums and counts (so ranks can be added up before dividing). Always the same keys."""
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


#: Called after every rollout step with (steps done, steps total, episodes finished, successes).
ProgressFn = Callable[[int, int, int, int], None]


class GroupSchedule:
    """Which seed each env of a group rollout plays next, and the episode / episode-group ids of what it plays.

    Env i belongs to group i // G; its k-th episode of the rollout starts from its group's k-th seed, drawn the
    first time any env of the group needs it."""

    def __init__(self, num_envs: int, group_size: int, rng: np.random.Generator) -> None:
        if group_size < 1 or num_envs % group_size:
            raise ValueError(f"{num_envs} envs do not split into groups of {group_size}")
        self.group_size, self.rng = group_size, rng
        self.seeds: list[list[int]] = [[] for _ in range(num_envs // group_size)]
        self.rounds = [0] * num_envs
        self.episode = [-1] * num_envs
        self.seed_of_env = [0] * num_envs
        self.episode_groups: list[int] = []
        self.episode_complete: list[bool] = []
        self._group_ids: dict[tuple[int, int], int] = {}

    def start(self, i: int) -> int:
        """Begin env i's next episode; returns the seed to reset it with."""
        k, r = i // self.group_size, self.rounds[i]
        while len(self.seeds[k]) <= r:
            self.seeds[k].append(int(self.rng.integers(2**32)))
        self.rounds[i] += 1
        self.episode[i] = len(self.episode_groups)
        self.episode_groups.append(self._group_ids.setdefault((k, r), len(self._group_ids)))
        self.episode_complete.append(False)
        self.seed_of_env[i] = self.seeds[k][r]
        return self.seeds[k][r]

    def end(self, i: int, complete: bool) -> int:
        """Env i's episode ended (``complete``: not lost to a restart); returns the seed of its next one."""
        self.episode_complete[self.episode[i]] = complete
        return self.start(i)


def collect_rollout(
    agent: Agent,
    pool: EnvPool,
    steps_per_env: int,
    rng: np.random.Generator,
    num_examples: int = 0,
    recorder: EpisodeRecorder | None = None,
    progress: ProgressFn | None = None,
    group_size: int = 1,
) -> Rollout:
    """Play ``steps_per_env`` steps in every env of the (already reset) pool.

    With a ``recorder``, every step is recorded into its env's episode, and episodes that end are returned
    whole in ``Rollout.trajectories`` (ground truth kept apart). ``group_size`` > 1: a group rollout (see the
    module docstring): every env restarts from its group's seed, episodes in flight are abandoned."""
    T, N = steps_per_env, pool.num_envs
    groups = GroupSchedule(N, group_size, rng) if group_size > 1 else None
    episode_ids = torch.zeros(T, N, dtype=torch.long) if groups is not None else None
    keys: list[list[Hashable]] | None = [] if groups is not None else None
    if groups is not None:
        if recorder is not None:
            for i in range(N):
                recorder.drop(i)
        pool.reset_to([groups.start(i) for i in range(N)], indices=range(N))
    task = pool.task_description
    rewards, values, next_values, logprobs = (torch.zeros(T, N) for _ in range(4))
    terminated, truncated = torch.zeros(T, N, dtype=torch.bool), torch.zeros(T, N, dtype=torch.bool)
    decisions: list[list[Decision]] = []
    episodes: list[dict[str, float]] = []
    examples: list[dict[str, Any]] = []
    trajectories: list[Trajectory] = []
    boots: list[tuple[int, int, EnvState]] = []  # (step, env, final state) of truncated episodes
    start, decide_seconds, restarts_before = time.perf_counter(), 0.0, pool.restarts
    if progress is not None:
        progress(0, T * N, 0, 0)
    for t in range(T):
        states = list(pool.states)
        tick = time.perf_counter()
        row = agent.decide(states, task, greedy=False, rng=rng)
        decide_seconds += time.perf_counter() - tick
        outcomes = pool.step([d.env_action for d in row], auto_reset=groups is None)
        decisions.append(row)
        seeds = list(groups.seed_of_env) if groups is not None else [None] * N
        if groups is not None:
            episode_ids[t] = torch.tensor(groups.episode)
            keys.append([s.key for s in states])
            ended = [i for i, o in enumerate(outcomes) if o.episode is not None or o.restarted]
            restart = [(i, groups.end(i, not outcomes[i].restarted)) for i in ended]
            if restart:
                pool.reset_to([seed for _, seed in restart], indices=[i for i, _ in restart])
        for i, (s, d, o) in enumerate(zip(states, row, outcomes)):
            rewards[t, i], values[t, i], logprobs[t, i] = o.reward, d.value, d.logprob
            terminated[t, i], truncated[t, i] = o.terminated, o.truncated
            if o.episode is not None:
                episodes.append(o.episode)
            if o.truncated and not o.terminated:
                boots.append((t, i, o.final_state))
            if recorder is None:
                continue
            if o.restarted:  # the worker died: the episode is lost
                recorder.drop(i)
                continue
            recorder.step(i, s.image, s.text, s.goal, d.prompt, d.text, d.env_action, o.reward, seed=seeds[i])
            if o.episode is not None:
                final = o.final_state
                trajectories.append(
                    recorder.finish(
                        i, final.image, final.text, (t, i), truncated=o.truncated and not o.terminated,
                        ground_truth={"success": bool(o.episode["success"])},
                    )
                )  # fmt: skip
        if len(examples) < num_examples:
            examples.append(
                {"image": states[0].image, "text": row[0].text, "action": row[0].env_action, "reward": outcomes[0].reward}
            )
        if progress is not None:
            progress((t + 1) * N, T * N, len(episodes), int(sum(e["success"] for e in episodes)))
    # One batched value pass for every truncated episode's final state and the states the rollout stops in:
    # V(s_{t+1}) for steps that did not end an episode is the next row's value; the last row bootstraps.
    values_of = agent.state_values([s for _, _, s in boots] + list(pool.states), task)
    for (t, i, _), v in zip(boots, values_of):
        next_values[t, i] = v
    last = torch.tensor(values_of[len(boots) :], dtype=torch.float32)
    ended = terminated | truncated
    next_values[:-1] = torch.where(ended[:-1], next_values[:-1], values[1:])
    next_values[-1] = torch.where(ended[-1], next_values[-1], last)
    rollout = Rollout(
        decisions, rewards, values, next_values, logprobs, terminated, truncated,
        episodes, time.perf_counter() - start, decide_seconds, examples, pool.restarts - restarts_before,
        trajectories,
    )  # fmt: skip
    if groups is not None:
        rollout.group_size, rollout.episode_ids, rollout.state_keys = group_size, episode_ids, keys
        rollout.episode_groups, rollout.episode_complete = groups.episode_groups, groups.episode_complete
    return rollout


def play_episodes(
    agent: Agent, pool: EnvPool, seeds: Sequence[int], *, greedy: bool, rng: np.random.Generator, max_steps: int = 1000,
    recorder: EpisodeRecorder | None = None, should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Play one whole episode per seed, all envs together; returns each episode's return/length/success and
    ``parse_failures`` (its steps whose text no action could be read from). With a ``recorder``, each record
    also holds the episode as a :class:`Trajectory` under ``"trajectory"`` (ground truth apart).
    ``should_stop`` is asked after every step (SIGTERM: evaluation of 7B policies outlasts a grace period)."""
    pool.reset_to(seeds)
    live = list(range(len(seeds)))
    results: dict[int, dict[str, Any]] = {}
    failures = [0] * len(seeds)
    for t in range(max_steps):
        if not live:
            break
        states = [pool.states[i] for i in live]
        decisions = agent.decide(states, pool.task_description, greedy=greedy, rng=rng)
        outcomes = pool.step([d.env_action for d in decisions], indices=live, auto_reset=False)
        for i, s, d, o in zip(list(live), states, decisions, outcomes):
            failures[i] += int(d.parse_failed)
            if recorder is not None:
                recorder.step(i, s.image, s.text, s.goal, d.prompt, d.text, d.env_action, o.reward, seed=int(seeds[i]))
            if o.episode is not None:
                results[i] = dict(o.episode, parse_failures=float(failures[i]))
                if recorder is not None:
                    final = o.final_state
                    results[i]["trajectory"] = recorder.finish(
                        i, final.image, final.text, (t, i), truncated=o.truncated and not o.terminated,
                        ground_truth={"success": bool(o.episode["success"])},
                    )  # fmt: skip
                live.remove(i)
        if should_stop is not None and should_stop():
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException()
    if live:
        raise RuntimeError(f"{len(live)} evaluation episodes did not end within {max_steps} steps")
    return [results[i] for i in range(len(seeds))]


class EvalEpisodes:
    """One validation/test batch: held-out seeds and the envs to play them on (a plain object, so Lightning
    neither copies nor moves it)."""

    def __init__(
        self, seeds: list[int], pool_fn: Callable[[], EnvPool], greedy: bool,
        store: Callable[[list[Trajectory]], None] | None = None, should_stop: Callable[[], bool] | None = None,
    ) -> None:  # fmt: skip
        self.seeds, self._pool_fn, self.greedy, self._store = seeds, pool_fn, greedy, store
        self._should_stop = should_stop

    def __len__(self) -> int:
        return len(self.seeds)

    def play(self, agent: Agent) -> list[dict[str, Any]]:
        """Each seed's episode played to the end by ``agent`` (greedy unless the runner says otherwise); with a
        ``store`` (``selu predict`` with ``data.record_to``), the episodes are appended to it, atomically."""
        rng = np.random.default_rng(self.seeds)
        recorder = EpisodeRecorder(len(self.seeds), f"predict-{self.seeds[0]}") if self._store is not None else None
        records = play_episodes(agent, self._pool_fn(), self.seeds, greedy=self.greedy, rng=rng, recorder=recorder,
                                should_stop=self._should_stop)  # fmt: skip
        if self._store is not None:
            self._store([r.pop("trajectory") for r in records])
        return records


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
        group_size: int = 1,
        seed: int = 0,
        val_episodes: int = 100,
        test_episodes: int = 200,
        eval_num_envs: int | None = None,
        eval_greedy: bool = True,
        num_examples: int = 4,
        keep_frames: bool = True,
        record_to: str | None = None,
    ) -> None:
        """
        Args:
            env: A registered env name (``numberline``, ``ezpoints``, ``points24``, ``blackjack``, ``alfworld``,
                ``babyai``, ``virtualhome``, ``ai2thor``) or ``package.module:EnvClass`` for your own env.
            env_kwargs: Keyword arguments for the env class (e.g. ``{text_state: false}``).
            eval_env_kwargs: Keyword arguments for the evaluation envs, on top of ``env_kwargs`` (e.g.
                ``{split: eval}`` to evaluate ALFWorld on its held-out games).
            env_workers: ``inprocess``, or ``subprocess``: one worker process per env, stepped in parallel and
                restarted (episode dropped, counted in ``rollout/env_restarts``) if it dies or hangs.
            env_step_timeout: Seconds a subprocess env may take for one step or reset before it is restarted.
            num_envs: Envs per rank, stepped together with one batched decision per step.
            steps_per_epoch: Env steps per rank per epoch (one rollout, one update); a multiple of ``num_envs``.
            group_size: Envs per group (G) for the group algorithms (GRPO, Dr.GRPO, GiGPO; e.g. 8): each rollout
                starts fresh episodes, the G envs of a group from one seed, and ``num_envs / group_size`` groups
                play on each rank; a group's k-th episodes form one episode group. 1: envs play on across
                rollouts (PPO). Must divide ``num_envs``.
            seed: Seeds every env, sampler and the minibatch order together with the rank and env index.
            val_episodes: Held-out episodes per validation run (split over ranks).
            test_episodes: Held-out episodes for ``selu test`` and ``selu predict``.
            eval_num_envs: Envs played together in evaluation (default: ``num_envs``).
            eval_greedy: Greedy actions in evaluation; false samples as in training.
            num_examples: Steps of env 0 kept per epoch (frame + generated text) for TensorBoard.
            keep_frames: Keep every step's frame in the recorded trajectories (reward sources, stores); false
                keeps only each episode's final frame.
            record_to: A folder: every training episode that finishes is appended to a TrajectoryStore there
                (``<record_to>/rank<r>``), once per epoch, atomically (for SFT, critic data, analysis); under
                ``selu predict``, every held-out episode the checkpoint plays, with its responses.
        """
        super().__init__()
        env_class(env)  # unknown names fail here, before any model loads
        if num_envs < 1 or steps_per_epoch < 1:
            raise ConfigError(f"data.num_envs ({num_envs}) and data.steps_per_epoch ({steps_per_epoch}) must be >= 1")
        if steps_per_epoch % num_envs:
            raise ConfigError(
                f"data.steps_per_epoch ({steps_per_epoch}) must be divisible by data.num_envs ({num_envs}) "
                "so every env plays the same number of steps"
            )
        if group_size < 1 or num_envs % group_size:
            raise ConfigError(
                f"data.group_size ({group_size}) must be >= 1 and divide data.num_envs ({num_envs}): each rank "
                "plays whole groups"
            )
        self.group_size = group_size
        self.env = env
        self.env_kwargs = dict(env_kwargs or {})
        self.eval_env_kwargs = self.env_kwargs | dict(eval_env_kwargs or {})
        self.env_workers = env_workers
        self.env_step_timeout = env_step_timeout
        self.num_envs = num_envs
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.val_episodes = val_episodes
        self.test_episodes = test_episodes
        self.eval_num_envs = eval_num_envs or num_envs
        self.eval_greedy = eval_greedy
        self.num_examples = num_examples
        self.keep_frames = keep_frames
        self.record_to = record_to
        self._store: Any = None
        self.pool: EnvPool | None = None
        self.eval_pool: EnvPool | None = None
        self.rng: np.random.Generator | None = None
        self.recorder: EpisodeRecorder | None = None
        self.last_rollout: Rollout | None = None
        self._loader: tuple[int, Any] | None = None

    @property
    def env_cls(self) -> type:
        return env_class(self.env)

    @property
    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def _world(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def setup(self, stage: str) -> None:
        """Let the module check it can act in this env (e.g. an action space that needs legal actions)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        check = getattr(module, "check_env", None)
        if check is not None:
            check(self.env_cls)
        check_groups = getattr(module, "check_group_size", None)
        if check_groups is not None:
            check_groups(self.group_size)

    def _train_pool(self) -> EnvPool:
        """Built on first use (after every component's setup checks), reset once, then stepped forever."""
        if self.pool is None:
            self.pool = EnvPool(
                self.env, self.num_envs, seed=self.seed, rank=self._rank, env_kwargs=self.env_kwargs,
                workers=self.env_workers, step_timeout=self.env_step_timeout,
            )  # fmt: skip
            self.pool.reset()
            self.rng = np.random.default_rng(seed_stream(self.seed, "sampler", self._rank))
        if self.recorder is None:
            self.recorder = EpisodeRecorder(self.num_envs, f"train-{self._rank}", keep_frames=self.keep_frames)
        return self.pool

    def eval_envs(self) -> EnvPool:
        if self.eval_pool is None:
            self.eval_pool = EnvPool(
                self.env, self.eval_num_envs, seed=self.seed, rank=self._rank, stream="val",
                env_kwargs=self.eval_env_kwargs, workers=self.env_workers, step_timeout=self.env_step_timeout,
            )  # fmt: skip
        return self.eval_pool

    # ------------------------------------------------------------------ training
    def train_dataloader(self) -> Any:
        """This epoch's rollout, turned into batches by the module. Lightning may ask twice before an update
        (on resume it loads at run start and again at the epoch's start): a new rollout is collected only
        once the policy has changed, i.e. once the optimizer has stepped since the last one."""
        version = self.trainer.global_step
        if self._loader is not None and self._loader[0] == version:
            return self._loader[1]
        module = self.trainer.lightning_module
        rollout = self.collect(module)
        loader = module.build_train_data(rollout)
        self._loader = (version, loader)
        return loader

    def collect(self, agent: Agent) -> Rollout:
        """One rollout of ``steps_per_epoch`` steps with ``agent``, continuing the envs where they are."""
        pool = self._train_pool()
        progress = _rollout_progress(self.trainer)
        rollout = collect_rollout(
            agent, pool, self.steps_per_epoch // self.num_envs, self.rng, num_examples=self.num_examples,
            recorder=self.recorder, progress=progress, group_size=self.group_size,
        )  # fmt: skip
        # Minibatch order comes from the rollout generator (checkpointed), not from the epoch number, which
        # Lightning reports differently while it restores a run.
        rollout.shuffle_seed = int(self.rng.integers(2**63 - 1))
        self.last_rollout = rollout
        if self.record_to is not None and rollout.trajectories:
            self._trajectory_store().append(rollout.trajectories)
        return rollout

    def _append_predicted(self, trajectories: list[Trajectory]) -> None:
        self._trajectory_store().append(trajectories)

    def _trajectory_store(self) -> Any:
        if self._store is None:
            import os

            from selu_lightning.data.store import TrajectoryStore

            module = self.trainer.lightning_module if self.trainer is not None else None
            policy = getattr(getattr(module, "policy", None), "config", None)
            self._store = TrajectoryStore(
                os.path.join(self.record_to, f"rank{self._rank}"), env=self.env, env_kwargs=self.env_kwargs,
                policy=getattr(policy, "model_name_or_path", type(module).__name__),
            )  # fmt: skip
        return self._store

    # ------------------------------------------------------------------ evaluation
    def eval_seeds(self, stage: str) -> list[list[int]]:
        """This rank's held-out seeds, in batches of ``eval_num_envs``; every rank gets as many batches."""
        total = self.test_episodes if stage in ("test", "predict") else self.val_episodes
        per_rank = -(-total // self._world)
        stream = "val" if stage == "val" else "test"
        seeds = seed_stream(self.seed, stream).generate_state(per_rank * self._world)
        mine = [int(s) for s in seeds[self._rank :: self._world]]
        return [mine[i : i + self.eval_num_envs] for i in range(0, len(mine), self.eval_num_envs)]

    def _eval_loader(self, stage: str) -> DataLoader:
        # selu predict with data.record_to stores what the checkpoint played (a demonstration or critic store).
        store = self._append_predicted if stage == "predict" and self.record_to is not None else None
        trainer = self.trainer

        def sigterm() -> bool:
            return bool(getattr(trainer, "received_sigterm", False))

        batches = [
            EvalEpisodes(seeds, self.eval_envs, self.eval_greedy, store, sigterm) for seeds in self.eval_seeds(stage)
        ]
        return DataLoader(batches, batch_size=None, collate_fn=_identity)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Every rank's rollout state (envs mid-episode, episodes in flight, samplers, RNGs), gathered so one
        file resumes all ranks. Every rank calls this at the same point (the checkpoint callback)."""
        try:
            pool = self.pool.snapshot() if self.pool is not None else None
        except EnvCrashed:  # a dead worker: weights still resume, the envs restart fresh
            pool = None
        mine = pickle.dumps(
            {
                "pool": pool,
                "recorder": self.recorder.state_dict() if self.recorder is not None else None,
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
        return {"rank_states": ranks, "env": self.env, "env_kwargs": self.env_kwargs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state.get("env"), state.get("env_kwargs"))
        if saved != (self.env, self.env_kwargs) and saved[0] is not None:
            raise ConfigError(
                f"checkpoint's rollouts ran env {saved[0]!r} with env_kwargs {saved[1]}, this run has {self.env!r} "
                f"with {self.env_kwargs}: it belongs to another experiment"
            )
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
        if mine.get("recorder") is not None:
            self.recorder = EpisodeRecorder(self.num_envs, "", keep_frames=self.keep_frames)
            self.recorder.load_state_dict(mine["recorder"])

    def teardown(self, stage: str) -> None:
        for pool in (self.pool, self.eval_pool):
            if pool is not None:
                pool.close()
        self.pool = self.eval_pool = None


def _identity(batch: Any) -> Any:
    return batch


def _rollout_progress(trainer: Any) -> ProgressFn | None:
    """After each rollout step: stop at once on SIGTERM (a scheduler's grace period is shorter than a 7B
    rollout; Lightning itself checks only between training batches), then the progress bar's rollout hook."""
    if trainer is None:
        return None
    bar = getattr(getattr(trainer, "progress_bar_callback", None), "rollout_progress", None)

    def progress(steps: int, total: int, episodes: int, successes: int) -> None:
        if getattr(trainer, "received_sigterm", False):
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException()
        if bar is not None:
            bar(steps, total, episodes, successes)

    return progress
