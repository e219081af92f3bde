"""Draw a text-described scene as a 300x300 frame (for simulators whose observation is text or a graph).

The picture is a schematic, not a photograph: a title bar (where the agent is), then one tile per visible
object with its name and state. It gives image-reading policies the same facts the text gives, laid out
spatially and deterministically (same scene -> same pixels).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from selu_lightning.envs.cards.render import font

__all__ = ["render_scene"]

_BG = (245, 243, 236)
_TITLE = (52, 73, 94)
_TILE = (255, 255, 255)
_EDGE = (120, 120, 120)
_PALETTE = [(231, 76, 60), (46, 134, 193), (39, 174, 96), (243, 156, 18), (142, 68, 173), (22, 160, 133)]


def render_scene(title: str, items: Sequence[tuple[str, str]], size: int = 300, footer: str = "") -> np.ndarray:
    """``items``: (name, state) per visible object, drawn as up to 12 tiles in a 3x4 grid (more are counted)."""
    img = Image.new("RGB", (300, 300), _BG)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 299, 34], fill=_TITLE)
    draw.text((8, 8), title[:38], fill=(255, 255, 255), font=font(16))
    shown = list(items)[:12]
    for k, (name, state) in enumerate(shown):
        col, row = k % 3, k // 3
        x0, y0 = 6 + col * 98, 42 + row * 58
        draw.rectangle([x0, y0, x0 + 92, y0 + 52], fill=_TILE, outline=_EDGE)
        color = _PALETTE[sum(map(ord, name)) % len(_PALETTE)]
        draw.ellipse([x0 + 4, y0 + 4, x0 + 16, y0 + 16], fill=color)
        draw.text((x0 + 20, y0 + 3), name[:10], fill=(20, 20, 20), font=font(13))
        draw.text((x0 + 6, y0 + 26), state[:14], fill=(90, 90, 90), font=font(12))
    extra = len(items) - len(shown)
    note = (f"+{extra} more  " if extra > 0 else "") + footer
    if note:
        draw.text((8, 280), note[:44], fill=(60, 60, 60), font=font(13))
    if size != 300:
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()
