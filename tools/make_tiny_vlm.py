"""Write a tiny random-weight VLM of a real architecture to a folder.

    python tools/make_tiny_vlm.py --arch llava --out /tmp/tiny-llava [--seed 0]

The folder loads like any checkpoint:
    AutoProcessor.from_pretrained(DIR); AutoModelForImageTextToText.from_pretrained(DIR)
"""

from __future__ import annotations

import argparse
import math

from selu_lightning.policy.tiny import TINY_ARCHS, build_tiny_vlm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, choices=TINY_ARCHS, help="architecture to build")
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed; the same seed gives identical files")
    args = parser.parse_args(argv)

    folder = build_tiny_vlm(args.arch, args.out, seed=args.seed)

    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        n_params = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    print(folder)
    print(f"{args.arch}: {n_params:,} parameters")


if __name__ == "__main__":
    main()
