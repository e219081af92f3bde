"""Points24: the 24 game with four cards, one formula token per step; a solver reports solvability."""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from typing import Any, Sequence

from selu_lightning.envs.base import register_env
from selu_lightning.envs.cards.ezpoints import FormulaCardEnv
from selu_lightning.envs.cards.formula import ARITHMETICS
from selu_lightning.envs.cards.render import SUITS, Card

__all__ = ["Points24Env", "solve24"]


def _wrap(expr: str) -> str:
    return expr if expr.isdigit() else f"( {expr} )"


@lru_cache(maxsize=None)
def _reachable(values: tuple[int, ...], arithmetic: str) -> dict[Any, str]:
    """Every value a sorted multiset of numbers can make with + - * / and parentheses, each with one formula
    (space-separated tokens, every inner operation parenthesised) that makes it.

    "exact": values are ``Fraction``s. "python": Python's own ``int``/``float`` operations in the order the
    formula's parentheses impose, so each value is what RL4VLM's ``eval`` gives for its formula (an ``int`` and
    an equal ``float`` share a key: with operands this small they behave alike in every later operation)."""
    if len(values) == 1:
        leaf = Fraction(values[0]) if arithmetic == "exact" else values[0]
        return {leaf: str(values[0])}
    out: dict[Any, str] = {}
    for left, right in _splits(values):
        for a, ea in _reachable(left, arithmetic).items():
            for b, eb in _reachable(right, arithmetic).items():
                ea_, eb_ = _wrap(ea), _wrap(eb)
                out.setdefault(a + b, f"{ea_} + {eb_}")
                out.setdefault(a - b, f"{ea_} - {eb_}")
                out.setdefault(b - a, f"{eb_} - {ea_}")
                out.setdefault(a * b, f"{ea_} * {eb_}")
                if b:
                    out.setdefault(a / b, f"{ea_} / {eb_}")
                if a:
                    out.setdefault(b / a, f"{eb_} / {ea_}")
    return out


def _splits(values: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The distinct ways to cut a sorted multiset into two non-empty parts (unordered)."""
    n = len(values)
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    for k in range(1, n // 2 + 1):
        for idx in combinations(range(n), k):
            left = tuple(values[i] for i in idx)
            right = tuple(values[i] for i in range(n) if i not in idx)
            seen.add(tuple(sorted((left, right))))  # type: ignore[arg-type]
    return sorted(seen)


@lru_cache(maxsize=None)
def _solve(values: tuple[int, ...], target: int, arithmetic: str) -> str | None:
    # The top level is not cached as a whole: only the formula (or None) for each deal is kept.
    if len(values) == 1:
        return _reachable(values, arithmetic).get(target)
    for left, right in _splits(values):
        for a, ea in _reachable(left, arithmetic).items():
            for b, eb in _reachable(right, arithmetic).items():
                ea_, eb_ = _wrap(ea), _wrap(eb)
                candidates = [(a + b, f"{ea_} + {eb_}"), (a - b, f"{ea_} - {eb_}"), (b - a, f"{eb_} - {ea_}")]
                candidates.append((a * b, f"{ea_} * {eb_}"))
                if b:
                    candidates.append((a / b, f"{ea_} / {eb_}"))
                if a:
                    candidates.append((b / a, f"{eb_} / {ea_}"))
                for value, formula in candidates:
                    if value == target:
                        return formula
    return None


def solve24(values: Sequence[int], target: int = 24, arithmetic: str = "python") -> str | None:
    """A formula (space-separated tokens) of the classic 24 game: every value exactly once, + - * / and
    parentheses, no joined digits, whose value is ``target`` under ``arithmetic``; or None if there is none.

    "python" (RL4VLM's rule) compares Python's float result, so ``8 / ( 3 - 8 / 3 )`` (23.99999999999999) does
    not count and (3, 3, 8, 8) has no solution; "exact" uses fractions. The env also scores formulas outside
    the classic game (joined digits, ``**``, ``//``, unary minus), so "python" unsolvable deals may still be won.
    """
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}; got {arithmetic!r}")
    return _solve(tuple(sorted(int(v) for v in values)), int(target), arithmetic)


@register_env("points24")
class Points24Env(FormulaCardEnv):
    """Four cards, target 24, actions "1".."10", "+", "-", "*", "/", "(", ")", "=" (rules in
    ``FormulaCardEnv``; formula limit 20). Deal (RL4VLM's ``Point24Env._generate_cards``): four ranks 1..13
    with replacement (A = 1, J/Q/K = 10), no solvability filter. ``info["solvable"]``: the values make 24 in the
    classic game as this env scores it (``solve24`` under the env's ``arithmetic``).

    obs text: ``"Cards: 4, 6, A, K\\nFormula: (4+6)"``; ``info["formula"]``: ``"(4+6)"``.
    """

    task_description = (
        "You are playing Points24. You are given four cards; an ace counts as 1 and J, Q and K count as 10. Build "
        'a formula that equals exactly 24, one token per step: a card\'s number ("1" to "10"), "+", "-", "*", '
        '"/", "(" or ")". The tokens are joined and read as Python arithmetic: numbers next to each other join '
        'into one number ("1" then "2" is 12), "*" twice is a power, "/" twice is floor division, and "/" gives '
        "a floating-point result that must equal 24 exactly. Use each card exactly once, then choose \"=\" to "
        "finish. A number that is not on one of your unused cards costs a point and leaves a space in the "
        'formula. "=" ends the game: 10 points if the formula equals 24 and uses all four cards, otherwise -1. '
        'Choose "=" before the formula grows past 20 tokens, or the game ends with -1.'
    )
    target = 24
    max_formula_len = 20
    operators = ("+", "-", "*", "/", "(", ")")
    n_cards = 4
    card_size = (64, 90)
    card_top = 50
    formula_top = 160

    def _deal(self) -> list[Card]:
        ranks = self.np_random.integers(1, 14, size=4)
        suits = self.np_random.integers(0, 4, size=4)
        return [Card(int(r), SUITS[s]) for r, s in zip(ranks, suits)]

    def _info(self) -> dict[str, Any]:
        info = super()._info()
        values = [c.value for c in self.cards]
        info["solvable"] = solve24(values, self.target, self.arithmetic) is not None  # cached per deal
        return info
