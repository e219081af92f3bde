"""The ``selu`` command: LightningCLI with fit / validate / test / predict and ``${...}`` interpolation.

``lightning fit`` cannot be this project's entry point: lightning 2.6 ships no such script and the
``lightning`` name belongs to the lightning-sdk cloud tool. ``selu fit -c config.yaml`` is the same CLI.
The CLI runs in subclass mode: ``model.class_path`` picks the method's LightningModule (``ActorPPO``, ...)
and ``data.class_path`` the DataModule, so a new method is a new class, never a fork of this file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from argparse import ArgumentError
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from jsonargparse import set_parsing_settings

import selu_lightning.data  # noqa: F401  (the DataModules, for class_path and --help)
import selu_lightning.modules  # noqa: F401  (the LightningModules, for class_path and --help)
from selu_lightning import __version__
from selu_lightning.errors import ConfigError

__all__ = ["SeluCLI", "main"]

# The options of dataclass settings (model.policy.*, its lora.*) are described by their attribute docstrings.
set_parsing_settings(docstring_parse_attribute_docstrings=True)

DESCRIPTION = (
    "selu: train vision-language agents that learn by acting (RL4VLM's SFT and PPO, GRPO / GiGPO, SELU's "
    "critic, latent actions) with PyTorch Lightning. `selu fit -c configs/quickstart.yaml` trains; `--model.help CLASS` and "
    "`--data.help CLASS` show a component's options."
)

TRAINER_DEFAULTS = {
    # Each epoch's train_dataloader() is a fresh rollout with the current policy.
    "reload_dataloaders_every_n_epochs": 1,
    # Each rank trains on its own rollout buffer.
    "use_distributed_sampler": False,
    "num_sanity_val_steps": 0,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "selu"},
    },
}


class SeluCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, share_cores: bool = False) -> None:
        """``share_cores``: set torch's CPU threads by :mod:`selu_lightning.threads` (the ``selu`` command does;
        a program that builds the CLI keeps its own thread settings)."""
        self.share_cores = share_cores
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False, "description": DESCRIPTION},
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def init_parser(self, **kwargs: Any) -> Any:
        """Every (sub)command parser refuses abbreviated options: ``--data.num_env`` must not become num_envs."""
        kwargs.setdefault("allow_abbrev", False)
        parser = super().init_parser(**kwargs)
        parser.add_argument("--version", action="version", version=f"selu_lightning {__version__}")
        return parser

    def _add_arguments(self, parser: Any) -> None:
        """Lightning's arguments, with this project's (``--model``, ``--data``, ``--ckpt_path``) listed first in
        ``--help`` and in the usage line, before the Trainer's ~40 options."""
        super()._add_arguments(parser)
        ours = ("model", "data", "ckpt_path")

        def first(name: str) -> bool:
            return name.lstrip("-").split(".")[0] in ours

        groups = parser._action_groups
        mine = [g for g in groups if any(first(o) for a in g._group_actions for o in a.option_strings)]
        base = [g for g in groups if g.title in ("positional arguments", "options")]
        parser._action_groups = base + mine + [g for g in groups if g not in base and g not in mine]
        def rank(action: Any) -> int:
            if not action.option_strings or action.option_strings[0] in ("-h", "-c"):
                return 0
            return 1 if any(first(o) for o in action.option_strings) else 2

        for actions in [parser._actions] + [g._group_actions for g in parser._action_groups]:
            actions.sort(key=rank)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        """Lightning's trainer with the rollout-aware progress bar, unless the config has a bar or none."""
        from lightning.pytorch.callbacks import ProgressBar

        from selu_lightning.progress import RolloutProgressBar

        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in [*configured, *callbacks]
        ):
            callbacks = [*callbacks, RolloutProgressBar()]
        trainer = super()._instantiate_trainer(config, callbacks)
        if self.share_cores:
            from lightning.pytorch.utilities import rank_zero_info

            from selu_lightning.threads import apply_thread_policy

            message = apply_thread_policy(trainer.num_devices)  # one process per device on this node
            if message:
                rank_zero_info(f"selu: {message}")
        return trainer

    def _prepare_checkpoints(self) -> None:
        """Each run's checkpoints live in its own run folder (``<save_dir>/<name>/version_N/checkpoints``), and
        a ``last.ckpt`` is written at the end of every rollout epoch whatever the config says. ``--ckpt_path
        last`` resumes the newest ``last.ckpt`` among this config's runs (same save_dir and name), never
        another experiment's; with nothing to resume it is a one-line error."""
        callbacks = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        if callbacks and not any(c.save_last for c in callbacks):
            callbacks[0].save_last = True
            callbacks[0]._save_on_train_epoch_end = True
        config = self.config_init.get(self.subcommand, {})
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = latest_run_checkpoint(self.trainer)
        _check_checkpoint_file(config.get("ckpt_path"))
        if self.trainer.logger is None:
            # Without a logger Lightning would save the resolved config as ./config.yaml, over whatever is there.
            self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, SaveConfigCallback)]

    def before_fit(self) -> None:
        self._prepare_checkpoints()
        # Ctrl-C, SIGTERM (what cluster schedulers send; Lightning turns it into an exception) or a crash
        # leave <run>/checkpoints/interrupted.ckpt, which --ckpt_path last resumes when it is the newest. (Lightning
        # deletes that file again when a run ends without an exception, so it must not be last.ckpt.)
        callbacks = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        if callbacks:
            self.trainer.callbacks.append(InterruptCheckpoint(dirpath=_checkpoint_dir(self.trainer), filename=INTERRUPTED))
        self.trainer.callbacks.append(DiscardUntrainedRun())

    def _evaluate_trained(self) -> None:
        self._prepare_checkpoints()
        policy = getattr(getattr(self.model, "policy", None), "config", None)
        if self.config_init.get(self.subcommand, {}).get("ckpt_path") is None and not getattr(policy, "init_from", None):
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"selu {self.subcommand} without --ckpt_path scores the weights as configured "
                "(model.policy.model_name_or_path plus fresh adapters and value head), not a trained run: "
                "pass --ckpt_path last or a checkpoint file (or model.policy.init_from)"
            )

    before_validate = before_test = _evaluate_trained

    def before_predict(self) -> None:
        self._evaluate_trained()
        from selu_lightning.predict import EpisodeRecordWriter

        self.trainer.callbacks.append(EpisodeRecordWriter(_run_dir(self.trainer)))

    def after_fit(self) -> None:
        """One line saying where the run went: logs, last checkpoint, last held-out success."""
        from lightning.pytorch.utilities import rank_zero_info

        trainer = self.trainer
        parts = []
        if trainer.logger is not None and trainer.logger.log_dir:
            parts.append(f"logs {trainer.logger.log_dir}")
        for callback in trainer.checkpoint_callbacks:
            last = getattr(callback, "last_model_path", "")
            if last:
                parts.append(f"last checkpoint {last}")
                break
        success = trainer.callback_metrics.get("val/success_rate")
        if success is not None:
            parts.append(f"val/success_rate {float(success):.3f}")
        if parts:
            rank_zero_info("selu: " + "; ".join(parts))


#: Messages that are noise for this project's users: cloud-logging adverts, a deprecation inside Lightning,
#: checkpoint folders that runs of one config share on purpose, epoch metrics we sum across ranks ourselves, and
#: Lightning (>= 2.6) announcing on every fresh fit that, with an on-exception checkpoint callback, it looks for a
#: "last" checkpoint: each run has its own folder, so a fresh run finds none (``--ckpt_path last`` resumes).
QUIET = (
    "litlogger",
    "litmodels",
    "isinstance(treespec, LeafSpec)",
    "exists and is not empty",
    "when logging on epoch level in distributed setting",
    "The last model of the previous `fit` call will be used",
    'ckpt_path="last") is set, but there is no last checkpoint available',
)


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(q in message for q in QUIET)


def quiet_noise() -> None:
    for text in QUIET:
        warnings.filterwarnings("ignore", message=f".*{re.escape(text)}.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_Quiet())
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the hub's download bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' per-load "Loading weights" bar (read at its import)


def _run_dir(trainer: L.Trainer) -> str:
    """This run's folder: the logger's version folder, or the trainer's root folder without a logger."""
    logger = trainer.logger
    return logger.log_dir if logger is not None and logger.log_dir else trainer.default_root_dir


def _checkpoint_dir(trainer: L.Trainer) -> str:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return callback.dirpath
    return os.path.join(_run_dir(trainer), "checkpoints")


#: The checkpoint an interrupted run leaves (Ctrl-C, SIGTERM, an exception).
INTERRUPTED = "interrupted"


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Saves on Ctrl-C and SIGTERM (every rank gets those, so all join the save's collectives), and on any
    other exception only in a single-process run: under DDP a crash on one rank must end the job, not wait in
    a collective that the other ranks never enter. Nothing is saved before the first update: that checkpoint
    would hold the starting weights, and ``--ckpt_path last`` would resume it instead of a real run's."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0:
            return
        if trainer.world_size == 1 or isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            super().on_exception(trainer, pl_module, exception)


class DiscardUntrainedRun(L.Callback):
    """A fit that fails before its first update leaves no run folder (it would hold only the config and an empty
    event file, and make the next run's number jump); the error message says what went wrong."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        import glob
        import shutil

        logger = trainer.logger
        if trainer.global_step > 0 or logger is None or not trainer.is_global_zero:
            return
        run_dir = logger.log_dir
        if run_dir and os.path.isdir(run_dir) and not glob.glob(os.path.join(run_dir, "**", "*.ckpt"), recursive=True):
            shutil.rmtree(run_dir, ignore_errors=True)


#: ``--ckpt_path`` values Lightning resolves itself (``last`` is resolved to a file by the CLI before this).
_CKPT_KEYWORDS = {"best", "last", "hpc", "registry"}


def _check_checkpoint_file(path: str | None) -> None:
    """A ``--ckpt_path`` naming no file is a one-line error before anything starts."""
    if path is None or path in _CKPT_KEYWORDS or path.startswith("registry:") or "://" in path:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"--ckpt_path {path}: no such checkpoint file")


def latest_run_checkpoint(trainer: L.Trainer) -> str:
    """The newest ``last.ckpt`` (or ``interrupted.ckpt``) of this config's runs:
    ``<save_dir>/<name>/version_*/checkpoints/`` with a logger, ``<default_root_dir>/checkpoints/`` without."""
    import glob

    logger = trainer.logger
    if logger is not None and getattr(logger, "root_dir", None):
        folders, where = [os.path.join(logger.root_dir, "version_*", "checkpoints")], logger.root_dir
    else:
        folders = [os.path.join(trainer.default_root_dir, "checkpoints")]
        where = folders[0]
    # a checkpoint folder the config names itself (ModelCheckpoint dirpath) is this config's too
    folders += [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    names = ("last.ckpt", f"{INTERRUPTED}.ckpt")
    found = sorted({p for f in folders for n in names for p in glob.glob(os.path.join(f, n))}, key=os.path.getmtime)
    if not found:
        raise ConfigError(f"--ckpt_path last: no last.ckpt (or {INTERRUPTED}.ckpt) of an earlier run in {where}")
    return found[-1]


def main(args: list[str] | None = None) -> None:
    """Console entry point; a bad configuration exits with one line on stderr and status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_noise()
    from selu_lightning.modules.actor_ppo import NonFiniteLossError

    try:
        SeluCLI(args=args, share_cores=True)
    except (ConfigError, ArgumentError, ValueError) as err:
        cause = _config_error_in(err)
        if cause is None and not isinstance(err, ArgumentError):
            raise
        print(f"selu: error: {_one_line(cause or err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:
        print(f"selu: stopped by SIGTERM; {INTERRUPTED}.ckpt is in the run's checkpoints, resume with --ckpt_path last",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(128 + 15) from None
    except MisconfigurationException as err:
        message = _one_line(err)
        if "gpu" in message.lower() and "backend" in message.lower():
            message = "this config asks for a GPU (trainer.accelerator=gpu) and none is available; add --trainer.accelerator=cpu to run it on the CPU"
        print(f"selu: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"selu: stopped: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None


def _config_error_in(err: BaseException) -> ConfigError | None:
    """The ConfigError behind an error, if any: in subclass mode jsonargparse wraps a class's own
    validation error in its "does not validate against any of the Union subtypes" message."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


_REFUSED_OPTION = re.compile(r"Problem with given class_path '([\w.]+)':\s+Option '(\w+)' is not accepted")


_MISSING_CLASS = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")


def _short_message(err: BaseException) -> str | None:
    """jsonargparse's subclass-mode errors, said briefly, with the closest valid name: an option a class does
    not take, or a class_path naming no class."""
    import difflib
    import importlib
    import inspect

    missing = _MISSING_CLASS.search(str(err))
    if missing is not None:
        module, name = missing.groups()
        try:
            names = [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
        except ImportError:
            names = []
        close = difflib.get_close_matches(name, names, n=1)
        return f"no class {name!r} in {module}" + (f"; did you mean {close[0]!r}?" if close else "")
    match = _REFUSED_OPTION.search(str(err))
    if match is None:
        return None

    class_path, option = match.groups()
    module, _, name = class_path.rpartition(".")
    try:
        accepted = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
    except (ImportError, AttributeError, ValueError):
        accepted = []
    close = difflib.get_close_matches(option, accepted, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{name} has no option {option!r}{hint}"


def _one_line(err: BaseException) -> str:
    short = _short_message(err)
    if short is not None:
        return short
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


if __name__ == "__main__":
    main()
