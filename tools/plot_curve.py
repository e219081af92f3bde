"""Draw a learning curve (PNG) from a run's TensorBoard events, with Pillow only.

    python tools/plot_curve.py runs/quickstart --out docs/learning_curve.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from selu_lightning.tb import read_scalars

SERIES = (("train/success_rate", (31, 119, 180)), ("val/success_rate", (214, 39, 40)))


def plot(scalars: dict[str, list[tuple[int, float]]], x_tag: str, title: str, size=(720, 400)) -> Image.Image:
    """Success rates against cumulative env steps (the x of each epoch is read from ``x_tag``)."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    left, top, right, bottom = 60, 40, size[0] - 20, size[1] - 50
    by_epoch_step = dict(scalars.get(x_tag, []))
    x_max = max(by_epoch_step.values(), default=1.0)
    draw.rectangle([left, top, right, bottom], outline="black")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - frac * (bottom - top)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.text((left - 40, y - 8), f"{frac:.2f}", fill="black", font=font)
    draw.text((left, 10), title, fill="black", font=font)
    draw.text(((left + right) // 2 - 40, bottom + 25), "env steps", fill="black", font=font)
    for k, (tag, color) in enumerate(SERIES):
        points = []
        for step, value in scalars.get(tag, []):
            x = by_epoch_step.get(step)  # epoch-end metrics share the global step of the env-steps counter
            if x is None:
                continue
            points.append((left + (right - left) * float(x) / x_max, bottom - value * (bottom - top)))
        if len(points) > 1:
            draw.line(points, fill=color, width=3)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        draw.text((right - 170, bottom - 45 + 18 * k), tag, fill=color, font=font)
    draw.text((left, bottom + 5), "0", fill="black", font=font)
    draw.text((right - 40, bottom + 5), f"{int(x_max)}", fill="black", font=font)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("learning_curve.png"))
    parser.add_argument("--title", default="NumberLine, tiny LLaVA, CandidateActionSpace (CPU)")
    args = parser.parse_args()
    plot(read_scalars(args.log_dir), "train/env_steps", args.title).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
