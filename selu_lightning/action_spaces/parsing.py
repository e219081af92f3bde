"""Reading an action out of free text (pure functions, tested on nasty inputs).

Two rules, chosen with ``rule=``:

- ``"rl4vlm"`` (default): RL4VLM's ``text_projection`` (``VLM_PPO/a2c_ppo_acktr/rl_utils.py``). Lower-case the
  text; read from the first ``"action":`` (exactly that: double quotes, no space before the colon) to the end of
  the text, or, with no such key, only the text's last character. Every legal action that occurs anywhere in
  that span as a substring is a match; when "10" is a legal action (EZPoints, Points24) and occurs in the span,
  it is a match and is cut out of the span before the others are looked for, so "10" does not also match "1".
  Exactly one distinct match is the action; none or several is a parse failure (None), after which RL4VLM, like
  ``TextActionSpace``, plays a uniformly random legal action.
- ``"strict"``: every ``action`` field (``"action": "+"``, ``'action': 10``, ``action = hit``) is compared whole
  with the legal actions after Unicode normalisation, case-folding and stripping quotes/whitespace, so ``10``
  never matches ``1`` and ``"+ because"`` matches nothing; several fields naming different legal actions, or
  none naming one, is a parse failure.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

__all__ = ["ACTION_FIELD", "ACTION_KEY", "RULES", "parse_action", "action_boundary"]

#: The rules ``parse_action`` and ``action_boundary`` know.
RULES = ("rl4vlm", "strict")
#: The key RL4VLM looks for, in the lower-cased text.
ACTION_KEY = '"action":'
#: ``"action": "+"``, ``'action': 10``, ``action = hit``; the key and quotes are optional-ish, case-insensitive.
ACTION_FIELD = re.compile(
    r"""["']?\baction\b["']?\s*[:=]\s*(?:"([^"\n]*)"|'([^'\n]*)'|([^\s,}\]"']+))""",
    re.IGNORECASE,
)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"action parsing rule must be one of {RULES} (got {rule!r})")


def _rl4vlm_span(text: str) -> tuple[str, int | None]:
    """The lower-cased span RL4VLM reads and its start as an offset into the original ``text``."""
    lowered = text.lower()
    start = lowered.find(ACTION_KEY)
    if start < 0:  # RL4VLM slices from find's -1: only the last character is read
        return lowered[-1:], (len(text) - 1 if text else None)
    if len(lowered) != len(text):  # a few characters lower-case to two (e.g. "İ"): map the offset back
        length, original = 0, 0
        while length < start:
            length += len(text[original].lower())
            original += 1
        return lowered[start:], original
    return lowered[start:], start


def _parse_rl4vlm(text: str, legal_actions: Sequence[str]) -> str | None:
    span, _ = _rl4vlm_span(text)
    legal = {a.lower(): a for a in reversed(legal_actions) if a}  # first spelling wins on a case clash
    found = set()
    if "10" in legal and "10" in span:
        found.add(legal["10"])
        span = span.replace("10", "")
    found.update(original for key, original in legal.items() if key in span)
    return found.pop() if len(found) == 1 else None


def _canonical(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip().strip("\"'`.").strip()
    return text.casefold()


def _parse_strict(text: str, legal_actions: Sequence[str]) -> str | None:
    legal = {_canonical(a): a for a in legal_actions}
    found = set()
    for match in ACTION_FIELD.finditer(text):
        value = next(g for g in match.groups() if g is not None)
        key = _canonical(value)
        if key in legal:
            found.add(legal[key])
    return found.pop() if len(found) == 1 else None


def parse_action(text: str, legal_actions: Sequence[str], *, rule: str = "rl4vlm") -> str | None:
    """The one legal action (in its legal spelling) the text names under ``rule`` (see the module docstring),
    or None: the caller then plays a random legal action, as RL4VLM does."""
    _check_rule(rule)
    if not isinstance(text, str):  # RL4VLM: anything but a string is a parse failure
        return None
    return _parse_rl4vlm(text, legal_actions) if rule == "rl4vlm" else _parse_strict(text, legal_actions)


def action_boundary(text: str, *, rule: str = "rl4vlm") -> int | None:
    """Character offset where the part of ``text`` that ``parse_action`` reads begins: text before it is
    chain-of-thought, the rest is the action. None when there is no such part.

    "rl4vlm": the first ``"action":`` (case-insensitive), or the last character when the key is absent (RL4VLM
    then reads that character alone). "strict": the first ``action`` field (every field takes part in the
    parse); None without one.
    """
    _check_rule(rule)
    if rule == "rl4vlm":
        return _rl4vlm_span(text)[1]
    match = ACTION_FIELD.search(text)
    return match.start() if match else None
