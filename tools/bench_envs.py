"""Env throughput with rendering: random legal actions in every registered simulator that can run here.

    python tools/bench_envs.py [--steps 500] [--envs numberline babyai ...]

Prints a table, then one JSON line of steps/s per env (AI2-THOR is listed as skipped where it cannot start).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import numpy as np

from selu_lightning.envs.base import available_envs, env_class
from selu_lightning.errors import ConfigError


def bench(name: str, steps: int, seed: int = 0) -> dict[str, float]:
    env = env_class(name)()
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    episodes, start = 0, time.perf_counter()
    for _ in range(steps):
        legal = info.get("legal_actions") or ["noop"]
        obs, _, terminated, truncated, info = env.step(str(rng.choice(legal)))
        if terminated or truncated:
            episodes += 1
            obs, info = env.reset()
    seconds = time.perf_counter() - start
    env.close()
    assert obs["image"].shape[-1] == 3
    return {"steps_per_s": steps / seconds, "episodes": episodes, "frame": list(obs["image"].shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--envs", nargs="*", default=None)
    args = parser.parse_args()
    results, skipped = {}, {}
    print(f"{'env':>12} {'steps/s':>9} {'episodes':>9}")
    for name in args.envs or available_envs():
        try:
            row = bench(name, args.steps)
        except (ConfigError, ImportError) as err:
            skipped[name] = str(err).splitlines()[0][:160]
            print(f"{name:>12} {'skipped':>9}   {skipped[name][:80]}")
            continue
        results[name] = row
        print(f"{name:>12} {row['steps_per_s']:>9.0f} {row['episodes']:>9}")
    print(json.dumps({"bench": "envs", "date": date.today().isoformat(), "machine": platform.node(),
                      "steps": args.steps, "steps_per_s": {k: v["steps_per_s"] for k, v in results.items()},
                      "skipped": skipped}))  # fmt: skip


if __name__ == "__main__":
    main()
