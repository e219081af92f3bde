"""The environment contract every simulator keeps, and the registry that names them.

An env is a gymnasium ``Env`` whose actions are strings (what a language model writes) and whose
observations are ``{"image": uint8[H, W, 3], "text": str}``. ``info`` always carries:

- ``legal_actions``: ``list[str]`` the actions that are legal now (empty if the simulator has no such list),
- ``goal``: ``str`` the instruction for this episode,
- ``success``: ``bool`` ground-truth success so far (for evaluation metrics only).

Each env also names its states for GiGPO's anchor grouping (:meth:`TextVisualEnv.state_key`): equal keys mean the
same state. The default is the text observation, or a hash of the frame when there is no text; envs whose
observation does not pin their state override it (their docstrings say with what).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
from typing import Any, Callable, ClassVar, Hashable, Literal

import gymnasium as gym
import numpy as np

from selu_lightning.errors import ConfigError

__all__ = ["TextVisualEnv", "register_env", "make_env", "env_class", "available_envs"]


class TextVisualEnv(gym.Env):
    """Base class: string actions, image + text observations, the info keys listed above."""

    metadata = {"render_modes": ["rgb_array"]}
    #: Whether ``info["legal_actions"]`` lists every legal action (``CandidateActionSpace`` needs it).
    has_legal_actions: ClassVar[bool] = True
    #: Whether each episode has its own instruction in ``info["goal"]`` (a prompt must show ``{goal}``).
    has_goal: ClassVar[bool] = False
    #: One paragraph of rules the policy prompt starts with.
    task_description: ClassVar[str] = ""
    #: How a checkpoint keeps this env mid-episode (``EnvPool.snapshot``). ``"replay"``: the seed (or RNG state)
    #: the episode was reset from and the actions since; restoring builds a fresh env and replays them. Nothing
    #: derived is stored (frames, spaces), and simulators that cannot be pickled (a live Unity process) come back
    #: too. It needs each episode to follow from ``np_random`` at reset and the actions: the pool checks the
    #: replayed observation and RNG against the checkpoint and fails loudly when they differ. ``"pickle"``: the
    #: env object itself, for envs that carry state across episodes or do not replay deterministically.
    checkpoint_by: ClassVar[Literal["replay", "pickle"]] = "replay"
    #: Whether replaying an episode redraws its last frame bit for bit (true of CPU renderers). If not (a GPU
    #: renderer), checkpoints keep the frame the policy is about to act on.
    replays_frames_exactly: ClassVar[bool] = True

    def __init__(self, text_state: bool = True, image_size: int = 300) -> None:
        """``text_state`` also gives the state as text in ``obs["text"]``; the image is always drawn."""
        self.text_state = text_state
        self.image_size = image_size
        self.observation_space, self.action_space = _spaces(image_size)

    def state_key(self, obs: dict[str, Any], info: dict[str, Any]) -> Hashable:
        """A hashable name of the state ``obs`` shows, for GiGPO's anchor states (equal keys: the same state).

        Called in the env's own process after every reset and step (the pool carries it as ``EnvState.key``).
        Default: the text observation, or a SHA-1 of the frame's bytes when the text is empty. Override where the
        observation is not the state (e.g. text that is only the last action's feedback)."""
        text = obs.get("text", "")
        return text if text else frame_digest(obs["image"])

    # A Box space holds four image-sized arrays (low, high and their bound masks): ~1 MB at 300 px. Pickles leave
    # the spaces out and rebuild them.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("observation_space", None)
        state.pop("action_space", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "observation_space" not in state:
            self.observation_space, self.action_space = _spaces(self.image_size)


def frame_digest(image: np.ndarray) -> str:
    """SHA-1 of a frame's shape, dtype and bytes: equal exactly when the frames are."""
    image = np.ascontiguousarray(image)
    return hashlib.sha1(f"{image.shape}{image.dtype}".encode() + image.tobytes()).hexdigest()


def _spaces(image_size: int) -> tuple[gym.spaces.Dict, gym.spaces.Text]:
    observation = gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "text": gym.spaces.Text(max_length=4096),
        }
    )
    return observation, gym.spaces.Text(max_length=256)


_REGISTRY: dict[str, type[TextVisualEnv]] = {}


def register_env(name: str) -> Callable[[type[TextVisualEnv]], type[TextVisualEnv]]:
    """Class decorator: make ``name`` usable as ``data.env`` in configs."""

    def wrap(cls: type[TextVisualEnv]) -> type[TextVisualEnv]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"env name {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return wrap


#: Built-in envs and the module that registers each; imported on first lookup, so a simulator's package is
#: needed only by the runs that use it.
BUILTIN_ENVS = {
    "numberline": "selu_lightning.envs.cards",
    "ezpoints": "selu_lightning.envs.cards",
    "points24": "selu_lightning.envs.cards",
    "blackjack": "selu_lightning.envs.cards",
    "alfworld": "selu_lightning.envs.alfworld",
    "babyai": "selu_lightning.envs.babyai",
    "virtualhome": "selu_lightning.envs.virtualhome",
    "ai2thor": "selu_lightning.envs.ai2thor",
}


def available_envs() -> list[str]:
    """Every name ``data.env`` accepts (built-in ones whose simulator is not installed included)."""
    return sorted(set(_REGISTRY) | set(BUILTIN_ENVS))


def env_class(name: str) -> type[TextVisualEnv]:
    """The class registered as ``name``; a one-line error naming close matches or the missing package."""
    if name not in _REGISTRY and ":" in name:  # package.module:EnvClass, a user's env without registering
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"env {name!r} cannot load: {err}") from err
        if not (isinstance(cls, type) and issubclass(cls, TextVisualEnv)):
            raise ConfigError(f"env {name!r} is not a TextVisualEnv subclass")
        _REGISTRY[name] = cls
    if name not in _REGISTRY and name in BUILTIN_ENVS:
        try:
            importlib.import_module(BUILTIN_ENVS[name])
        except ImportError as err:
            raise ConfigError(f"env {name!r} cannot load: {err}") from err
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available_envs(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown env {name!r}; registered envs: {', '.join(available_envs())}.{hint}")
    return _REGISTRY[name]


def make_env(name: str, **kwargs: Any) -> TextVisualEnv:
    return env_class(name)(**kwargs)
