"""Pillow drawing shared by the card games: card faces and backs drawn in code, text labels, frame export.

Everything that does not change within an episode (fonts, card faces, card backs) is cached, so a step only
pastes cached pieces and draws a line or two of text (well under 2 ms for a 300x300 frame).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CANVAS",
    "SUITS",
    "Card",
    "parse_rank",
    "font",
    "card_face",
    "card_back",
    "paste_row",
    "draw_lines",
    "wrap_words",
    "to_array",
    "FELT",
    "WHITE",
    "BLACK",
    "RED",
]

#: Base canvas size the layouts are written for; other ``image_size`` values are resized from it.
CANVAS = 300
FELT = (38, 110, 72)
WHITE = (255, 255, 255)
BLACK = (20, 20, 20)
RED = (200, 30, 40)
BACK_BLUE = (40, 70, 160)

SUITS = ("S", "H", "D", "C")  # spades, hearts, diamonds, clubs
_RANK_NAMES = {1: "A", 11: "J", 12: "Q", 13: "K"}
_NAME_RANKS = {"A": 1, "J": 11, "Q": 12, "K": 13}


class Card(NamedTuple):
    """A playing card: ``rank`` 1 (ace) .. 13 (king) and ``suit`` one of ``SUITS``."""

    rank: int
    suit: str

    @property
    def name(self) -> str:
        """"A", "2".."10", "J", "Q" or "K"."""
        return _RANK_NAMES.get(self.rank, str(self.rank))

    @property
    def value(self) -> int:
        """Points value with face cards counting 10 and the ace 1."""
        return min(self.rank, 10)


def parse_rank(rank: int | str) -> int:
    """A rank given as an int 1..13 or a name ("A", "2".."10", "J", "Q", "K") -> int 1..13."""
    if isinstance(rank, str):
        key = rank.strip().upper()
        rank = _NAME_RANKS[key] if key in _NAME_RANKS else int(key) if key.isdigit() else 0
    if not isinstance(rank, (int, np.integer)) or not 1 <= rank <= 13:
        raise ValueError(f"card rank must be 1..13 or one of A, 2..10, J, Q, K; got {rank!r}")
    return int(rank)


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (no font files needed), one object per size."""
    return ImageFont.load_default(size=size)


def _draw_suit(draw: ImageDraw.ImageDraw, suit: str, cx: float, cy: float, s: float) -> None:
    """A suit symbol of half-height ``s`` centred on (cx, cy), drawn from circles and polygons."""
    color = RED if suit in ("H", "D") else BLACK
    r = s * 0.5
    if suit == "D":
        draw.polygon([(cx, cy - s), (cx + 0.72 * s, cy), (cx, cy + s), (cx - 0.72 * s, cy)], fill=color)
    elif suit == "H":
        for dx in (-r, r):
            draw.ellipse([cx + dx - r, cy - 0.45 * s - r, cx + dx + r, cy - 0.45 * s + r], fill=color)
        draw.polygon([(cx - 2 * r + 0.5, cy - 0.3 * s), (cx + 2 * r - 0.5, cy - 0.3 * s), (cx, cy + s)], fill=color)
    elif suit == "S":
        for dx in (-r, r):
            draw.ellipse([cx + dx - r, cy + 0.15 * s - r, cx + dx + r, cy + 0.15 * s + r], fill=color)
        draw.polygon([(cx - 2 * r + 0.5, cy + 0.05 * s), (cx + 2 * r - 0.5, cy + 0.05 * s), (cx, cy - s)], fill=color)
        draw.polygon([(cx, cy + 0.2 * s), (cx - 0.4 * s, cy + s), (cx + 0.4 * s, cy + s)], fill=color)
    elif suit == "C":
        cr = s * 0.42
        for x, y in ((cx, cy - 0.5 * s), (cx - 0.5 * s, cy + 0.15 * s), (cx + 0.5 * s, cy + 0.15 * s)):
            draw.ellipse([x - cr, y - cr, x + cr, y + cr], fill=color)
        draw.polygon([(cx, cy - 0.1 * s), (cx - 0.4 * s, cy + s), (cx + 0.4 * s, cy + s)], fill=color)
    else:
        raise ValueError(f"unknown suit {suit!r}; expected one of {SUITS}")


def _blank_card(width: int, height: int, fill: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    radius = max(3, width // 10)
    draw.rounded_rectangle([0, 0, width - 1, height - 1], radius=radius, fill=fill, outline=(90, 90, 90), width=2)
    return img, draw


@lru_cache(maxsize=256)
def card_face(card: Card, width: int, height: int) -> Image.Image:
    """The face of ``card`` as an RGBA image (transparent outside the rounded corners). Do not mutate."""
    img, draw = _blank_card(width, height, WHITE)
    color = RED if card.suit in ("H", "D") else BLACK
    corner = font(max(10, width // 4))
    pad = max(3, width // 14)
    draw.text((pad, pad), card.name, fill=color, font=corner)
    # Small suit under the corner rank, big rank + suit in the middle: readable even when cards overlap.
    small = max(3, width // 12)
    _draw_suit(draw, card.suit, pad + small + 1, pad + corner.size + small + 4, small)
    big = font(max(12, width // 3))
    draw.text((width / 2, height * 0.45), card.name, fill=color, font=big, anchor="mm")
    _draw_suit(draw, card.suit, width / 2, height * 0.75, max(4, width // 8))
    return img


@lru_cache(maxsize=16)
def card_back(width: int, height: int) -> Image.Image:
    """A face-down card as an RGBA image. Do not mutate."""
    img, draw = _blank_card(width, height, WHITE)
    inset = max(4, width // 10)
    draw.rounded_rectangle([inset, inset, width - 1 - inset, height - 1 - inset], radius=3, fill=BACK_BLUE)
    dot = (120, 150, 220)
    for row, y in enumerate(range(inset + 5, height - inset - 3, 7)):
        for x in range(inset + 5 + (3 if row % 2 else 0), width - inset - 3, 7):
            draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=dot)
    return img


def paste_row(
    canvas: Image.Image, cards: Sequence[Image.Image], top: int, left: int = 10, right: int = CANVAS - 10
) -> None:
    """Paste card images left to right, centred in [left, right]; overlap them when they do not fit side by side."""
    if not cards:
        return
    width = cards[0].width
    gap = max(4, width // 10)
    step = width + gap
    span = right - left
    if len(cards) > 1 and width + step * (len(cards) - 1) > span:
        step = (span - width) / (len(cards) - 1)
    total = width + step * (len(cards) - 1)
    x = left + (span - total) / 2
    for img in cards:
        canvas.paste(img, (int(round(x)), top), img)
        x += step


def wrap_words(text: str, size: int, max_width: int) -> list[str]:
    """Greedy word wrap of ``text`` so that each line is at most ``max_width`` pixels in ``font(size)``; a word
    wider than a line (a formula written without spaces) is broken between characters."""
    f = font(size)
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if line and f.getlength(candidate) > max_width:
            lines.append(line)
            line = word
        else:
            line = candidate
        while len(line) > 1 and f.getlength(line) > max_width:
            cut = len(line) - 1
            while cut > 1 and f.getlength(line[:cut]) > max_width:
                cut -= 1
            lines.append(line[:cut])
            line = line[cut:]
    lines.append(line)
    return lines


@lru_cache(maxsize=4096)
def _text_mask(text: str, size: int) -> tuple[Image.Image, int, int]:
    # Rasterising text costs ~0.15 ms a call; labels and formulas repeat, so keep their coverage masks.
    f = font(size)
    left, top, right, bottom = f.getbbox(text)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=f)
    return mask, left, top


def draw_lines(
    canvas: Image.Image, lines: Sequence[str], xy: tuple[int, int], size: int, fill=BLACK, spacing: int = 4
) -> None:
    """Draw ``lines`` top-down starting at ``xy`` (the top-left of the first line's text box)."""
    x, y = xy
    for line in lines:
        mask, dx, dy = _text_mask(line, size)
        canvas.paste(fill, (x + dx, y + dy, x + dx + mask.width, y + dy + mask.height), mask)
        y += size + spacing


def to_array(canvas: Image.Image, image_size: int) -> np.ndarray:
    """The frame as a fresh ``uint8[image_size, image_size, 3]`` array (resized when not ``CANVAS``)."""
    if canvas.size != (image_size, image_size):
        canvas = canvas.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.array(canvas.convert("RGB") if canvas.mode != "RGB" else canvas, dtype=np.uint8)
