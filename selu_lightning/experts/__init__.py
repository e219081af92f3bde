"""Scripted experts for the SFT stage: each reads what the policy sees, plays the right action (or, with
``noise``, a wrong one) and explains it in RL4VLM's chain-of-thought JSON or as a bare candidate string.
The household experts plan with privileged state (see :mod:`selu_lightning.experts.base`); none of them imports its
simulator until it plays."""

from __future__ import annotations

from typing import Any

from selu_lightning.errors import ConfigError
from selu_lightning.experts.alfworld import AlfWorldExpert
from selu_lightning.experts.babyai import BabyAIExpert
from selu_lightning.experts.base import Expert, ExpertStep, format_candidate, format_json
from selu_lightning.experts.cards import (
    BlackjackExpert,
    EZPointsExpert,
    FormulaExpert,
    NumberLineExpert,
    Points24Expert,
)
from selu_lightning.experts.virtualhome import VirtualHomeExpert

__all__ = [
    "EXPERTS",
    "Expert",
    "ExpertStep",
    "format_json",
    "format_candidate",
    "expert_for",
    "NumberLineExpert",
    "FormulaExpert",
    "EZPointsExpert",
    "Points24Expert",
    "BlackjackExpert",
    "AlfWorldExpert",
    "BabyAIExpert",
    "VirtualHomeExpert",
]

#: Env name (as ``make_env`` takes it) -> expert class.
EXPERTS: dict[str, type[Expert]] = {
    "numberline": NumberLineExpert,
    "ezpoints": EZPointsExpert,
    "points24": Points24Expert,
    "blackjack": BlackjackExpert,
    "alfworld": AlfWorldExpert,
    "babyai": BabyAIExpert,
    "virtualhome": VirtualHomeExpert,
}


def expert_for(env_name: str, **kwargs: Any) -> Expert:
    """The expert for an env, built with ``kwargs`` (``noise``; ``arithmetic`` for the formula games, matching
    the env's)."""
    if env_name not in EXPERTS:
        raise ConfigError(f"no expert for env {env_name!r}; experts exist for {sorted(EXPERTS)}")
    return EXPERTS[env_name](**kwargs)
