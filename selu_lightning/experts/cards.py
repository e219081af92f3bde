"""Experts for RL4VLM's card games: NumberLine, EZPoints, Points24 and Blackjack.

Each reads the env's observation text (``text_state=True``) and ``info["goal"]``:

- NumberLine ``"Target: 3\\nCurrent: 1"``: step toward the target.
- EZPoints / Points24 ``"Cards: 4, 6, A, K\\nFormula: (4+6)"``: a formula over the cards worth the target,
  written one token per step. The plan is the first formula (the env's ``solve24`` answer first, then every
  other fully parenthesised one) whose tokens start with what is already written; when nothing written so far
  can still be completed (a noisy step wrote a wrong token), the expert ends the episode with "=".
- Blackjack ``"Dealer shows: 7\\nYour cards: 5, K (total 15)"``: basic strategy restricted to hit/stand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from typing import Any, ClassVar

import numpy as np

from selu_lightning.envs.cards.formula import ARITHMETICS, BLANK, evaluate_formula, formula_source
from selu_lightning.envs.cards.points24 import solve24
from selu_lightning.envs.cards.render import parse_rank
from selu_lightning.errors import ConfigError
from selu_lightning.experts.base import Expert, ExpertStep

__all__ = ["NumberLineExpert", "FormulaExpert", "EZPointsExpert", "Points24Expert", "BlackjackExpert"]


def _line(obs_text: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}:[ ]?(.*)$", obs_text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {label!r} line in the observation text {obs_text!r} (build the env with text_state=True)")
    return match.group(1)


def _choose(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


# ------------------------------------------------------------------------------------------------- NumberLine
class NumberLineExpert(Expert):
    """Move toward the target: "+" when the current number is below it, "-" when above."""

    fields = ("current number", "target number", "thoughts", "action")

    def read(self, obs_text: str, info: dict[str, Any]) -> tuple[int, int]:
        return int(_line(obs_text, "Current")), int(_line(obs_text, "Target"))

    @staticmethod
    def _step(current: int, target: int, action: str, correct: bool) -> ExpertStep:
        # ``correct=False`` writes the comparison the wrong way round, so the thoughts argue for ``action``.
        below = (current < target) == correct
        relation = "less than" if below else "greater than"
        move = "increase" if action == "+" else "decrease"
        thoughts = (
            f"The current number is {current} and the target is {target}. {current} is {relation} {target}, "
            f"so I should {move} the current number."
        )
        fields = {"current number": str(current), "target number": str(target)}
        return ExpertStep(action, thoughts, fields, correct)

    def best(self, state: tuple[int, int], legal_actions: list[str]) -> ExpertStep:
        current, target = state
        if current == target:
            raise ValueError(f"NumberLine: the current number is already the target ({target}); the episode is over")
        return self._step(current, target, "+" if current < target else "-", True)

    def wrong(self, state, best, legal_actions, rng) -> ExpertStep:
        current, target = state
        options = [a for a in legal_actions if a != best.action]
        return self._step(current, target, _choose(rng, options), False)


# -------------------------------------------------------------------------------------------- formula games
_OPERATORS = ("+", "-", "*", "/")


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_LEAF = 3  # a number binds tighter than any operator


def _wrap(tokens: tuple[str, ...], needed: bool = True) -> tuple[str, ...]:
    return ("(", *tokens, ")") if needed and len(tokens) > 1 else tokens


@lru_cache(maxsize=None)
def _expressions(
    values: tuple[int, ...], operators: tuple[str, ...], target: int | None = None
) -> tuple[tuple[tuple[str, ...], tuple[str, ...], int, Fraction], ...]:
    """Every formula tree over a sorted multiset of numbers (each used once, any order) with the given binary
    operators, as ``(fully parenthesised tokens, tokens with only the parentheses precedence needs, precedence
    of the top operator, exact value)``; only those worth ``target`` if given (the top level is the bulk of
    the work, and only its solutions are needed)."""
    if len(values) == 1:
        leaf = (str(values[0]),)
        return ((leaf, leaf, _LEAF, Fraction(values[0])),)
    out: list[tuple[tuple[str, ...], tuple[str, ...], int, Fraction]] = []
    n = len(values)
    for k in range(1, n):
        for idx in combinations(range(n), k):
            left = tuple(values[i] for i in idx)
            right = tuple(values[i] for i in range(n) if i not in idx)
            for fa, ma, pa, a in _expressions(left, operators):
                for fb, mb, pb, b in _expressions(right, operators):
                    for op in operators:
                        if op == "/" and b == 0:
                            continue
                        value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
                        if target is not None and value != target:
                            continue
                        prec = _PRECEDENCE[op]
                        full = (*_wrap(fa), op, *_wrap(fb))
                        # the right operand of - and / (or any lower-precedence operand) keeps its parentheses
                        minimal = (*_wrap(ma, pa < prec), op, *_wrap(mb, pb < prec or (pb == prec and op in "-/")))
                        out.append((full, minimal, prec, value))
    return tuple(out)


@lru_cache(maxsize=4096)
def _solutions(values: tuple[int, ...], target: int, operators: tuple[str, ...], parens: bool, arithmetic: str):
    """Token tuples that score ``target`` under the env's rule: the env's own ``solve24`` answer first, then
    every tree written with as few parentheses as precedence allows, then fully parenthesised."""
    found: dict[tuple[str, ...], None] = {}
    if set(_OPERATORS) <= set(operators) and parens:
        first = solve24(values, target, arithmetic)
        if first is not None:
            found[tuple(first.split())] = None
    trees = _expressions(values, operators, target)
    for tokens in [t[1] for t in trees] + [t[0] for t in trees]:
        if tokens not in found and (parens or "(" not in tokens):
            if evaluate_formula(tokens, arithmetic) == target:  # the env's rule decides (float rounding)
                found[tokens] = None
    return tuple(found)


def _formula_tokens(text: str, arithmetic: str) -> list[str]:
    """The formula's tokens back from the env's ``formula_text``. "python": the tokens joined with no
    separator (a blank is a space); the number actions are 1..10 and no action is "0", so a "0" always closes
    a "10". "exact": tokens separated by spaces, a blank shown as "_"."""
    if arithmetic == "exact":
        return [BLANK if t == "_" else t for t in text.split()]
    tokens: list[str] = []
    for char in text:
        if char == "0":
            if not tokens or tokens[-1] != "1":
                raise ValueError(f"cannot read formula {text!r}: a 0 not after a 1")
            tokens[-1] = "10"
        else:
            tokens.append(char)
    return tokens


@dataclass(frozen=True)
class _FormulaState:
    cards: tuple[int, ...]  # card values as shown (A = 1, J/Q/K = 10), in the order shown
    prefix: tuple[str, ...]  # formula tokens written so far
    target: int


class FormulaExpert(Expert):
    """EZPoints and Points24: write a formula worth the target over all the cards, one token per step."""

    default_target: ClassVar[int]
    fields = ("cards", "formula", "thoughts", "action")

    def __init__(self, noise: float = 0.0, arithmetic: str = "python") -> None:
        """
        Args:
            noise: Probability of a wrong token (with thoughts that argue for it) at each step.
            arithmetic: The env's ``arithmetic`` ("python" or "exact"): how its formula text is written and
                scored.
        """
        super().__init__(noise)
        if arithmetic not in ARITHMETICS:
            raise ConfigError(f"{type(self).__name__}: arithmetic must be one of {ARITHMETICS} (got {arithmetic!r})")
        self.arithmetic = arithmetic

    def read(self, obs_text: str, info: dict[str, Any]) -> _FormulaState:
        cards = tuple(min(parse_rank(c), 10) for c in _line(obs_text, "Cards").split(","))
        prefix = tuple(_formula_tokens(_line(obs_text, "Formula"), self.arithmetic))
        match = re.search(r"equals (\d+)", str(info.get("goal", "")))
        return _FormulaState(cards, prefix, int(match.group(1)) if match else self.default_target)

    def plans(self, state: _FormulaState, legal_actions: list[str]) -> tuple[tuple[str, ...], ...]:
        """Every formula this expert would write for the deal (its first one is the plan from scratch)."""
        operators = tuple(op for op in _OPERATORS if op in legal_actions)
        parens = "(" in legal_actions and ")" in legal_actions
        return _solutions(tuple(sorted(state.cards)), state.target, operators, parens, self.arithmetic)

    def _show(self, tokens) -> str:
        if self.arithmetic == "python":
            return formula_source(tokens)
        return " ".join("_" if t == BLANK else t for t in tokens)

    def _fields(self, state: _FormulaState) -> dict[str, Any]:
        return {"cards": list(state.cards), "formula": self._show(state.prefix)}

    def _opening(self, state: _FormulaState) -> str:
        cards = ", ".join(map(str, state.cards))
        written = f"the formula so far is '{self._show(state.prefix)}'" if state.prefix else "the formula is empty"
        return f"The cards are {cards} and {written}."

    def best(self, state: _FormulaState, legal_actions: list[str]) -> ExpertStep:
        plans = self.plans(state, legal_actions)
        n = len(state.prefix)
        opening = self._opening(state)
        if state.prefix in plans:
            action = "="
            reason = (
                f"It uses every card once and equals {state.target}, so the formula is complete: I finish with '='."
            )
        else:
            plan = next((p for p in plans if p[:n] == state.prefix), None)
            if plan is None:
                action = "="
                if not plans:
                    reason = f"No formula over these cards equals {state.target}, so I finish at once with '='."
                else:
                    reason = (
                        f"No formula that starts this way can use every card once and equal {state.target}, so "
                        "I stop here with '='."
                    )
            else:
                action = plan[n]
                reason = (
                    f"The formula {self._show(plan)} uses every card once and equals {state.target}; it starts "
                    f"with what is written, so the next symbol is '{action}'."
                )
        return ExpertStep(action, f"{opening} {reason}", self._fields(state), True)

    def wrong(self, state: _FormulaState, best: ExpertStep, legal_actions: list[str], rng) -> ExpertStep:
        plans = self.plans(state, legal_actions)
        n = len(state.prefix)
        on_track = {p[n] for p in plans if len(p) > n and p[:n] == state.prefix}
        if state.prefix in plans:
            on_track.add("=")
        # Prefer a token that leaves no plan open; every other action is still wrong for this expert.
        options = [a for a in legal_actions if a != best.action and a not in on_track]
        options = options or [a for a in legal_actions if a != best.action]
        action = _choose(rng, options)
        if action == "=":
            reason = f"The formula is complete and equals {state.target}, so I finish with '='."
        elif action.isdigit():
            reason = (
                f"I still have a {action} to use, and appending '{action}' keeps the formula on the way to "
                f"{state.target}."
            )
        else:
            reason = f"Appending '{action}' next keeps the formula on the way to {state.target}."
        return ExpertStep(action, f"{self._opening(state)} {reason}", self._fields(state), False)


class EZPointsExpert(FormulaExpert):
    """Two cards, target 12: "a+b" or "a*b"."""

    default_target = 12


class Points24Expert(FormulaExpert):
    """Four cards, target 24: the env's ``solve24`` formula (or another one consistent with what is written)."""

    default_target = 24


# -------------------------------------------------------------------------------------------------- Blackjack
@dataclass(frozen=True)
class _HandState:
    dealer: str  # the up-card as shown ("A", "2".."10", "J", "Q", "K")
    cards: tuple[str, ...]
    total: int
    soft: bool  # an ace counts 11 in ``total``


def basic_strategy(total: int, soft: bool, dealer_value: int) -> str:
    """Hit/stand basic strategy for a dealer who stands on soft 17 (``dealer_value``: 2..10, ace 11)."""
    if soft:
        return "stand" if total >= 19 or (total == 18 and dealer_value <= 8) else "hit"
    if total >= 17:
        return "stand"
    if 13 <= total <= 16:
        return "stand" if dealer_value <= 6 else "hit"
    if total == 12:
        return "stand" if 4 <= dealer_value <= 6 else "hit"
    return "hit"


class BlackjackExpert(Expert):
    """Basic strategy from the player's total (hard or soft) and the dealer's up-card."""

    fields = ("dealer card", "player total", "thoughts", "action")

    def read(self, obs_text: str, info: dict[str, Any]) -> _HandState:
        dealer = _line(obs_text, "Dealer shows").strip()
        match = re.fullmatch(r"(.*) \(total (\d+)\)", _line(obs_text, "Your cards").strip())
        if match is None:
            raise ValueError(f"cannot read the player's cards in {obs_text!r}")
        cards = tuple(c.strip() for c in match.group(1).split(","))
        hard = sum(min(parse_rank(c), 10) for c in cards)
        soft = any(parse_rank(c) == 1 for c in cards) and hard + 10 <= 21
        total = hard + 10 if soft else hard
        if total != int(match.group(2)):
            raise ValueError(f"the cards {cards} total {total}, the text says {match.group(2)}")
        return _HandState(dealer, cards, total, soft)

    @staticmethod
    def _dealer_value(state: _HandState) -> int:
        rank = parse_rank(state.dealer)
        return 11 if rank == 1 else min(rank, 10)

    def _step(self, state: _HandState, action: str, reason: str, correct: bool) -> ExpertStep:
        kind = "soft" if state.soft else "hard"
        thoughts = (
            f"My cards are {', '.join(state.cards)}, a {kind} total of {state.total}; the dealer shows "
            f"{state.dealer}. {reason}"
        )
        return ExpertStep(action, thoughts, {"dealer card": state.dealer, "player total": str(state.total)}, correct)

    def best(self, state: _HandState, legal_actions: list[str]) -> ExpertStep:
        up, total = self._dealer_value(state), state.total
        action = basic_strategy(total, state.soft, up)
        weak = 2 <= up <= 6
        if action == "hit":
            if state.soft:
                reason = (
                    f"The ace can drop back to 1, so a card cannot take me over 21, and soft {total} is unlikely "
                    f"to win against a dealer {state.dealer}, so I hit."
                )
            elif total <= 11:
                reason = f"No card can take {total} over 21, so I hit."
            else:
                reason = (
                    f"The dealer's {state.dealer} is strong and will likely reach 17 or more, so {total} would "
                    "lose if I stood; I hit."
                )
        elif total >= 17 or (state.soft and total >= 18 and not weak):
            reason = f"{total} is a strong total and a hit risks losing it, so I stand."
        else:
            reason = (
                f"The dealer's {state.dealer} is weak and must draw to 17, often going over 21; rather than risk "
                f"my {total}, I stand."
            )
        return self._step(state, action, reason, True)

    def wrong(self, state: _HandState, best: ExpertStep, legal_actions: list[str], rng) -> ExpertStep:
        action = _choose(rng, [a for a in legal_actions if a != best.action])
        if action == "hit":
            reason = (
                f"{state.total} is not enough to beat the dealer's {state.dealer}, so I take another card to "
                "improve it; I hit."
            )
        else:
            reason = f"Another card could take me over 21, so I keep my {state.total} and stand."
        return self._step(state, action, reason, False)
