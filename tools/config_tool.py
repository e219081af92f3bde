"""What the measuring tools that read a `selu fit` config share: their own options before ``--`` and config
options after it, the config's module and datamodule built as ``selu fit`` builds them, and one JSON line out.

Imported by ``tools/rollout_diversity.py`` and ``tools/latent_space_report.py``, which put this folder on the
import path themselves (so tests can load them by file path).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from selu_lightning.cli import SeluCLI


def split_argv(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(the tool's own options, the config options after ``--``); ``None`` reads ``sys.argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def build_cli(config: str, overrides: list[str]) -> SeluCLI:
    """The config parsed and instantiated as ``selu fit -c config <overrides>`` would, without a logger or a run."""
    return SeluCLI(args=["-c", config, "--trainer.logger=false", *overrides], run=False)


def build(config: str, ckpt_path: str | None, overrides: list[str]) -> tuple[Any, Any]:
    """The config's module (weights from ``ckpt_path``, in eval mode) and datamodule."""
    cli = build_cli(config, overrides)
    module, data = cli.model, cli.datamodule
    module.configure_model()
    if ckpt_path is not None:  # as the trainer loads it: the module's own checks, then its trained weights
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    module.eval()
    return module, data


def emit(record: dict[str, Any], out: Path | None) -> str:
    """Print ``record`` as one JSON line (the results tool reads the last line) and, with ``out``, write it there."""
    line = json.dumps(record)
    print(line)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
    return line
