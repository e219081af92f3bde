"""How EZPoints and Points24 score a formula, without ever calling ``eval``.

RL4VLM (``gym-cards/gym_cards/envs/ezpoints.py`` and ``points.py``, ``_evaluate_formula``) joins the formula's
tokens into one string with no separator and evaluates it as a Python expression; any exception counts as an
invalid formula. ``python_value`` reproduces that for the characters these games can produce (digits, ``+ - * /
( )`` and the blank an invalid number leaves): the same tokens Python's tokenizer makes of the string, the
same grammar, and Python's own operators on ``int``/``float``/``complex`` values, so the value (float rounding
included) is the one ``eval`` would give. Consequences a reader may not expect:

- adjacent numbers join into one: "1", "2" is 12; a blank between them (``"1 2"``) is a syntax error;
- "*", "*" is ``**`` (power) and "/", "/" is ``//`` (floor division); unary ``+``/``-`` are allowed;
- ``/`` is float division, so ``8 / (3 - 8 / 3)`` is 23.99999999999999, not 24;
- ``()`` is an empty tuple and ``3(4)`` a call: neither has a numeric value (``eval`` gives a tuple or raises).

``exact_value`` is the stricter rule this project used before: one number per token, binary ``+ - * /`` and
parentheses only, exact rational arithmetic, blanks ignored.
"""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import Callable, Sequence

__all__ = [
    "ARITHMETICS",
    "BLANK",
    "POWER_BITS_LIMIT",
    "evaluate_formula",
    "exact_value",
    "formula_source",
    "python_value",
]

#: What an invalid number leaves in the formula (RL4VLM appends a space): a slot that counts towards the length
#: limit; in the string RL4VLM evaluates it is whitespace, so it separates the tokens on either side.
BLANK = " "
#: The ways a formula can be scored: RL4VLM's ("python", the default) and the stricter "exact".
ARITHMETICS = ("python", "exact")
#: ``a ** b`` on ints whose result would have more bits than this is treated as invalid. RL4VLM's ``eval`` would
#: compute it for minutes or run out of memory (``MemoryError``, counted as invalid); with four cards no formula
#: that reaches this size can still come back to the target, so the reward is the same.
POWER_BITS_LIMIT = 1 << 20

Number = int | float | complex
_DIGITS = frozenset("0123456789")
_BINARY: dict[str, Callable[[Number, Number], Number]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
}


class _NoValue(Exception):
    """The formula has no numeric value: a syntax error, a runtime error, or a non-number result."""


def formula_source(tokens: Sequence[str]) -> str:
    """The string RL4VLM evaluates: the tokens joined with no separator (a blank stays a space)."""
    return "".join(tokens)


def _tokenize(source: str) -> list[str]:
    # Python's tokenizer on this alphabet: maximal digit runs are one NUMBER; "**" and "//" are taken greedily.
    tokens, i = [], 0
    while i < len(source):
        char = source[i]
        if char == " ":
            i += 1
        elif char in _DIGITS:
            j = i
            while j < len(source) and source[j] in _DIGITS:
                j += 1
            tokens.append(source[i:j])
            i = j
        elif source.startswith(("**", "//"), i):
            tokens.append(source[i : i + 2])
            i += 2
        elif char in "+-*/()":
            tokens.append(char)
            i += 1
        else:
            raise _NoValue(f"character {char!r} is not part of a formula")
    return tokens


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if (abs(base).bit_length() - 1) * exponent > POWER_BITS_LIMIT:
            raise _NoValue("power too large")
    return base**exponent


class _PythonParser:
    """Python's expression grammar restricted to what the formula alphabet can spell, evaluated as it parses.

    ``sum := term (("+" | "-") term)*``; ``term := factor (("*" | "/" | "//") factor)*``;
    ``factor := ("+" | "-") factor | power``; ``power := atom ["**" factor]``;
    ``atom := NUMBER | "(" sum ")"``. An atom followed by "(" is a call and "(" ")" an empty tuple: both
    make ``eval`` raise or return a non-number, so both end in ``_NoValue``. Evaluating while parsing gives the
    same outcome as Python's parse-then-run: every error, syntax or runtime, means "no value".
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise _NoValue("formula ends early")
        self.pos += 1
        return tok

    def sum(self) -> Number:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            value = _BINARY[op](value, self.term())
        return value

    def term(self) -> Number:
        value = self.factor()
        while self.peek() in ("*", "/", "//"):
            op = self.take()
            value = _BINARY[op](value, self.factor())
        return value

    def factor(self) -> Number:
        if self.peek() == "+":
            self.take()
            return operator.pos(self.factor())
        if self.peek() == "-":
            self.take()
            return operator.neg(self.factor())
        base = self.atom()
        if self.peek() == "(":
            raise _NoValue("a call: TypeError at run time")
        if self.peek() == "**":
            self.take()
            return _power(base, self.factor())
        return base

    def atom(self) -> Number:
        tok = self.take()
        if tok[0] in _DIGITS:
            if tok[0] == "0" and tok.strip("0"):
                raise _NoValue("leading zeros in a decimal literal")
            return int(tok)  # ValueError past Python's int digit limit, as eval's SyntaxError
        if tok == "(":
            if self.peek() == ")":
                raise _NoValue("() is an empty tuple")
            value = self.sum()
            if self.take() != ")":
                raise _NoValue("unclosed parenthesis")
            return value
        raise _NoValue(f"unexpected {tok!r}")


def python_value(tokens: Sequence[str]) -> Number | None:
    """What ``eval("".join(tokens))`` gives, or None where it raises or gives a non-number (RL4VLM's rule).

    Never calls ``eval``. Huge integer powers (over ``POWER_BITS_LIMIT`` bits) count as invalid.
    """
    try:
        parser = _PythonParser(_tokenize(formula_source(tokens)))
        value = parser.sum()
        if parser.pos != len(parser.tokens):
            raise _NoValue("trailing tokens")
        return value
    except (_NoValue, ArithmeticError, TypeError, ValueError, MemoryError):
        return None


def exact_value(tokens: Sequence[str]) -> Fraction | None:
    """Exact value of a token list under the strict rule, or None if invalid.

    Grammar: ``expr := term (("+"|"-") term)*``, ``term := factor (("*"|"/") factor)*``,
    ``factor := number | "(" expr ")"``; ``BLANK`` tokens are ignored. So there are no unary signs, adjacent
    numbers never merge into one ("1", "2" is invalid, not 12), and division by zero is invalid.
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


def evaluate_formula(tokens: Sequence[str], arithmetic: str = "python") -> Number | Fraction | None:
    """The formula's value under ``arithmetic`` ("python": RL4VLM's rule, "exact": the strict one), or None."""
    if arithmetic == "python":
        return python_value(tokens)
    if arithmetic == "exact":
        return exact_value(tokens)
    raise ValueError(f"arithmetic must be one of {ARITHMETICS}; got {arithmetic!r}")
