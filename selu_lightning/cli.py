"""The ``selu`` command: LightningCLI with fit / validate / test / predict and ``${...}`` interpolation.

``lightning fit`` cannot be this project's entry point: lightning 2.6 ships no such script and the
``lightning`` name belongs to the lightning-sdk cloud tool. ``selu fit -c config.yaml`` is the same CLI.
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from selu_lightning.data.rollout import RolloutDataModule
from selu_lightning.errors import ConfigError
from selu_lightning.modules.actor_ppo import ActorPPO

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
            ActorPPO,
            RolloutDataModule,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )


    def _stable_checkpoint_dir(self) -> None:
        """Checkpoints go to ``<save_dir>/<name>/checkpoints``, not into the logger's per-run version folder,
        so ``--ckpt_path last`` after a crash finds the previous run's ``last.ckpt``."""
        logger = self.trainer.logger
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None and logger is not None:
                callback.dirpath = os.path.join(logger.save_dir or ".", logger.name or "", "checkpoints")

    before_fit = before_validate = before_test = _stable_checkpoint_dir


def main(args: list[str] | None = None) -> None:
    """Console entry point; a bad configuration exits with one line on stderr and status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        SeluCLI(args=args)
    except (ConfigError, ArgumentError) as err:
        one_line = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"selu: error: {one_line}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
