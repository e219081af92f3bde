"""Environments: the string-action, image+text env contract and its registry (built-in envs load on first lookup)."""

from selu_lightning.envs.base import TextVisualEnv, available_envs, env_class, make_env, register_env

__all__ = ["TextVisualEnv", "register_env", "make_env", "env_class", "available_envs"]
