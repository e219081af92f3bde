"""Demonstrations on disk: a scripted expert plays seeded episodes and a TrajectoryStore keeps them.

    python -m selu_lightning.data.collect --env numberline --episodes 500 --noise 0.2 --out demos/numberline
    python -m selu_lightning.data.collect --env virtualhome --episodes 300 --noise 0.1 --out demos/virtualhome \
        --config configs/rl4vlm_cpu/sft_virtualhome.yaml

Each step records the frame, the observation text, the prompt the chosen action space would send, the expert's
reply in that action space's format (RL4VLM's JSON for ``text``, the bare action for ``candidates``), the env
action and reward; the simulator's success goes to the store's ground-truth field, which training never reads.
SFT trains on the prompts as recorded, so they must be the ones the trained policy will see: ``--config CONFIG``
takes the reply format and the prompt template from a training config's ``model.action_space``, and the env's
settings from its ``data.env_kwargs``.
Household envs give each episode an instruction, which a prompt shows only through the template's ``{goal}``
field; the action spaces' default templates have none (collection warns, as training does).
Episodes are appended in batches, each batch atomically: a killed collection keeps every batch before it.

The household experts plan with the simulator's hidden state (see :mod:`selu_lightning.experts.base`): this command
hands them the env after every reset (``Expert.observe_env``) and builds the env with the settings their planner
needs (``Expert.env_kwargs``, e.g. ALFWorld's ``replan`` when noisy); the store records the kwargs used.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Iterator, Literal

import numpy as np
from tqdm import tqdm

from selu_lightning.data.store import TrajectoryStore
from selu_lightning.data.trajectories import EpisodeRecorder, Trajectory
from selu_lightning.envs.base import make_env
from selu_lightning.envs.pool import seed_stream
from selu_lightning.errors import ConfigError

__all__ = ["collect_expert_episodes", "demo_env_kwargs", "main"]


def _expert(env: str, noise: float, env_kwargs: dict[str, Any]):
    from selu_lightning.experts import expert_for

    extra = {"arithmetic": env_kwargs["arithmetic"]} if "arithmetic" in env_kwargs else {}  # formula games
    return expert_for(env, noise=noise, **extra)


def demo_env_kwargs(env: str, noise: float = 0.0, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The kwargs the env is built with for these demonstrations: ``env_kwargs`` plus what the expert's planner
    needs (a ConfigError when they contradict)."""
    given = dict(env_kwargs or {})
    return _expert(env, noise, given).env_kwargs(given)


def collect_expert_episodes(
    env: str,
    episodes: int,
    *,
    noise: float = 0.0,
    reply: Literal["text", "candidates"] = "text",
    template: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    max_steps: int = 1000,
    progress: bool = False,
) -> Iterator[Trajectory]:
    """``episodes`` whole episodes of the env's expert, yielded as each ends, each from its own seed (stream
    ``"demo"``, never a training or evaluation seed). ``template``: the prompt wording (default: the action
    space's); SFT trains on the prompts as recorded, so it must be the training config's template. Warns, as
    training does, when the env gives instructions and the template has no ``{goal}``."""
    from selu_lightning.action_spaces import CandidateActionSpace, TextActionSpace
    from selu_lightning.experts import format_candidate, format_json

    space = TextActionSpace() if reply == "text" else CandidateActionSpace()
    if template is not None:
        space.template = template
    given = dict(env_kwargs or {})
    expert = _expert(env, noise, given)
    game = make_env(env, **expert.env_kwargs(given))
    space.check_env(type(game))
    rng = np.random.default_rng(seed_stream(seed, "demo"))
    seeds = seed_stream(seed, "demo", 1).generate_state(episodes)
    recorder = EpisodeRecorder(1, f"demo-{env}")
    done = 0
    bar = tqdm(total=episodes, unit="episode", disable=not progress, desc=f"{env} expert")
    successes = 0
    for episode_seed in seeds:
        obs, info = game.reset(seed=int(episode_seed))
        expert.observe_env(game)  # demonstration only: planners that read the simulator's hidden state
        for t in range(max_steps):
            legal = list(info.get("legal_actions", []))
            step = expert.act(obs["text"], info, legal, rng)
            prompt = space.prompt_text(game.task_description, obs["text"], info.get("goal", ""), legal)
            response = format_json(step) if reply == "text" else format_candidate(step)
            next_obs, reward, terminated, truncated, next_info = game.step(step.action)
            recorder.step(0, obs["image"], obs["text"], info.get("goal", ""), prompt, response, step.action, reward,
                          seed=int(episode_seed))  # fmt: skip
            obs, info = next_obs, next_info
            if terminated or truncated:
                break
        success = bool(info.get("success", False))
        successes, done = successes + success, done + 1
        bar.update(1)
        bar.set_postfix(success=f"{successes / done:.2f}")
        yield recorder.finish(0, obs["image"], obs["text"], None, truncated=not terminated,
                              ground_truth={"success": success})  # fmt: skip
    bar.close()
    game.close()


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--env-kwargs must be a JSON object, e.g. '{{\"image_size\": 128}}' ({err})") from err
    if not isinstance(value, dict):
        raise ConfigError(f"--env-kwargs must be a JSON object, not {type(value).__name__}")
    return value


#: The reply format of each action space an expert can write for (its class name in a config's class_path).
REPLY_OF_SPACE = {"TextActionSpace": "text", "CandidateActionSpace": "candidates"}


def settings_from(config: str, env: str) -> tuple[Literal["text", "candidates"], str | None, dict[str, Any]]:
    """What a training config says about its episodes: the reply format and prompt template (None: the space's
    default) of ``model.action_space``, and ``data.env_kwargs``; its ``data.env`` must be ``env``."""
    import yaml

    try:
        with open(config) as f:
            init = yaml.safe_load(f) or {}
        space = init["model"]["init_args"]["action_space"]
        data = init.get("data", {}).get("init_args", {}) or {}
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {config}: no model.init_args.action_space there ({err!r})") from None
    name = str(space.get("class_path", "")).rsplit(".", 1)[-1]
    if name not in REPLY_OF_SPACE:
        raise ConfigError(f"--config {config}: experts write for {sorted(REPLY_OF_SPACE)}, not {name!r}")
    if data.get("env", env) != env:
        raise ConfigError(f"--config {config} trains on env {data['env']!r}, not {env!r}")
    template = (space.get("init_args") or {}).get("template")
    template = None if template == "default" else template
    return REPLY_OF_SPACE[name], template, dict(data.get("env_kwargs") or {})  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    from selu_lightning.experts import EXPERTS

    parser = argparse.ArgumentParser(description="Collect scripted-expert demonstrations into a TrajectoryStore.")
    parser.add_argument("--env", required=True, choices=sorted(EXPERTS), help="an env with a scripted expert")
    parser.add_argument("--env-kwargs", default="{}",
                        help='the env\'s kwargs as JSON, e.g. \'{"split": "eval"}\' (text_state stays on)')
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--noise", type=float, default=0.0, help="probability of a wrong action with matching wrong reasoning")
    parser.add_argument("--reply", choices=["text", "candidates"], default="text")
    parser.add_argument("--config", metavar="CONFIG", default=None,
                        help="the training config the demonstrations are for: its model.action_space sets the reply "
                             "format and prompt template (overrides --reply; household envs need one with {goal}), its "
                             "data.env_kwargs the env's settings (under --env-kwargs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=50, help="episodes per atomic append")
    parser.add_argument("--out", required=True, help="the store's folder")
    args = parser.parse_args(argv)
    reply, template, config_kwargs = settings_from(args.config, args.env) if args.config else (args.reply, None, {})
    env_kwargs = demo_env_kwargs(args.env, args.noise, {**config_kwargs, **_json_object(args.env_kwargs)})
    policy = f"expert(noise={args.noise}, reply={reply})"
    store = TrajectoryStore(args.out, env=args.env, env_kwargs=env_kwargs, policy=policy)
    pending: list[Trajectory] = []
    for trajectory in collect_expert_episodes(args.env, args.episodes, noise=args.noise, reply=reply,
                                              template=template, env_kwargs=env_kwargs, seed=args.seed,
                                              progress=True):  # fmt: skip
        pending.append(trajectory)
        if len(pending) == args.batch:
            store.append(pending)  # atomic: a kill loses at most the batch in flight
            pending = []
    store.append(pending)
    print(f"{len(store)} episodes in {args.out}")


if __name__ == "__main__":
    main()
