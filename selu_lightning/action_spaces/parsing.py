"""Reading an action out of free text (pure functions, tested on nasty inputs)."""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

__all__ = ["ACTION_FIELD", "parse_action", "action_boundary"]

#: ``"action": "+"``, ``'action': 10``, ``action = hit``; the key and quotes are optional-ish, case-insensitive.
ACTION_FIELD = re.compile(
    r"""["']?\baction\b["']?\s*[:=]\s*(?:"([^"\n]*)"|'([^'\n]*)'|([^\s,}\]"']+))""",
    re.IGNORECASE,
)


def _canonical(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip().strip("\"'`.").strip()
    return text.casefold()


def parse_action(text: str, legal_actions: Sequence[str]) -> str | None:
    """The one legal action the text's ``action`` field(s) name, or None.

    Matching is exact after case-folding and stripping quotes/whitespace, so ``10`` never matches ``1``.
    Several fields naming different legal actions, or none naming one, is a parse failure (None).
    """
    legal = {_canonical(a): a for a in legal_actions}
    found = set()
    for match in ACTION_FIELD.finditer(text):
        value = next(g for g in match.groups() if g is not None)
        key = _canonical(value)
        if key in legal:
            found.add(legal[key])
    return found.pop() if len(found) == 1 else None


def action_boundary(text: str) -> int | None:
    """Character offset where the (last) ``action`` field starts: text before it is chain-of-thought."""
    matches = list(ACTION_FIELD.finditer(text))
    return matches[-1].start() if matches else None
