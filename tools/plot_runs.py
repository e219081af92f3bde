"""Panels of TensorBoard scalars, one line per run (e.g. per seed), drawn with Pillow only.

    python tools/plot_runs.py runs/a runs/b --tags val/success_rate train/kl_to_ref --out docs/curves.png

Each panel's x axis is ``train/env_steps`` of the run (the cumulative env steps of the epoch a value was
logged in), so runs of different lengths line up; a tag a run never logged is left out of its panel.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from selu_lightning.tb import read_scalars

COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
X_TAG = "train/env_steps"


def _xy(scalars: dict[str, list[tuple[int, float]]], tag: str) -> list[tuple[float, float]]:
    """(env steps, value) for each logged value of ``tag``: a value's global step is mapped to the env steps
    of the first epoch logged at or after it (validation runs after that epoch's update)."""
    steps = sorted(scalars.get(X_TAG, []))
    points = []
    for step, value in scalars.get(tag, []):
        later = [env for s, env in steps if s >= step]
        x = later[0] if later else (steps[-1][1] if steps else float(step))
        points.append((x, value))
    return points


def panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
          lines: Sequence[tuple[str, list[tuple[float, float]]]], font) -> None:  # fmt: skip
    """One panel: axes scaled to the data (y from 0 unless values go below), a line and dots per run."""
    left, top, right, bottom = box
    xs = [x for _, pts in lines for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, pts in lines for _, y in pts] or [0.0, 1.0]
    x0, x1 = 0.0, max(max(xs), 1.0)
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > min(0.0, min(ys)) else min(0.0, min(ys)) + 1.0
    if 0.0 <= min(ys) and max(ys) <= 1.0:
        y1 = 1.0
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, top - 20), title, fill="black", font=font)
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * (bottom - top)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.text((left - 52, y - 8), f"{y0 + frac * (y1 - y0):.3g}", fill="black", font=font)
    draw.text((right - 90, bottom + 6), f"{int(x1)} steps", fill="black", font=font)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for k, (_, pts) in enumerate(lines):
        color = COLORS[k % len(COLORS)]
        coords = [at(x, y) for x, y in pts]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for cx, cy in coords:
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)


def plot(runs: Sequence[tuple[str, dict[str, list[tuple[int, float]]]]], tags: Sequence[str], title: str,
         width: int = 360, height: int = 260) -> Image.Image:  # fmt: skip
    """Panels side by side, one per tag, one colour per run, with a legend of run labels."""
    img = Image.new("RGB", (width * len(tags), height + 60), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    draw.text((10, 6), title, fill="black", font=ImageFont.load_default(size=15))
    for k, tag in enumerate(tags):
        box = (k * width + 60, 50, (k + 1) * width - 15, height + 10)
        panel(draw, box, tag, [(label, _xy(s, tag)) for label, s in runs], font)
    x = 60
    for k, (label, _) in enumerate(runs):
        draw.rectangle([x, height + 40, x + 12, height + 52], fill=COLORS[k % len(COLORS)])
        draw.text((x + 16, height + 38), label, fill="black", font=font)
        x += 16 + int(draw.textlength(label, font=font)) + 20
    return img


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (the newest event file under each is read)")
    parser.add_argument("--tags", nargs="+", default=["val/success_rate"])
    parser.add_argument("--labels", nargs="*", help="one label per run (default: folder names)")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(labels)} labels for {len(args.runs)} runs")
    runs = [(label, read_scalars(run)) for label, run in zip(labels, args.runs)]
    plot(runs, args.tags, args.title).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
