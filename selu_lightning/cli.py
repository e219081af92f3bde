"""The ``selu`` command: LightningCLI with fit / validate / test / predict and ``${...}`` interpolation.

``lightning fit`` cannot be this project's entry point: lightning 2.6 ships no such script and the
``lightning`` name belongs to the lightning-sdk cloud tool. ``selu fit -c config.yaml`` is the same CLI.
The CLI runs in subclass mode: ``model.class_path`` picks the method's LightningModule (``ActorPPO``, ...)
and ``data.class_path`` the DataModule, so a new method is a new class, never a fork of this file.
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import selu_lightning.data  # noqa: F401  (the DataModules, for class_path and --help)
import selu_lightning.modules  # noqa: F401  (the LightningModules, for class_path and --help)
from selu_lightning.errors import ConfigError

__all__ = ["SeluCLI", "main"]

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
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def _prepare_checkpoints(self) -> None:
        """Checkpoints go to ``<save_dir>/<name>/checkpoints``, not into the logger's per-run version folder,
        and a ``last.ckpt`` is written at the end of every rollout epoch whatever the config says, so
        ``--ckpt_path last`` resumes any recipe. ``--ckpt_path last`` with nothing to resume is an error."""
        logger = self.trainer.logger
        callbacks = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        for callback in callbacks:
            if callback.dirpath is None and logger is not None:
                callback.dirpath = os.path.join(logger.save_dir or ".", logger.name or "", "checkpoints")
        if callbacks and not any(c.save_last for c in callbacks):
            callbacks[0].save_last = True
            callbacks[0]._save_on_train_epoch_end = True
        config = self.config.get(self.subcommand, {})
        if config.get("ckpt_path") == "last":
            found = [c.dirpath for c in callbacks if c.dirpath and os.path.isfile(os.path.join(c.dirpath, "last.ckpt"))]
            if not found:
                where = ", ".join(sorted({c.dirpath for c in callbacks if c.dirpath})) or "(checkpointing is off)"
                raise ConfigError(f"--ckpt_path last: no last.ckpt to resume in {where}")

    before_fit = before_validate = before_test = before_predict = _prepare_checkpoints


def main(args: list[str] | None = None) -> None:
    """Console entry point; a bad configuration exits with one line on stderr and status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from selu_lightning.modules.actor_ppo import NonFiniteLossError

    try:
        SeluCLI(args=args)
    except (ConfigError, ArgumentError, ValueError) as err:
        cause = _config_error_in(err)
        if cause is None and not isinstance(err, ArgumentError):
            raise
        print(f"selu: error: {_one_line(cause or err)}", file=sys.stderr)
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


def _one_line(err: BaseException) -> str:
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


if __name__ == "__main__":
    main()
