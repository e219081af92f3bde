"""EZPoints: write a formula worth 12 from two cards, one token per step; plus the formula-game machinery it
shares with Points24 (hand bookkeeping, rewards, scoring by RL4VLM's rule or the exact one)."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.envs.cards.formula import ARITHMETICS, BLANK, evaluate_formula, formula_source
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
from selu_lightning.errors import ConfigError

__all__ = ["FormulaCardEnv", "EZPointsEnv", "evaluate_formula", "BLANK"]

NUMBER_ACTIONS = tuple(str(n) for n in range(1, 11))


@lru_cache(maxsize=64)
def _table(cards: tuple[Card, ...], target: int, card_w: int, card_h: int, card_top: int) -> Image.Image:
    # The part of the frame fixed for an episode; each step copies it and writes the formula.
    img = Image.new("RGB", (CANVAS, CANVAS), FELT)
    draw_lines(img, [f"Target: {target}"], (12, 10), size=22, fill=WHITE)
    paste_row(img, [card_face(c, card_w, card_h) for c in cards], top=card_top)
    return img


class FormulaCardEnv(TextVisualEnv):
    """A formula card game: each step appends one token; "=" scores the formula and ends the episode.

    Rules, as RL4VLM's ``gym-cards/gym_cards/envs/ezpoints.py`` and ``points.py`` (``step``, ``_is_valid_action``,
    ``_evaluate_formula``), checked in this order each step:

    - The formula already holds more than ``max_formula_len`` tokens: -1, truncated, nothing appended.
    - A number ("1".."10"; aces count 1, J/Q/K count 10) that would use a card value more often than the hand
      holds it: -1, and ``BLANK`` (a space) is appended instead. Any string that is not a legal action is
      treated the same way (RL4VLM's envs never receive one: its parser always picks a legal action).
    - An operator or parenthesis: appended, reward 0 (nothing is checked until "=").
    - "=": +10 if every card was used and the formula's value equals ``target``, else -1; terminates; "=" is not
      appended. The value is RL4VLM's (``arithmetic="python"``): the tokens joined with no separator and read
      as Python arithmetic, so "1", "2" is 12, "*", "*" is a power, and ``/`` rounds like a float (see
      ``selu_lightning.envs.cards.formula``). ``arithmetic="exact"``: one number per token, binary + - * / and
      parentheses, exact fractions, blanks ignored (``task_description`` describes the default rule).

    ``success`` is RL4VLM's (``VLM_PPO/main.py``): the episode's return is above 0, i.e. the formula scored +10
    and fewer than 10 numbers were rejected on the way. ``info["solved"]``: the formula scored +10.

    ``info["formula"]``: the formula as the rule reads it: with "python" the joined string (a blank is a
    space: ``"5+ 7"``), with "exact" the tokens separated by spaces and a blank shown as ``_``.
    ``reset(options={"state": {"cards": [5, "K"]}})`` deals the given ranks (suits still drawn from the seed).
    """

    target: ClassVar[int]
    max_formula_len: ClassVar[int]
    operators: ClassVar[tuple[str, ...]]
    n_cards: ClassVar[int]
    card_size: ClassVar[tuple[int, int]]
    card_top: ClassVar[int]
    formula_top: ClassVar[int]

    def __init__(self, text_state: bool = True, image_size: int = 300, arithmetic: str = "python") -> None:
        """
        Args:
            text_state: Also give the cards and formula as text in ``obs["text"]``.
            image_size: Side of the square frame in pixels.
            arithmetic: How "=" reads the formula: "python" (RL4VLM: the joined tokens as a Python
                expression, float rounding included) or "exact" (one number per token, exact fractions).
        """
        if arithmetic not in ARITHMETICS:
            raise ConfigError(f"{type(self).__name__}: arithmetic must be one of {ARITHMETICS} (got {arithmetic!r})")
        super().__init__(text_state=text_state, image_size=image_size)
        self.arithmetic = arithmetic
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
        self.episode_return = 0.0
        self._solved = False
        self._over = False
        w, h = self.card_size
        self._background = _table(tuple(self.cards), self.target, w, h, self.card_top)
        self._frame = self._draw()
        return self._obs(), self._info()

    def formula_value(self) -> Any:
        """The current formula's value under this env's ``arithmetic``, or None if it has none."""
        return evaluate_formula(self.formula, self.arithmetic)

    def step(self, action: str):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset()")
        terminated = truncated = False
        if len(self.formula) > self.max_formula_len:
            reward, truncated = -1.0, True
        elif action == "=":
            value = self.formula_value()
            self._solved = sum(self._unused.values()) == 0 and value is not None and value == self.target
            reward, terminated = (10.0 if self._solved else -1.0), True
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
        self.episode_return += reward
        self._over = terminated or truncated
        self._frame = self._draw()
        return self._obs(), reward, terminated, truncated, self._info()

    def render(self) -> np.ndarray:
        return self._frame

    @property
    def formula_text(self) -> str:
        """The formula as the scoring rule reads it (see the class docstring)."""
        if self.arithmetic == "python":
            return formula_source(self.formula)
        return " ".join("_" if t == BLANK else t for t in self.formula)

    def _draw(self) -> np.ndarray:
        img = self._background.copy()
        lines = wrap_words(f"Formula: {self.formula_text}".rstrip(), 22, CANVAS - 24)
        draw_lines(img, lines, (12, self.formula_top), size=22, fill=WHITE)
        return to_array(img, self.image_size)

    def _obs(self) -> dict[str, Any]:
        if not self.text_state:
            return {"image": self._frame, "text": ""}
        cards = ", ".join(c.name for c in self.cards)
        return {"image": self._frame, "text": f"Cards: {cards}\nFormula: {self.formula_text}"}

    def _info(self) -> dict[str, Any]:
        return {
            "legal_actions": list(self.legal_actions),
            "goal": f"Write a formula that equals {self.target} using each of the {self.n_cards} cards exactly once.",
            "success": self.episode_return > 0,
            "solved": self._solved,
            "formula": self.formula_text,
        }


@register_env("ezpoints")
class EZPointsEnv(FormulaCardEnv):
    """Two cards, target 12, actions "1".."10", "+", "*", "=" (rules in ``FormulaCardEnv``; formula limit 5).

    Deal (RL4VLM's ``EZPointEnv._generate_cards``): card 1 has rank 2..13 (J/Q/K count 10); if its value is in
    {2, 3, 4, 6}, card 2 has value 12/value with probability 0.5 (``random() <= 0.5``), otherwise 12 - value;
    the two are swapped with probability 0.5. So every deal is solvable with "+" or "*". Card 2's rank is its
    value (a 10, never J/Q/K).

    obs text: ``"Cards: 5, 7\\nFormula: 5+"``; ``info["formula"]``: ``"5+"``.
    """

    task_description = (
        "You are playing EZPoints. You are given two cards; J, Q and K count as 10. Build a formula that equals "
        'exactly 12, one token per step: a card\'s number ("1" to "10"), "+" or "*". The tokens are joined and '
        'read as Python arithmetic, so numbers next to each other join into one number ("1" then "2" is 12) and '
        '"*" twice is a power. Use each card exactly once, then choose "=" to finish. A number that is not on one '
        "of your unused cards costs a point and leaves a space in the formula. \"=\" ends the game: 10 points if "
        "the formula equals 12 and uses both cards, otherwise -1. Choose \"=\" before the formula grows past 5 "
        "tokens, or the game ends with -1."
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
        if value in (2, 3, 4, 6) and rng.random() <= 0.5:
            other = 12 // value
        else:
            other = 12 - value
        suits = rng.integers(0, 4, size=2)
        cards = [Card(rank, SUITS[suits[0]]), Card(other, SUITS[suits[1]])]
        if rng.random() <= 0.5:
            cards.reverse()
        return cards
