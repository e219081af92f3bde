"""``selu-round -c configs/selu/round_virtualhome.yaml``: SELU's whole loop, one command, every stage resumable.

Per round r (``rounds``), for one ``variant`` (SELU, an ablation or a baseline):

1. collect   the actor (round r-1's; round 1: the base actor) plays ``episodes`` training episodes, sampling;
2. critic    the critic (round r-1's; round 1: the base critic) is fine-tuned on data it labels itself from them
             (``selu``, ``no_self_ask``, ``no_relabel``) or on ground-truth labels (``oracle``, the upper
             bound); ``self_consistency`` trains nothing and votes; ``unfiltered`` has no critic;
3. label     the critic judges the episodes: those it accepts, and hindsight-relabeled ones under their new
             instruction, become the actor's SFT data (``oracle``: the truly successful ones; ``unfiltered``: all);
4. actor     ActorSFT from the round's actor on that data (the paper's actor improvement);
5. evaluate  the critic on held-out episodes against their ground truth, the actor on held-out episodes.

Before round 1, once per output folder and shared by every variant: the optional ``prior`` (scripted-expert
episodes in scenes SELU never runs in; the base actor by SFT on them, the base critic by the scene-question
prior of :mod:`selu_lightning.critic.prior`), the critic's held-out episodes (the base actor, sampling, on
seeds of their own), and the base actor's and critic's scores.

Each stage runs the project's own CLI (``selu fit`` / ``test`` / ``predict``) in this process, logs to TensorBoard
under ``<out>`` (``tensorboard --logdir <out>``: one run per stage, plus ``<variant>/summary`` with every
round's scores against the round), and writes ``stage.json`` when it ends. A rerun skips finished stages and
restarts an unfinished one from its beginning; ``--rounds`` can grow between runs. The settings the shared
stages depend on cannot change on one output folder (``<out>/settings.json``), nor a run's own settings on its
folder (``<out>/<name>/settings.json``): both refused in one line.

Several GPUs or nodes: launch one ``selu-round`` per GPU with torchrun (``torchrun --nproc_per_node=8
$(which selu-round) -c ...``) and give the stage configs ``trainer.devices`` to match. Every process runs every
Lightning stage as one DDP rank; what is not a Lightning stage (the prior's scripted episodes, the critic's
labeling, the bookkeeping) runs on rank 0 while the others wait, and its result is shared. Without torchrun a
stage whose trainer would start more than one process is refused: Lightning's launcher would start copies of
``selu-round``, not of the stage.
"""

from __future__ import annotations

import functools
import glob
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from selu_lightning.errors import ConfigError

__all__ = ["RoundConfig", "PriorConfig", "VARIANTS", "run_rounds", "parse_args", "main"]

VARIANTS = ("selu", "no_self_ask", "no_relabel", "self_consistency", "oracle", "unfiltered")
Variant = Literal["selu", "no_self_ask", "no_relabel", "self_consistency", "oracle", "unfiltered"]


@dataclass
class PriorConfig:
    """The base models' stand-in for pretraining (see :mod:`selu_lightning.critic.prior`)."""

    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env settings of the critic prior's scenes, on top of ``env_kwargs`` (e.g. ``{scenes: [apartment_3]}``):
    scenes SELU's rounds never run or evaluate in."""
    actor_env_kwargs: dict[str, Any] | None = None
    """Env settings of the base actor's demonstrations, on top of ``env_kwargs`` (null: the critic prior's).
    Their seeds (stream ``demo``) are never SELU's."""
    episodes: int = 300
    """Scripted-expert episodes played there (seed stream ``demo``)."""
    noise: float = 0.1
    """Probability of a wrong expert action (the base actor's demonstrations are imperfect)."""
    actor_epochs: int = 8
    """ActorSFT epochs on those episodes (0: the actor config's model is the base actor as it is)."""
    critic_epochs: int = 2
    """Epochs of scene questions about their observations (0: no critic prior)."""


@dataclass
class RoundConfig:
    """One SELU run: where it goes, what it trains, how much it plays."""

    actor: str
    """ActorSFT config: the actor's policy and action space, and a DemonstrationDataModule naming the env and
    its held-out evaluation (``data.demonstrations`` is set by the round)."""
    critic: str
    """SELUCritic config: the critic's policy, questions and labeling, and a CriticDataModule (its stores are
    set by the round)."""
    out: str = "runs/selu-round"
    """Folder of the whole run: every stage, its stores, checkpoints and logs, and ``results.json``."""
    variant: Variant = "selu"
    """``selu``; ablations ``no_self_ask`` (the critic asked "did the agent ...?") and ``no_relabel``; baselines
    ``self_consistency`` (majority of sampled verdicts, no training), ``oracle`` (ground-truth labels: the upper
    bound) and ``unfiltered`` (the actor's SFT on every episode: the lower bound)."""
    actor_update: Literal["sft", "ppo"] = "sft"
    """How the critic improves the actor: ``sft``, the paper's (ActorSFT on the episodes it accepts); ``ppo``,
    beyond the paper (ActorPPO from the round's actor with the critic's verdict as the only reward, ``ppo``'s
    config; outputs under ``<variant>_ppo``)."""
    ppo: str | None = None
    """ActorPPO config for ``actor_update: ppo``: its ``model.reward`` is a ``CriticReward`` whose critic the round
    points at the round's critic checkpoint."""
    name: str | None = None
    """The run's folder under ``out`` (null: the variant's name, ``_ppo`` added under ``actor_update: ppo``): give
    one to try other run settings (overrides, epochs) of a variant beside the first."""
    rounds: int = 1
    seed: int = 0
    """Seeds the models, the envs and the episodes' seed streams."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env settings of SELU's episodes (e.g. scenes), on top of the actor config's ``data.env_kwargs``."""
    episodes: int = 200
    """Training episodes the actor plays per round."""
    eval_episodes: int = 100
    """Held-out episodes scoring the actor (the same seeds every round and variant)."""
    critic_eval_episodes: int = 100
    """Held-out episodes scoring the critic (played once by the base actor, sampling, on seeds of their own)."""
    critic_epochs: int = 3
    actor_epochs: int = 3
    critic_overrides: list[str] = field(default_factory=list)
    """More ``selu fit`` options for each round's critic stage (e.g. ``["--model.lr=5e-4"]``; not the prior's)."""
    actor_overrides: list[str] = field(default_factory=list)
    """More ``selu fit`` options for each round's actor SFT stage (e.g. a smaller learning rate than the prior's)."""
    ppo_overrides: list[str] = field(default_factory=list)
    """More ``selu fit`` options for each round's PPO stage (``actor_update: ppo``)."""
    self_consistency: int = 5
    """Votes per question of the ``self_consistency`` baseline."""
    prior: PriorConfig | None = None
    """Train the base actor and critic first (null: the configs' models are the base models)."""
    actor_checkpoint: str | None = None
    """A base actor checkpoint instead of the prior's (``model.policy.init_from``)."""
    critic_checkpoint: str | None = None
    """A base critic checkpoint instead of the prior's."""
    accelerator: str | None = None
    """Overrides both configs' ``trainer.accelerator`` (e.g. ``cpu`` to try a GPU recipe)."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS} (got {self.variant!r})")
        for key in ("rounds", "episodes", "eval_episodes", "critic_eval_episodes", "critic_epochs", "actor_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1 (got {getattr(self, key)})")
        if self.actor_update not in ("sft", "ppo"):
            raise ConfigError(f"actor_update must be sft or ppo (got {self.actor_update!r})")
        if self.actor_update == "ppo" and (self.ppo is None or self.variant in ("oracle", "unfiltered")):
            raise ConfigError("actor_update: ppo needs a ppo config and a variant with a trained critic (selu, "
                              "no_self_ask, no_relabel)")  # fmt: skip
        for key in ("actor", "critic", *(("ppo",) if self.actor_update == "ppo" else ())):
            if not os.path.isfile(getattr(self, key)):
                raise ConfigError(f"{key}: no config file {getattr(self, key)!r}")


# ---------------------------------------------------------------------------------------------------- ranks
def launched_ranks() -> tuple[int, int]:
    """(rank, world size) of this process among torchrun's (``RANK``, ``WORLD_SIZE``); (0, 1) without torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def start_process_group() -> None:
    """Under torchrun, join the process group before the first stage (rank 0's stages are waited for on it);
    Lightning's trainers find it started and use it. CPU objects travel over gloo, CUDA tensors over NCCL."""
    import torch
    import torch.distributed as dist

    if launched_ranks()[1] == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")


def _say(message: str) -> None:
    """A progress line, printed by rank 0 only (no collective: every rank may call it at any time)."""
    if launched_ranks()[0] == 0:
        print(f"selu-round: {message}", flush=True)


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a barrier too); the value itself with one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(body: Callable[[], Any]) -> Any:
    """``body()`` run by rank 0 only, its result (or its error) shared with every rank."""
    outcome: tuple[Any, BaseException | None] = (None, None)
    if launched_ranks()[0] == 0:
        try:
            outcome = (body(), None)
        except Exception as err:  # noqa: BLE001 (raised again below, on every rank)
            outcome = (None, err)
    result, error = from_rank0(outcome)
    if error is not None:
        raise error
    return result


# ---------------------------------------------------------------------------------------------------- stages
class Stage:
    """A folder that is finished iff it holds ``stage.json`` (its outputs); an unfinished one is emptied.

    With several ranks, rank 0 decides whether the stage is done, prepares and marks its folder; ``every_rank``
    bodies (Lightning stages: each rank is one DDP process) run on every rank, the others on rank 0 only.
    Every rank returns rank 0's result."""

    def __init__(self, root: str, name: str) -> None:
        self.name, self.dir = name, os.path.join(root, name)
        self.marker = os.path.join(self.dir, "stage.json")

    def done(self) -> dict[str, Any] | None:
        if os.path.isfile(self.marker):
            with open(self.marker) as f:
                return json.load(f)
        return None

    def run(self, body: Callable[[str], dict[str, Any]], *, every_rank: bool = False) -> dict[str, Any]:
        found = from_rank0(self.done())
        if found is not None:
            _say(f"{self.name}: done before, skipped")
            return found

        def prepare() -> None:
            shutil.rmtree(self.dir, ignore_errors=True)  # killed mid-stage: start it again from nothing
            os.makedirs(self.dir)
            print(f"selu-round: {self.name}: started", flush=True)

        on_rank0(prepare)
        start = time.monotonic()
        if every_rank:
            result = from_rank0(body(self.dir) | {"seconds": round(time.monotonic() - start, 1)})
        else:
            result = on_rank0(lambda: body(self.dir) | {"seconds": round(time.monotonic() - start, 1)})

        def mark() -> None:
            tmp = self.marker + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)
            os.replace(tmp, self.marker)
            print(f"selu-round: {self.name}: done in {result['seconds']:.0f} s {_brief(result)}", flush=True)

        on_rank0(mark)
        return result


def _brief(result: dict[str, Any]) -> str:
    shown = {k: v for k, v in result.items() if isinstance(v, float) and k != "seconds"}
    return " ".join(f"{k}={v:.3f}" for k, v in shown.items())


#: Settings the shared stages (priors, held-out episodes, base scores, round 1's episodes) depend on: fixed for an
#: output folder. The others belong to one run (``name``) and are fixed for its folder ``<out>/<name>``;
#: ``rounds`` may grow.
SHARED_SETTINGS = ("actor", "critic", "seed", "env_kwargs", "episodes", "eval_episodes", "critic_eval_episodes",
                   "prior", "actor_checkpoint", "critic_checkpoint", "accelerator")  # fmt: skip


def _check(path: str, mine: dict[str, Any], what: str) -> None:
    """Record ``mine`` in ``path``, or check it against what a first call recorded there."""
    mine = json.loads(json.dumps(mine))
    if os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f)
        changed = sorted(k for k in mine if recorded.get(k) != mine[k])
        if changed:
            raise ConfigError(f"{what} was made with other settings ({', '.join(changed)} differ): its finished stages "
                              "do not fit this call; give another --out or --name")  # fmt: skip
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(mine, f, indent=1)


def check_settings(cfg: RoundConfig, name: str) -> None:
    """The first call on an output folder records the shared settings (and the two configs' text) in
    ``<out>/settings.json``, the first call of a run its own in ``<out>/<name>/settings.json``; later calls must
    match, else finished stages would be reused for other settings."""
    settings = asdict(cfg)
    shared = {k: settings[k] for k in SHARED_SETTINGS}
    for key in ("actor", "critic"):
        with open(getattr(cfg, key)) as f:
            shared[f"{key}_config_text"] = f.read()
    _check(os.path.join(cfg.out, "settings.json"), shared, cfg.out)
    own = {k: v for k, v in settings.items() if k not in (*SHARED_SETTINGS, "out", "rounds", "name")}
    _check(os.path.join(cfg.out, name, "settings.json"), own, os.path.join(cfg.out, name))


def stores_under(path: str) -> list[str]:
    """The TrajectoryStore folders a recording wrote (one per rank: ``<path>/rank<r>``)."""
    found = sorted(glob.glob(os.path.join(path, "rank*")))
    if not found:
        raise ConfigError(f"no recorded episodes under {path!r}")
    return found


# ---------------------------------------------------------------------------------------------------- the CLI
class _Runner:
    """Runs ``selu`` commands in this process, logging each stage to TensorBoard under its own folder."""

    def __init__(self, cfg: RoundConfig) -> None:
        self.cfg = cfg

    def _common(self, stage_dir: str) -> list[str]:
        out = os.path.abspath(self.cfg.out)
        rel = os.path.relpath(os.path.abspath(stage_dir), out)
        args = [
            f"--seed_everything={self.cfg.seed}",
            "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
            f"--trainer.logger.init_args.save_dir={out}", f"--trainer.logger.init_args.name={os.path.dirname(rel)}",
            f"--trainer.logger.init_args.version={os.path.basename(rel)}",
        ]  # fmt: skip
        if self.cfg.accelerator is not None:
            args.append(f"--trainer.accelerator={self.cfg.accelerator}")
        return args

    def cli(self, command: str | None, config: str, stage_dir: str, args: list[str]) -> Any:
        argv = ([command] if command else []) + ["-c", config, *self._common(stage_dir), *args]
        if command == "fit":
            argv.append("--trainer.enable_model_summary=false")
        saved, sys.argv = sys.argv, sys.argv[:1]  # the stage's arguments are all in argv, not selu-round's
        try:
            return _stage_cli()(argv, run=command is not None)
        finally:
            sys.argv = saved

    def fit(self, config: str, stage_dir: str, args: list[str]) -> str:
        """``selu fit``; returns the trained weights' checkpoint (``<stage>/final.ckpt``)."""
        cli = self.cli("fit", config, stage_dir, args)
        path = os.path.join(stage_dir, "final.ckpt")
        cli.trainer.save_checkpoint(path)
        return path

    def test(self, config: str, stage_dir: str, args: list[str]) -> dict[str, float]:
        cli = self.cli("test", config, stage_dir, args)
        return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}

    def predict(self, config: str, stage_dir: str, args: list[str]) -> None:
        self.cli("predict", config, stage_dir, args)


@functools.cache
def _stage_cli() -> type:
    """The stages' CLI class (built on first use: Lightning is imported late, so ``--help`` is quick)."""
    from selu_lightning.cli import SeluCLI

    class StageCLI(SeluCLI):
        """A stage's CLI: refuses, before anything runs, a trainer that would start processes of its own."""

        def _one_process_each(self) -> None:
            environment = getattr(self.trainer.strategy, "cluster_environment", None)
            if self.trainer.world_size > 1 and not (environment and environment.creates_processes_externally):
                raise ConfigError(
                    f"a stage's trainer would start {self.trainer.world_size} processes itself, and they would run "
                    "selu-round again, not the stage: launch selu-round once per device instead, e.g. "
                    "torchrun --nproc_per_node=N $(which selu-round) -c ... (see selu_lightning/selu_round.py)")

        def before_fit(self) -> None:
            self._one_process_each()
            super().before_fit()

        def before_test(self) -> None:
            self._one_process_each()
            super().before_test()

        def before_predict(self) -> None:
            self._one_process_each()
            super().before_predict()

    return StageCLI


def _init(path: str | None) -> list[str]:
    return [f"--model.policy.init_from={path}"] if path else []


def _env_kwargs(cfg: RoundConfig, extra: dict[str, Any] | None = None) -> list[str]:
    merged = {**cfg.env_kwargs, **(extra or {})}
    return [f"--data.env_kwargs.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in merged.items()]


# ---------------------------------------------------------------------------------------------------- the loop
def run_rounds(cfg: RoundConfig) -> dict[str, Any]:
    """Every stage not done yet (see the module docstring); returns and writes ``<out>/<variant>/results.json``."""
    from selu_lightning.data.collect import collect_expert_episodes, settings_from
    from selu_lightning.data.store import TrajectoryStore

    tag = cfg.name or (cfg.variant if cfg.actor_update == "sft" else f"{cfg.variant}_ppo")
    on_rank0(lambda: check_settings(cfg, tag))
    run = _Runner(cfg)
    out, seed = cfg.out, cfg.seed
    no_val = ["--trainer.limit_val_batches=0"]

    def actor_play(actor: str | None, stage_dir: str, episodes: int, data_seed: int, config: str = cfg.actor) -> None:
        """The actor plays ``episodes`` episodes of the given seed stream, sampling, recorded in ``stage_dir``."""
        run.predict(config, stage_dir, [
            *_init(actor), *_env_kwargs(cfg), f"--data.seed={data_seed}", f"--data.test_episodes={episodes}",
            "--data.eval_greedy=false", f"--data.record_to={os.path.join(stage_dir, 'episodes')}",
        ])  # fmt: skip

    # -- before round 1: the base models, the critic's held-out episodes, the base scores (shared by variants)
    actor, critic = cfg.actor_checkpoint, cfg.critic_checkpoint
    if cfg.prior is not None:
        prior = cfg.prior

        def demos(extra: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
            def body(d: str) -> dict[str, Any]:
                env = _env_of(cfg.actor)
                reply, template, env_kwargs = settings_from(cfg.actor, env)
                kwargs = {**env_kwargs, **cfg.env_kwargs, **extra}
                store = TrajectoryStore(os.path.join(d, "episodes", "rank0"), env=env, env_kwargs=kwargs,
                                        policy="expert")  # fmt: skip
                store.append(collect_expert_episodes(env, prior.episodes, noise=prior.noise, reply=reply,
                                                     template=template, env_kwargs=kwargs, seed=seed))  # fmt: skip
                return {"episodes": len(store)}

            return body

        critic_store = os.path.join(out, "prior/critic_episodes/episodes/rank0")
        actor_store = critic_store
        if critic is None and prior.critic_epochs > 0:
            Stage(out, "prior/critic_episodes").run(demos(prior.env_kwargs))
            critic = Stage(out, "prior/critic").run(lambda d: {"checkpoint": run.fit(cfg.critic, d, [
                f"--data.trajectories={critic_store}", "--data.labels=scene", "--data.val_trajectories=null",
                f"--trainer.max_epochs={prior.critic_epochs}", *no_val,
            ])}, every_rank=True)["checkpoint"]  # fmt: skip
        if actor is None and prior.actor_epochs > 0:
            actor_kwargs = prior.env_kwargs if prior.actor_env_kwargs is None else prior.actor_env_kwargs
            if actor_kwargs != prior.env_kwargs or not os.path.isdir(critic_store):
                actor_store = os.path.join(out, "prior/actor_episodes/episodes/rank0")
                Stage(out, "prior/actor_episodes").run(demos(actor_kwargs))
            actor = Stage(out, "prior/actor").run(lambda d: {"checkpoint": run.fit(cfg.actor, d, [
                f"--data.demonstrations={actor_store}", *_env_kwargs(cfg, actor_kwargs),
                f"--trainer.max_epochs={prior.actor_epochs}", *no_val,
            ])}, every_rank=True)["checkpoint"]  # fmt: skip

    heldout = Stage(out, "base/critic_heldout")
    heldout.run(lambda d: actor_play(actor, d, cfg.critic_eval_episodes, seed + 7919) or {}, every_rank=True)
    heldout_stores = json.dumps(stores_under(os.path.join(heldout.dir, "episodes")))  # one per rank that played

    def critic_test(checkpoint: str | None, d: str, extra: list[str] = ()) -> dict[str, float]:
        return run.test(cfg.critic, d, [*_init(checkpoint), f"--data.test_trajectories={heldout_stores}",
                                        f"--data.trajectories={heldout_stores}", *extra])  # fmt: skip

    def actor_test(checkpoint: str | None, d: str, config: str = cfg.actor) -> dict[str, float]:
        return run.test(config, d, [*_init(checkpoint), *_env_kwargs(cfg), f"--data.seed={seed}",
                                       f"--data.test_episodes={cfg.eval_episodes}"])  # fmt: skip

    base = {"actor_success": Stage(out, "base/actor_test").run(lambda d: actor_test(actor, d),
                                                               every_rank=True)["test/success_rate"]}  # fmt: skip
    base |= _critic_scores(Stage(out, "base/critic_test").run(lambda d: critic_test(critic, d), every_rank=True))
    results: dict[str, Any] = {"config": asdict(cfg), "base": base, "rounds": []}

    # -- the rounds
    v = cfg.variant
    critic_args = {"no_self_ask": ["--model.questions.style=direct"], "no_relabel": ["--model.labeling.hindsight=false"],
                   "self_consistency": [f"--model.self_consistency={cfg.self_consistency}"]}.get(v, [])  # fmt: skip
    actor_config = cfg.actor  # the config the current actor checkpoint loads into
    for r in range(1, cfg.rounds + 1):
        # round 1's episodes come from the base actor: the same for every variant
        played = Stage(out, "round1/collect" if r == 1 else f"{tag}/round{r}/collect")
        played.run(lambda d: actor_play(actor, d, cfg.episodes, seed + 1000 * r, actor_config) or {}, every_rank=True)
        episodes = stores_under(os.path.join(played.dir, "episodes"))
        here = f"{tag}/round{r}"

        if v in ("selu", "no_self_ask", "no_relabel", "oracle"):
            labels = "oracle" if v == "oracle" else "self"
            critic = Stage(out, f"{here}/critic").run(lambda d: {"checkpoint": run.fit(cfg.critic, d, [
                *_init(critic), *critic_args, f"--data.trajectories={json.dumps(episodes)}", f"--data.labels={labels}",
                "--data.val_trajectories=null", f"--trainer.max_epochs={cfg.critic_epochs}", *no_val,
                *cfg.critic_overrides,
            ])}, every_rank=True)["checkpoint"]  # fmt: skip
        scores: dict[str, Any] = {"round": r}
        if v != "unfiltered":
            scores |= _critic_scores(Stage(out, f"{here}/critic_test").run(lambda d: critic_test(critic, d, critic_args),
                                                                           every_rank=True))  # fmt: skip

        def label(d: str) -> dict[str, Any]:
            from selu_lightning.critic.actor_data import actor_episodes
            from selu_lightning.data.demonstrations import without_frames

            # The critic judges final observations: the steps' frames are not held while it labels, and the
            # episodes it keeps are read again, with their frames, a chunk at a time into the actor's store.
            trajectories = [without_frames(t, keep_final_frame=True) for p in episodes
                            for t in TrajectoryStore(p).iter_trajectories(with_ground_truth=True)]  # fmt: skip
            accepted, stats = _accepted(run, cfg, critic, critic_args, trajectories, d)
            del trajectories
            store, kept = TrajectoryStore(os.path.join(d, "actor_data"), env=_env_of(cfg.actor)), 0
            for chunk in _chunks((t for p in episodes for t in TrajectoryStore(p).iter_trajectories()), 64):
                chosen = actor_episodes(chunk, accepted)
                store.append(chosen)
                kept += len(chosen)
            return stats | {"actor_episodes": kept}

        if cfg.actor_update == "ppo":  # the critic's verdict is the reward; the env's is never learned from
            actor = Stage(out, f"{here}/actor").run(lambda d: {"checkpoint": run.fit(cfg.ppo, d, [
                *_init(actor), f"--model.reward.init_args.critic.init_args.policy.init_from={critic}",
                *_env_kwargs(cfg), *cfg.ppo_overrides,
            ])}, every_rank=True)["checkpoint"]  # fmt: skip
            actor_config = cfg.ppo
        else:
            labeled = Stage(out, f"{here}/label")
            scores |= {k: x for k, x in labeled.run(label).items() if k != "seconds"}
            if scores["actor_episodes"]:
                actor = Stage(out, f"{here}/actor").run(lambda d: {"checkpoint": run.fit(cfg.actor, d, [
                    *_init(actor), f"--data.demonstrations={os.path.join(labeled.dir, 'actor_data')}",
                    *_env_kwargs(cfg), f"--trainer.max_epochs={cfg.actor_epochs}", *no_val, *cfg.actor_overrides,
                ])}, every_rank=True)["checkpoint"]  # fmt: skip
            else:  # the critic accepted nothing: the actor stays as it was (and is scored again)
                _say(f"{here}: the critic accepted none of the episodes; the actor is not fine-tuned")
        scores["actor_success"] = Stage(out, f"{here}/actor_test").run(lambda d: actor_test(actor, d, actor_config),
                                                                       every_rank=True)["test/success_rate"]  # fmt: skip
        results["rounds"].append(scores)
        on_rank0(lambda: _summary(out, tag, base, results["rounds"]))
        _say(f"{here}: " + " ".join(f"{k}={x}" for k, x in scores.items() if k != "round"))

    path = os.path.join(out, tag, "results.json")
    on_rank0(lambda: _write_json(path, results))
    _say(f"results in {path}")
    return results


def _write_json(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def _accepted(run: _Runner, cfg: RoundConfig, critic: str | None, critic_args: list[str], trajectories: list,
              stage_dir: str) -> tuple[dict[str, list[str]], dict[str, Any]]:  # fmt: skip
    """Episode id -> instructions the actor's SFT takes each episode under, and what the labeling did. Ground
    truth is read only by the ``oracle`` baseline; the critic sees ``judged_view``s."""
    from selu_lightning.critic.data import accepted_instructions
    from selu_lightning.rewards.base import judged_view

    if cfg.variant == "unfiltered":
        return {t.episode_id: [t.goal] for t in trajectories}, {"accepted": len(trajectories)}
    if cfg.variant == "oracle":
        ok = {t.episode_id: [t.goal] for t in trajectories if t.ground_truth.get("success")}
        return ok, {"accepted": len(ok)}
    trainer, model = (cli := run.cli(None, cfg.critic, stage_dir, [*_init(critic), *critic_args])).trainer, cli.model
    model.configure_model()
    # The trainer's device and precision, as its fit would use them (a 7B critic does not label on a CPU).
    model = trainer.precision_plugin.convert_module(model).to(trainer.strategy.root_device)
    with trainer.precision_plugin.forward_context():
        examples, stats = model.label([judged_view(t) for t in trajectories])
    kept = {k: float(x) for k, x in stats.as_metrics("").items()}
    return accepted_instructions(examples), kept


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _critic_scores(metrics: dict[str, float]) -> dict[str, float]:
    """The critic's held-out scores a round reports (accuracy, and what a skewed success rate cannot hide)."""
    return {f"critic_{k}": metrics[f"test/critic_{k}"] for k in ("accuracy", "f1", "auroc", "p_yes")}


def _summary(out: str, variant: str, base: dict[str, float], rounds: list[dict[str, Any]]) -> None:
    """Every round's scores against the round (round 0: the base models) in ``<out>/<variant>/summary``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join(out, variant, "summary"))
    for scores in [{"round": 0, **base}, *rounds]:
        for key in ("actor_success", "critic_accuracy", "critic_f1", "critic_auroc", "relabel_rate", "actor_episodes"):
            if key in scores:
                writer.add_scalar(f"round/{key}", float(scores[key]), scores["round"])
    writer.close()


def _env_of(config: str) -> str:
    import yaml

    with open(config) as f:
        env = (((yaml.safe_load(f) or {}).get("data") or {}).get("init_args") or {}).get("env")
    if not env:
        raise ConfigError(f"{config}: data.init_args.env is not set")
    return env


def parse_args(argv: list[str] | None = None) -> RoundConfig:
    """A RoundConfig from ``-c CONFIG`` and ``--key=value`` options (later ones win)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="selu-round", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="A round config (configs/selu/round_*.yaml).")
    parser.add_class_arguments(RoundConfig, nested_key=None, fail_untyped=False)
    ns = parser.instantiate_classes(parser.parse_args(argv))
    prior = ns.get("prior")
    fields = {k: ns[k] for k in RoundConfig.__dataclass_fields__}
    fields["prior"] = PriorConfig(**vars(prior)) if prior is not None and not isinstance(prior, PriorConfig) else prior
    return RoundConfig(**fields)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``selu-round``); a bad configuration exits with one line on stderr and status 2."""
    from selu_lightning.cli import _config_error_in, _one_line, quiet_noise
    from selu_lightning.threads import apply_thread_policy

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_noise()
    try:
        cfg = parse_args(argv)
        # every stage runs in this process; torchrun starts one per device
        message = apply_thread_policy(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if message and launched_ranks()[0] == 0:
            print(f"selu-round: {message}", flush=True)
        start_process_group()
        run_rounds(cfg)
    except Exception as err:  # noqa: BLE001 (configuration errors: one line; anything else: the traceback)
        cause = _config_error_in(err)
        if cause is None and type(err).__name__ != "ArgumentError":
            raise
        print(f"selu-round: error: {_one_line(cause or err)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
