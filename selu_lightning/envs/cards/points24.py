"""Points24: the 24 game with four cards, one formula token per step; an exact solver reports solvability."""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from typing import Any, Sequence

from selu_lightning.envs.base import register_env
from selu_lightning.envs.cards.ezpoints import FormulaCardEnv
from selu_lightning.envs.cards.render import SUITS, Card

__all__ = ["Points24Env", "solve24"]


def _wrap(expr: str) -> str:
    return expr if expr.isdigit() else f"( {expr} )"


@lru_cache(maxsize=None)
def _reachable(values: tuple[int, ...]) -> dict[Fraction, str]:
    """Every exact value a sorted multiset of numbers can make with + - * / and parentheses, each with one
    formula (space-separated tokens) that makes it."""
    if len(values) == 1:
        return {Fraction(values[0]): str(values[0])}
    out: dict[Fraction, str] = {}
    for left, right in _splits(values):
        for a, ea in _reachable(left).items():
            for b, eb in _reachable(right).items():
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
def _solve(values: tuple[int, ...], target: int) -> str | None:
    if len(values) < 4:
        return _reachable(values).get(Fraction(target))
    t = Fraction(target)
    # Top level: for a value a of one part, the other part must make the b that gives a (op) b == target.
    for left, right in _splits(values):
        other = _reachable(right)
        for a, ea in _reachable(left).items():
            ea_ = _wrap(ea)
            wanted = [(t - a, "{a} + {b}"), (a - t, "{a} - {b}"), (t + a, "{b} - {a}")]
            if a:
                wanted += [(t / a, "{a} * {b}"), (t * a, "{b} / {a}")]
                if t:
                    wanted.append((a / t, "{a} / {b}"))
            for b, form in wanted:
                if b in other:
                    return form.format(a=ea_, b=_wrap(other[b]))
    return None


def solve24(values: Sequence[int], target: int = 24) -> str | None:
    """A formula (space-separated tokens) using every value exactly once with + - * / and parentheses whose
    exact value is ``target``, or None if there is none. Exact: rational arithmetic with ``Fraction``."""
    return _solve(tuple(sorted(int(v) for v in values)), int(target))


@register_env("points24")
class Points24Env(FormulaCardEnv):
    """Four cards, target 24, actions "1".."10", "+", "-", "*", "/", "(", ")", "=" (rules in
    ``FormulaCardEnv``; formula limit 20). Deal: four ranks 1..13 with replacement (A = 1, J/Q/K = 10), no
    solvability filter; ``info["solvable"]`` says whether the cards can make 24 (exact solver ``solve24``).

    obs text: ``"Cards: 4, 6, A, K\\nFormula: ( 4 + 6 )"``; ``info["formula"]``: ``"( 4 + 6 )"``.
    """

    task_description = (
        "You are playing Points24. You are given four cards; an ace counts as 1 and J, Q and K count as 10. Build "
        'a formula that equals exactly 24, one token per step: a card\'s number ("1" to "10"), "+", "-", "*", '
        '"/", "(" or ")". Use each card exactly once (numbers cannot be joined into bigger numbers), then choose '
        '"=" to finish. A number that is not on one of your unused cards costs a point and leaves a blank "_" in '
        'the formula. "=" ends the game: 10 points if the formula equals 24 and uses all four cards, otherwise '
        '-1. Choose "=" before the formula grows past 20 tokens, or the game ends with -1.'
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
        info["solvable"] = solve24([c.value for c in self.cards], self.target) is not None  # cached per deal
        return info
