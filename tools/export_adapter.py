"""Export a selu_lightning checkpoint as a plain peft adapter folder (or a full model without LoRA).

    python tools/export_adapter.py runs/quickstart/checkpoints/last.ckpt --out exported/
"""

from __future__ import annotations

import argparse

from selu_lightning.cli import quiet_noise
from selu_lightning.export import export_adapter


def main() -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(export_adapter(args.checkpoint, args.out))


if __name__ == "__main__":
    main()
