"""The environment contract every simulator keeps, and the registry that names them.

An env is a gymnasium ``Env`` whose actions are strings (what a language model writes) and whose
observations are ``{"image": uint8[H, W, 3], "text": str}``. ``info`` always carries:

- ``legal_actions``: ``list[str]`` the actions that are legal now (empty if the simulator has no such list),
- ``goal``: ``str`` the instruction for this episode,
- ``success``: ``bool`` ground-truth success so far (for evaluation metrics only).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, ClassVar

import gymnasium as gym
import numpy as np

from selu_lightning.errors import ConfigError

__all__ = ["TextVisualEnv", "register_env", "make_env", "env_class", "available_envs"]


class TextVisualEnv(gym.Env):
    """Base class: string actions, image + text observations, the info keys listed above."""

    metadata = {"render_modes": ["rgb_array"]}
    #: Whether ``info["legal_actions"]`` lists every legal action (``CandidateActionSpace`` needs it).
    has_legal_actions: ClassVar[bool] = True
    #: One paragraph of rules the policy prompt starts with.
    task_description: ClassVar[str] = ""

    def __init__(self, text_state: bool = True, image_size: int = 300) -> None:
        """``text_state`` also gives the state as text in ``obs["text"]``; the image is always drawn."""
        self.text_state = text_state
        self.image_size = image_size
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "text": gym.spaces.Text(max_length=4096),
            }
        )
        self.action_space = gym.spaces.Text(max_length=256)


_REGISTRY: dict[str, type[TextVisualEnv]] = {}


def register_env(name: str) -> Callable[[type[TextVisualEnv]], type[TextVisualEnv]]:
    """Class decorator: make ``name`` usable as ``data.env`` in configs."""

    def wrap(cls: type[TextVisualEnv]) -> type[TextVisualEnv]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"env name {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtin_envs() -> None:
    from selu_lightning.envs import cards  # noqa: F401  (registers on import)


def available_envs() -> list[str]:
    _load_builtin_envs()
    return sorted(_REGISTRY)


def env_class(name: str) -> type[TextVisualEnv]:
    """The class registered as ``name``; a one-line error naming close matches otherwise."""
    _load_builtin_envs()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown env {name!r}; registered envs: {', '.join(sorted(_REGISTRY))}.{hint}")
    return _REGISTRY[name]


def make_env(name: str, **kwargs: Any) -> TextVisualEnv:
    return env_class(name)(**kwargs)
