"""RL4VLM's whole recipe on a CPU, per env and seed: collect noisy expert demonstrations, SFT, PPO with text
actions from the SFT checkpoint, and held-out tests of both checkpoints; then a table and curves.

    python tools/rl4vlm_cpu_results.py --envs numberline blackjack --seeds 0 1 2 --out results/rl4vlm_cpu
    python tools/rl4vlm_cpu_results.py --out results/rl4vlm_cpu --report   # table + docs/ pictures only
    python tools/rl4vlm_cpu_results.py --envs numberline --algorithms ppo grpo gigpo --out results/rl4vlm_cpu

``--algorithms`` runs more RL stages from the same SFT checkpoint: ``ppo`` with ``configs/rl4vlm_cpu/ppo_<env>.yaml``,
``grpo`` / ``dr_grpo`` / ``gigpo`` with ``configs/group/<algorithm>_<env>.yaml`` (same env steps as the PPO recipe),
``latent_ppo`` / ``latent_grpo`` over latent codes (``configs/latent/``: the PPO and GRPO recipes with the action space
swapped, after the latent space's four pretraining stages on the seed's demonstrations), and
``latent_ppo_no_cycle`` / ``latent_ppo_no_projector`` / ``latent_ppo_no_text`` over the paper's ablated spaces
(and ``latent_ppo_alfworld``, ``..._alfworld_no_cycle``, ``..._alfworld_no_projector``: the same with ALFWorld
expert transcripts as more text-only data, text that differs from the paired data; ``latent_ppo_head``: a
linear code policy, ``policy_layers: 0``, beyond the paper);
the report then adds a table of the algorithms side by side and a picture of their held-out curves.

Every stage is the README's own command (``python -m selu_lightning.data.collect``, ``selu fit``,
``selu test``) run in a subprocess with the recipe in ``configs/rl4vlm_cpu/``; per-env demonstration settings
are below. A stage whose output exists is skipped, so an interrupted sweep resumes where it stopped.
``summary.json`` holds every figure the report prints (with each stage's wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from selu_lightning.rl.group import GROUP_ALGORITHMS
from selu_lightning.tb import read_scalars

#: Per env: demonstrations (episodes, how often the expert deliberately errs) and the SFT stage's options on
#: top of its recipe. The SFT recipes, run whole, leave PPO little room (NumberLine: 1.00 held-out), so here
#: SFT stops early: the first 8 epochs of the 12-epoch cosine schedule ("weakened SFT").
RECIPES: dict[str, dict[str, Any]] = {
    "numberline": {"episodes": 300, "noise": 0.1, "sft": ["--trainer.max_epochs=8", "--model.lr_schedule_updates=12"],
                   "test": ["--data.test_episodes=200"]},
    # Blackjack's outcomes are mostly luck (basic strategy wins about 43% of hands): 1000 test hands.
    "blackjack": {"episodes": 600, "noise": 0.3, "sft": ["--trainer.max_epochs=8", "--model.lr_schedule_updates=12"],
                  "test": ["--data.test_episodes=1000", "--data.eval_num_envs=50"]},
    "ezpoints": {"episodes": 300, "noise": 0.1, "sft": ["--trainer.max_epochs=8", "--model.lr_schedule_updates=12"],
                 "test": ["--data.test_episodes=200"]},
    # Points24: twice the demonstrations (a hand's solution must be imitated, not searched), SFT run whole.
    "points24": {"episodes": 600, "noise": 0.1, "sft": [], "test": ["--data.test_episodes=200"]},
    # A household task for the group algorithms' table (candidate actions, as its SFT recipe sets); its SFT
    # recipe runs whole (12 epochs): it leaves room without stopping early.
    "virtualhome": {"episodes": 300, "noise": 0.1, "sft": [], "test": ["--data.test_episodes=200"]},
    # A grid world (one mission kind, the bot's demonstrations); the SFT recipe run whole.
    "babyai": {"episodes": 300, "noise": 0.1, "sft": [], "test": ["--data.test_episodes=200"]},
    # ALFWorld, one task type on games generated per seed folder (ALFWORLD_GAMES); the SFT recipe run whole.
    "alfworld": {"episodes": 300, "noise": 0.1, "sft": [], "test": ["--data.test_episodes=200"]},
}
#: The ALFWorld recipes' games (their config headers' command): 80 to learn from, 40 held out on unseen floor plans.
ALFWORLD_GAMES = ["--train", "80", "--eval", "40", "--types", "pick_and_place_simple"]
QUIET = ["--trainer.enable_progress_bar=false"]


def run(cmd: list[str], log: Path) -> float:
    """Run one stage, its output to ``log``; returns wall seconds; a failure stops the sweep with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({code}); see {log}:\n" + "".join(open(log).readlines()[-15:]))
    return time.perf_counter() - start


def newest_run(save_dir: Path) -> Path:
    versions = sorted(save_dir.glob("*/version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise FileNotFoundError(f"no run under {save_dir}")
    return versions[-1]


def test_scores(save_dir: Path) -> dict[str, float]:
    scalars = read_scalars(newest_run(save_dir))
    return {k.split("/", 1)[1]: v[-1][1] for k, v in scalars.items() if k.startswith("test/")}


#: RL over latent codes (``latent_ppo``, ``latent_grpo``): the token recipe with ``model.action_space`` swapped
#: (``configs/latent/<algorithm>_<env>.yaml``), on a latent space built from the seed's demonstrations and SFT
#: checkpoint by these stages in order (``configs/latent/<stage>_<env>.yaml``), shared by both.
LATENT_STAGES = ("idm_warmup", "projector_init", "joint", "policy_bc")
#: The paper's ablations of the latent space: options of its ``joint`` and ``policy_bc`` stages (the first two
#: stages are shared with the full space). ``latent_ppo_<ablation>`` runs PPO over the ablated space.
#: ``alfworld*``: the same with ALFWorld expert transcripts (frames dropped, ``data.text_only``) as more text-only
#: data, text that differs from the paired data as in the paper's setting (``{transcripts}``: the seed's store).
TRANSCRIPTS = "--data.text_only=[{transcripts}]"
LATENT_ABLATIONS = {
    "no_cycle": ["--model.cycle_coef=0"],
    "no_projector": ["--model.text_states=raw"],
    "no_text": ["--model.text_data=false"],
    "alfworld": [TRANSCRIPTS],
    "alfworld_no_cycle": [TRANSCRIPTS, "--model.cycle_coef=0"],
    "alfworld_no_projector": [TRANSCRIPTS, "--model.text_states=raw"],
    "head": ["--model.policy_layers=0"],
}
#: Ablations that resize the space: every stage takes their options (a stage loads the one before strictly).
#: ``head``: a linear code policy on the VLM's hidden state (no causal layers), beyond the paper.
EVERY_STAGE = {"head"}
#: ALFWorld expert episodes collected per seed as transcripts (about 6 steps each, prompts of about 650 tokens).
TRANSCRIPT_EPISODES = 100
LATENT_ALGORITHMS = ("latent_ppo", "latent_grpo", *(f"latent_ppo_{a}" for a in LATENT_ABLATIONS))


def latent_parts(algorithm: str) -> tuple[str, str | None]:
    """``latent_ppo_no_cycle`` -> (``ppo``, ``no_cycle``); ``latent_grpo`` -> (``grpo``, None)."""
    rl, _, ablation = algorithm.removeprefix("latent_").partition("_")
    return rl, ablation or None


def rl_config(algorithm: str, env: str) -> Path:
    """The RL stage's recipe: the PPO recipe, or the group algorithm's recipe for the same env steps."""
    if algorithm == "ppo":
        return Path("configs/rl4vlm_cpu") / f"ppo_{env}.yaml"
    if algorithm in LATENT_ALGORITHMS:
        return Path("configs/latent") / f"{latent_parts(algorithm)[0]}_{env}.yaml"
    return Path("configs/group") / f"{algorithm}_{env}.yaml"


def latent_space(
    stages: Stages, work: Path, env: str, demos: Path, sft_last: Path, seeds: list[str], ablation: str | None = None
) -> Path:
    """The latent space on the SFT checkpoint, stage after stage; returns the last stage's checkpoint. An
    ablated space shares the first two stages and redoes the rest with the ablation's options (all four for
    the ``EVERY_STAGE`` ones)."""
    previous: Path | None = None
    for stage in LATENT_STAGES:
        ablated = ablation is not None and (stage in ("joint", "policy_bc") or ablation in EVERY_STAGE)
        name = f"latent_{ablation}_{stage}" if ablated else f"latent_{stage}"
        out = work / name
        start = [f"--model.latent_init={previous}"] if previous else []
        options = LATENT_ABLATIONS[ablation] if ablated else []
        if any("{transcripts}" in o for o in options):
            options = [o.format(transcripts=transcripts(stages, work, seeds)) for o in options]
        stages.run(name, ["selu", "fit", "-c", f"configs/latent/{stage}_{env}.yaml",
                          f"--data.demonstrations={demos}", f"--model.policy.init_from={sft_last}",
                          f"--trainer.logger.init_args.save_dir={out}", *seeds, *QUIET, *start, *options], out)  # fmt: skip
        previous = newest_run(out) / "checkpoints" / "last.ckpt"
    assert previous is not None
    return previous


def transcripts(stages: Stages, work: Path, seeds: list[str]) -> Path:
    """The seed's ALFWorld expert episodes (collected once, noise-free, in the ALFWorld recipe's reply format),
    read by the latent stages as text-only transcripts."""
    out = work / "transcripts_alfworld"
    seed = seeds[0].split("=")[1]
    stages.run("transcripts_alfworld", [sys.executable, "-m", "selu_lightning.data.collect", "--env", "alfworld",
                                        "--episodes", str(TRANSCRIPT_EPISODES), "--noise", "0", "--seed", seed,
                                        "--out", str(out), "--config", "configs/rl4vlm/alfworld.yaml"], out)  # fmt: skip
    return out


class Stages:
    """One seed's stages, each run once. A stage counts as done when ``timings.json`` records its wall time
    (written after every stage), so a stage killed half-way is started again from an empty folder."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.file = work / "timings.json"
        self.timings: dict[str, float] = json.loads(self.file.read_text()) if self.file.exists() else {}

    def run(self, name: str, cmd: list[str], output: Path) -> None:
        if name in self.timings:
            return
        if output.exists():
            shutil.rmtree(output)
        self.timings[name] = run(cmd, self.work / f"{name}.log")
        self.file.write_text(json.dumps(self.timings, indent=1))


def one_seed(
    env: str, seed: int, out: Path, extra_sft: list[str], extra_ppo: list[str], algorithms: tuple[str, ...] = ("ppo",),
    noise: float | None = None,
) -> dict[str, Any]:
    """Collect -> SFT -> test -> (RL -> test per algorithm) for one env and seed; stages already done are skipped.

    PPO's stage lives in ``ppo/`` (its figures under ``ppo_test``), another algorithm's in ``<algorithm>/``."""
    work = out / env / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    stages = Stages(work)
    demos, sft, sft_test = work / "demos", work / "sft", work / "sft_test"
    cfg = Path("configs/rl4vlm_cpu")
    common = [f"--seed_everything={seed}", f"--data.seed={seed}"]  # options every stage of this seed passes
    d = RECIPES[env]
    noise = d["noise"] if noise is None else noise
    collect_env: list[str] = []
    if env == "alfworld":  # the recipes name a folder of generated games: this seed folder's own
        games = work / "games"
        stages.run("games", [sys.executable, "tools/make_alfworld_tasks.py", "--out", str(games), *ALFWORLD_GAMES],
                   games)  # fmt: skip
        common = [*common, f"--data.env_kwargs.tasks_dir={games}"]
        collect_env = ["--env-kwargs", json.dumps({"tasks_dir": str(games)})]
    stages.run("collect", [sys.executable, "-m", "selu_lightning.data.collect", "--env", env, "--episodes",
                           str(d["episodes"]), "--noise", str(noise), "--seed", str(seed), "--out", str(demos),
                           "--config", str(cfg / f"sft_{env}.yaml"), *collect_env], demos)  # fmt: skip
    stages.run("sft", ["selu", "fit", "-c", str(cfg / f"sft_{env}.yaml"), f"--data.demonstrations={demos}",
                       f"--trainer.logger.init_args.save_dir={sft}", *common, *QUIET, *d["sft"], *extra_sft], sft)  # fmt: skip
    sft_last = newest_run(sft) / "checkpoints" / "last.ckpt"
    stages.run("sft_test", ["selu", "test", "-c", str(cfg / f"sft_{env}.yaml"), f"--data.demonstrations={demos}",
                            f"--ckpt_path={sft_last}", f"--trainer.logger.init_args.save_dir={sft_test}", *common,
                            *QUIET, *d["test"]], sft_test)  # fmt: skip
    row: dict[str, Any] = {"env": env, "seed": seed, "sft_test": test_scores(sft_test), "sft_run": str(newest_run(sft))}
    for algorithm in algorithms:
        cfg_rl, stage, test_dir = rl_config(algorithm, env), work / algorithm, work / f"{algorithm}_test"
        space = []
        if algorithm in LATENT_ALGORITHMS:
            space = [f"--model.action_space.init_args.latent_checkpoint="
                     f"{latent_space(stages, work, env, demos, sft_last, common, latent_parts(algorithm)[1])}"]  # fmt: skip
        stages.run(algorithm, ["selu", "fit", "-c", str(cfg_rl), f"--model.policy.init_from={sft_last}", *space,
                               f"--trainer.logger.init_args.save_dir={stage}", *common, *QUIET, *extra_ppo], stage)  # fmt: skip
        last = newest_run(stage) / "checkpoints" / "last.ckpt"
        stages.run(f"{algorithm}_test", ["selu", "test", "-c", str(cfg_rl), f"--ckpt_path={last}",
                                         f"--model.policy.init_from={sft_last}", *space,
                                         f"--trainer.logger.init_args.save_dir={test_dir}", *common, *QUIET,
                                         *d["test"]], test_dir)  # fmt: skip
        row[f"{algorithm}_test"], row[f"{algorithm}_run"] = test_scores(test_dir), str(newest_run(stage))
        diversity = work / f"{algorithm}_diversity"
        stages.run(f"{algorithm}_diversity", [sys.executable, "tools/rollout_diversity.py", "-c", str(cfg_rl),
                                              f"--ckpt_path={last}", f"--out={diversity / 'diversity.json'}", "--",
                                              f"--model.policy.init_from={sft_last}", *space, *common], diversity)  # fmt: skip
        row[f"{algorithm}_diversity"] = json.loads((diversity / "diversity.json").read_text())
        row[f"{algorithm}_trained_parameters"] = trained_parameters(last)
    return {**row, "timings_s": stages.timings}


def trained_parameters(checkpoint: Path) -> int:
    """Parameters the RL run trained: a checkpoint keeps only those (``VLMAgent.on_save_checkpoint``)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return int(sum(v.numel() for v in state.values()))


def _spread(xs: list[float]) -> str:
    """``mean +- std (each seed)``."""
    spread = f" +- {stdev(xs):.2f}" if len(xs) > 1 else ""
    return f"{mean(xs):.2f}{spread} ({' / '.join(f'{x:.2f}' for x in xs)})"


def report(summary: list[dict[str, Any]], docs: Path) -> str:
    """The markdown table (mean +- std over seeds, and each seed) and one curve picture per env."""
    sys.path.insert(0, str(Path(__file__).parent))
    from plot_runs import plot

    lines = [
        "| env | seeds | SFT success | PPO success | gain (points) | SFT parse failures | PPO parse failures | SFT / PPO minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for env in dict.fromkeys(r["env"] for r in summary if "ppo_test" in r):
        rows = sorted((r for r in summary if r["env"] == env and "ppo_test" in r), key=lambda r: r["seed"])
        sft = [r["sft_test"]["success_rate"] for r in rows]
        ppo = [r["ppo_test"]["success_rate"] for r in rows]
        gain = [100 * (p - s) for p, s in zip(ppo, sft)]

        pf_sft = mean(r["sft_test"].get("parse_failure_rate", float("nan")) for r in rows)
        pf_ppo = mean(r["ppo_test"].get("parse_failure_rate", float("nan")) for r in rows)
        minutes = [
            f"{min(r['timings_s'].get(stage, 0.0) for r in rows) / 60:.1f}-{max(r['timings_s'].get(stage, 0.0) for r in rows) / 60:.1f}"
            for stage in ("sft", "ppo")
        ]  # fastest-slowest seed (a stage that shared the cores with another job runs several times slower)
        lines.append(
            f"| {env} | {', '.join(str(r['seed']) for r in rows)} | {_spread(sft)} | {_spread(ppo)} "
            f"| {mean(gain):+.1f} ({' / '.join(f'{g:+.1f}' for g in gain)}) | {pf_sft:.3f} | {pf_ppo:.3f} "
            f"| {minutes[0]} / {minutes[1]} |"
        )
        runs = [(f"seed {r['seed']}", read_scalars(r["ppo_run"])) for r in rows]
        tags = ["val/success_rate", "train/success_rate", "train/parse_failure_rate", "train/kl_to_ref"]
        docs.mkdir(parents=True, exist_ok=True)
        plot(runs, tags, f"PPO with text actions from the SFT checkpoint: {env} (tiny LLaVA, 2 CPU cores)").save(
            docs / f"rl4vlm_cpu_{env}.png"
        )
    algorithms = sorted({k[: -len("_test")] for r in summary for k in r if k.endswith("_test") and k != "sft_test"})
    if algorithms != ["ppo"]:
        lines += ["", algorithm_table(summary, algorithms, docs)]
    return "\n".join(lines)


def _mean_curves(runs: list[dict[str, list[tuple[int, float]]]], tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Per tag, the mean over runs at the env steps every run logged it, as scalars whose x is env steps
    (``train/env_steps`` maps each x to itself, so plot_runs draws them against env steps)."""
    from plot_runs import X_TAG, _xy

    curves: dict[str, list[tuple[int, float]]] = {}
    for tag in tags:
        series = [dict(_xy(r, tag)) for r in runs]
        xs = sorted(set.intersection(*(set(s) for s in series))) if series else []
        curves[tag] = [(int(x), mean(s[x] for s in series)) for x in xs]
    xs = sorted({x for points in curves.values() for x, _ in points})
    return {**curves, X_TAG: [(x, float(x)) for x in xs]}


#: The side-by-side picture: held-out success, training success, and how much of each rollout the update used
#: (group algorithms learn only from complete episode groups; PPO uses every step).
CURVE_TAGS = ["val/success_rate", "train/success_rate", "train/group_step_fraction"]


def algorithm_table(summary: list[dict[str, Any]], algorithms: list[str], docs: Path) -> str:
    """RL algorithms side by side from the same SFT checkpoints (per env), and their mean held-out curves."""
    sys.path.insert(0, str(Path(__file__).parent))
    from plot_runs import plot

    lines = [
        "| env | algorithm | seeds | SFT success | after RL | gain (points) | parse failures after "
        "| distinct responses / actions per state | trained parameters | RL minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for env in dict.fromkeys(r["env"] for r in summary):
        curves = []
        for algorithm in algorithms:
            rows = sorted((r for r in summary if r["env"] == env and f"{algorithm}_test" in r), key=lambda r: r["seed"])
            if not rows:
                continue
            sft = [r["sft_test"]["success_rate"] for r in rows]
            after = [r[f"{algorithm}_test"]["success_rate"] for r in rows]
            gain = [100 * (a - b) for a, b in zip(after, sft)]
            failures = mean(r[f"{algorithm}_test"].get("parse_failure_rate", float("nan")) for r in rows)
            minutes = [r["timings_s"].get(algorithm, 0.0) / 60 for r in rows]
            spread = [r[f"{algorithm}_diversity"] for r in rows if f"{algorithm}_diversity" in r]
            diverse = (f"{mean(d['distinct_responses_per_state'] for d in spread):.2f} / "
                       f"{mean(d['distinct_actions_per_state'] for d in spread):.2f}") if spread else "-"  # fmt: skip
            counts = {r[f"{algorithm}_trained_parameters"] for r in rows if f"{algorithm}_trained_parameters" in r}
            trained = ", ".join(f"{c / 1e3:.1f} K" for c in sorted(counts)) or "-"
            lines.append(
                f"| {env} | {algorithm} | {', '.join(str(r['seed']) for r in rows)} | {_spread(sft)} | {_spread(after)} "
                f"| {mean(gain):+.1f} ({' / '.join(f'{g:+.1f}' for g in gain)}) | {failures:.3f} | {diverse} "
                f"| {trained} | {min(minutes):.1f}-{max(minutes):.1f} |"
            )
            scalars = [read_scalars(r[f"{algorithm}_run"]) for r in rows]
            curves.append((f"{algorithm} (mean of {len(rows)} seeds)", _mean_curves(scalars, CURVE_TAGS)))
        docs.mkdir(parents=True, exist_ok=True)
        plot(curves, CURVE_TAGS,
             f"PPO vs group algorithms from the same SFT checkpoints: {env} (tiny LLaVA, 2 CPU cores)").save(
            docs / f"group_algorithms_{env}.png"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["numberline", "blackjack"], choices=sorted(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results/rl4vlm_cpu"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--sft-args", action="append", default=[], metavar="OPTION",
                        help="an extra `selu fit` option for every SFT run (repeat: --sft-args=--a=1 --sft-args=--b=2)")
    parser.add_argument("--ppo-args", action="append", default=[], metavar="OPTION",
                        help="an extra `selu fit` option for every RL run (repeat as --sft-args)")
    parser.add_argument("--algorithms", nargs="+", default=["ppo"], choices=["ppo", *GROUP_ALGORITHMS, *LATENT_ALGORITHMS],
                        help="RL stages from each SFT checkpoint (ppo: configs/rl4vlm_cpu/, latent_*: configs/latent/, "
                             "others: configs/group/)")  # fmt: skip
    parser.add_argument("--noise", type=float, default=None,
                        help="share of deliberately wrong demonstration steps, for every env (default: each env's own)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and pictures")
    args = parser.parse_args(argv)
    summary_file = args.out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else []
    if not args.report:
        for env in args.envs:
            for seed in args.seeds:
                print(f"== {env} seed {seed}", flush=True)
                row = one_seed(env, seed, args.out, args.sft_args, args.ppo_args, tuple(args.algorithms), args.noise)
                # read again: another sweep (another env) may share the output folder
                summary = json.loads(summary_file.read_text()) if summary_file.exists() else []
                old = [r for r in summary if (r["env"], r["seed"]) == (env, seed)]
                row = {**(old[0] if old else {}), **row}   # keeps the figures of algorithms not run this time
                summary = [r for r in summary if (r["env"], r["seed"]) != (env, seed)] + [row]
                summary_file.write_text(json.dumps(summary, indent=1))
                after = ", ".join(f"{a} {row[f'{a}_test']['success_rate']:.3f}" for a in args.algorithms)
                print(f"   SFT {row['sft_test']['success_rate']:.3f} -> {after}", flush=True)
    print(report(summary, args.docs))


if __name__ == "__main__":
    main()
