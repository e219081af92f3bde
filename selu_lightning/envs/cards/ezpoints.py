"""EZPoints: write a formula worth 12 from two cards, one token per step; plus the formula machinery it
shares with Points24 (exact evaluation, hand bookkeeping, rewards)."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from functools import lru_cache
from typing import Any, ClassVar, Sequence

import numpy as np
from PIL import Image

from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.envs.cards.render import (
    CANVAS,
    FELT,
    SUITS,
    WHITE,
    Card,
    card_face,
    draw_lines,
    paste_row,
    parse_rank,
    to_array,
    wrap_words,
)

__all__ = ["FormulaCardEnv", "EZPointsEnv", "evaluate_formula", "BLANK"]

#: What a rejected number leaves in the formula: it takes a slot (length limit) but is ignored when evaluating.
BLANK = "_"
NUMBER_ACTIONS = tuple(str(n) for n in range(1, 11))


def evaluate_formula(tokens: Sequence[str]) -> Fraction | None:
    """Exact value of a token list (numbers, + - * / and parentheses; ``BLANK`` ignored), or None if invalid.

    Grammar: ``expr := term (("+"|"-") term)*``, ``term := factor (("*"|"/") factor)*``,
    ``factor := number | "(" expr ")"``. So there are no unary signs, adjacent numbers never merge into one
    ("1", "2" is invalid, not 12), and division by zero is invalid.
    """
    toks = [t for t in tokens if t != BLANK]
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def factor() -> Fraction:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise ValueError("formula ends early")
        pos += 1
        if tok.isdigit():
            return Fraction(int(tok))
        if tok == "(":
            value = expr()
            if peek() != ")":
                raise ValueError("unclosed parenthesis")
            pos += 1
            return value
        raise ValueError(f"unexpected {tok!r}")

    def term() -> Fraction:
        nonlocal pos
        value = factor()
        while peek() in ("*", "/"):
            op = toks[pos]
            pos += 1
            rhs = factor()
            value = value * rhs if op == "*" else value / rhs  # ZeroDivisionError -> invalid
        return value

    def expr() -> Fraction:
        nonlocal pos
        value = term()
        while peek() in ("+", "-"):
            op = toks[pos]
            pos += 1
            rhs = term()
            value = value + rhs if op == "+" else value - rhs
        return value

    try:
        value = expr()
    except (ValueError, ZeroDivisionError):
        return None
    return value if pos == len(toks) else None


@lru_cache(maxsize=64)
def _table(cards: tuple[Card, ...], target: int, card_w: int, card_h: int, card_top: int) -> Image.Image:
    # The part of the frame fixed for an episode; each step copies it and writes the formula.
    img = Image.new("RGB", (CANVAS, CANVAS), FELT)
    draw_lines(img, [f"Target: {target}"], (12, 10), size=22, fill=WHITE)
    paste_row(img, [card_face(c, card_w, card_h) for c in cards], top=card_top)
    return img


class FormulaCardEnv(TextVisualEnv):
    """A formula card game: each step appends one token; "=" evaluates the formula and ends the episode.

    - A number ("1".."10"; aces count 1, J/Q/K count 10) not among the unused cards' values: -1, and ``BLANK``
      is appended instead (it takes a formula slot but is ignored by evaluation). Any action string that is not
      a legal action is treated the same way.
    - An operator or parenthesis: appended, reward 0 (syntax is only checked at "=").
    - "=": +10 if the formula's exact value is ``target`` and every card was used, else -1 (also for an
      incomplete or invalid formula, see ``evaluate_formula``); terminates. "=" is not appended.
    - A step that starts with more than ``max_formula_len`` tokens in the formula: -1, truncated, no change.

    ``reset(options={"state": {"cards": [5, "K"]}})`` deals the given ranks (suits still drawn from the seed).
    """

    target: ClassVar[int]
    max_formula_len: ClassVar[int]
    operators: ClassVar[tuple[str, ...]]
    n_cards: ClassVar[int]
    card_size: ClassVar[tuple[int, int]]
    card_top: ClassVar[int]
    formula_top: ClassVar[int]

    def __init__(self, text_state: bool = True, image_size: int = 300) -> None:
        super().__init__(text_state=text_state, image_size=image_size)
        self.render_mode = "rgb_array"
        self.legal_actions = [*NUMBER_ACTIONS, *self.operators, "="]
        self._over = True

    def _deal(self) -> list[Card]:
        raise NotImplementedError

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        state = (options or {}).get("state")
        if state is None:
            self.cards = self._deal()
        else:
            ranks = [parse_rank(r) for r in state["cards"]]
            if len(ranks) != self.n_cards:
                raise ValueError(f"{type(self).__name__} needs {self.n_cards} cards; got {state['cards']}")
            suits = self.np_random.integers(0, 4, size=len(ranks))
            self.cards = [Card(r, SUITS[s]) for r, s in zip(ranks, suits)]
        self.formula: list[str] = []
        self._unused = Counter(c.value for c in self.cards)
        self._success = False
        self._over = False
        w, h = self.card_size
        self._background = _table(tuple(self.cards), self.target, w, h, self.card_top)
        self._frame = self._draw()
        return self._obs(), self._info()

    def step(self, action: str):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset()")
        terminated = truncated = False
        if len(self.formula) > self.max_formula_len:
            reward, truncated = -1.0, True
        elif action == "=":
            value = evaluate_formula(self.formula)
            self._success = value == self.target and sum(self._unused.values()) == 0
            reward, terminated = (10.0 if self._success else -1.0), True
        elif action in self.operators:
            self.formula.append(action)
            reward = 0.0
        elif action in NUMBER_ACTIONS and self._unused[int(action)] > 0:
            self._unused[int(action)] -= 1
            self.formula.append(action)
            reward = 0.0
        else:  # a number not in hand (or already used), or not a legal action at all
            self.formula.append(BLANK)
            reward = -1.0
        self._over = terminated or truncated
        self._frame = self._draw()
        return self._obs(), reward, terminated, truncated, self._info()

    def render(self) -> np.ndarray:
        return self._frame

    @property
    def formula_text(self) -> str:
        return " ".join(self.formula)

    def _draw(self) -> np.ndarray:
        img = self._background.copy()
        lines = wrap_words(f"Formula: {self.formula_text}".rstrip(), 22, CANVAS - 24)
        draw_lines(img, lines, (12, self.formula_top), size=22, fill=WHITE)
        return to_array(img, self.image_size)

    def _obs(self) -> dict[str, Any]:
        if not self.text_state:
            return {"image": self._frame, "text": ""}
        cards = ", ".join(c.name for c in self.cards)
        return {"image": self._frame, "text": f"Cards: {cards}\nFormula: {self.formula_text}".rstrip()}

    def _info(self) -> dict[str, Any]:
        return {
            "legal_actions": list(self.legal_actions),
            "goal": f"Write a formula that equals {self.target} using each of the {self.n_cards} cards exactly once.",
            "success": self._success,
            "formula": self.formula_text,
        }


@register_env("ezpoints")
class EZPointsEnv(FormulaCardEnv):
    """Two cards, target 12, actions "1".."10", "+", "*", "=" (rules in ``FormulaCardEnv``; formula limit 5).

    Deal: card 1 has rank 2..13 (J/Q/K count 10); if its value is in {2, 3, 4, 6}, card 2 has value 12/value
    with probability 0.5, otherwise 12 - value; the two are swapped with probability 0.5. So every deal is
    solvable with "+" or "*". Card 2's rank is its value (a 10, never J/Q/K).

    obs text: ``"Cards: 5, 7\\nFormula: 5 +"``; ``info["formula"]``: ``"5 +"``.
    """

    task_description = (
        "You are playing EZPoints. You are given two cards; J, Q and K count as 10. Build a formula that equals "
        'exactly 12, one token per step: a card\'s number ("1" to "10"), "+" or "*". Use each card exactly once, '
        'then choose "=" to finish. A number that is not on one of your unused cards costs a point and leaves a '
        'blank "_" in the formula. "=" ends the game: 10 points if the formula equals 12 and uses both cards, '
        'otherwise -1. Choose "=" before the formula grows past 5 tokens, or the game ends with -1.'
    )
    target = 12
    max_formula_len = 5
    operators = ("+", "*")
    n_cards = 2
    card_size = (110, 154)
    card_top = 48
    formula_top = 222

    def _deal(self) -> list[Card]:
        rng = self.np_random
        rank = int(rng.integers(2, 14))
        value = min(rank, 10)
        if value in (2, 3, 4, 6) and rng.random() < 0.5:
            other = 12 // value
        else:
            other = 12 - value
        suits = rng.integers(0, 4, size=2)
        cards = [Card(rank, SUITS[suits[0]]), Card(other, SUITS[suits[1]])]
        if rng.random() < 0.5:
            cards.reverse()
        return cards
