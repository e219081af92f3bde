"""SELU's table on VirtualHome: every variant of ``selu-round`` per seed, then the critic's and the actor's held-out
scores side by side (base, SELU, ablations, baselines), task-type coverage with and without relabeling, and a
picture in docs/.

    python tools/selu_results.py --seeds 0 1 2 --out results/selu            # runs what is missing, then reports
    python tools/selu_results.py --seeds 0 1 2 --out results/selu --report   # the table and picture only

Each seed is one ``selu-round`` output folder (``<out>/seed<S>``): the priors, the held-out episodes and round 1's
episodes are made once and shared by its variants, which run one after another; seeds run ``--jobs`` at a time,
each process on ``2 / jobs`` threads (two 2-thread runs on 2 cores slow each other several times over).
``selu-round`` resumes stage by stage, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from selu_lightning.selu_round import VARIANTS

RECIPE = "configs/selu/round_virtualhome.yaml"
COLUMNS = ["base", *VARIANTS]
#: What becomes a "no" example in the critic's own data (``model.labeling.negatives``): the ablation's runs.
NEGATIVES = {f"neg_{value}": value for value in ("rejected", "relabeled", "none")}
#: Runs beside the variants, by output name: SELU's critic as the actor's only PPO reward (beyond the paper), and
#: SELU with each choice of negatives.
RUNS = {
    "selu_ppo": ["--variant=selu", "--actor_update=ppo", "--ppo=configs/selu/ppo_virtualhome.yaml"],
    **{name: ["--variant=selu", f"--name={name}", f"--critic_overrides=[--model.labeling.negatives={value}]"]
       for name, value in NEGATIVES.items()},
}  # fmt: skip


def run_seed(seed: int, variants: list[str], out: Path, threads: int, extra: list[str]) -> None:
    """Every variant of one seed, in order; output to ``<out>/seed<S>/<variant>.log``."""
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    for variant in variants:
        if (folder / variant / "results.json").is_file():
            continue
        choice = RUNS.get(variant, [f"--variant={variant}"])
        cmd = ["selu-round", "-c", RECIPE, f"--out={folder}", f"--seed={seed}", *choice, *extra]
        with open(folder / f"{variant}.log", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if code != 0:
            tail = "".join(open(folder / f"{variant}.log", errors="replace").readlines()[-10:])
            raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{tail}")


def collect(out: Path, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """Per seed, per variant: its results.json (first round)."""
    found: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        for variant in (*VARIANTS, *RUNS):
            path = out / f"seed{seed}" / variant / "results.json"
            if path.is_file():
                found.setdefault(seed, {})[variant] = json.loads(path.read_text())
    return found


def _cell(xs: list[float], scale: float = 100.0) -> str:
    if not xs:
        return "-"
    spread = f" +- {scale * stdev(xs):.1f}" if len(xs) > 1 else ""
    return f"{scale * mean(xs):.1f}{spread}"


def _stage_seconds(out: Path, seed: int, variant: str) -> float:
    total = 0.0
    for marker in (out / f"seed{seed}" / variant).glob("round1/*/stage.json"):
        total += json.loads(marker.read_text()).get("seconds", 0.0)
    return total


def report(out: Path, seeds: list[int], docs: Path) -> str:
    results = collect(out, seeds)
    if not results:
        sys.exit(f"no results under {out}")

    def values(column: str, key: str) -> list[float]:
        xs = []
        for per in results.values():
            if column == "base":
                first = next(iter(per.values()))
                xs.append(first["base"].get(key))
            elif column in per and per[column]["rounds"]:
                xs.append(per[column]["rounds"][0].get(key))
        return [x for x in xs if x is not None]

    used = sorted(results)
    lines = [f"Seeds {', '.join(map(str, used))}; mean +- std over seeds, in points (AUROC x 100).", "",
             "| | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    rows = [("critic accuracy", "critic_accuracy"), ("critic F1", "critic_f1"), ("critic AUROC", "critic_auroc"),
            ("actor success", "actor_success")]  # fmt: skip
    for name, key in rows:
        lines.append(f"| {name} | " + " | ".join(_cell(values(c, key)) for c in COLUMNS) + " |")
    # what the critic handed the actor, and each variant's round time
    lines.append("| actor SFT episodes | - | " + " | ".join(
        f"{mean(values(c, 'actor_episodes')):.0f}" if values(c, "actor_episodes") else "-" for c in VARIANTS) + " |")
    minutes = [[_stage_seconds(out, s, v) / 60 for s in used if v in results[s]] for v in VARIANTS]
    lines.append("| round minutes (stages of the variant) | - | " + " | ".join(
        f"{min(m):.1f}-{max(m):.1f}" if m else "-" for m in minutes) + " |")
    # relabeling's effect on task-type coverage: positives per verb, summed over seeds
    verbs = sorted({k.removeprefix("positives_") for per in results.values() for r in per.values() for k in
                    (r["rounds"][0] if r["rounds"] else {}) if k.startswith("positives_")})  # fmt: skip
    if verbs:
        lines += ["", "Positive critic examples per task type (sum over seeds): the critic's own labels.", "",
                  "| variant | " + " | ".join(verbs) + " |", "|---" * (len(verbs) + 1) + "|"]  # fmt: skip
        for v in ("selu", "no_relabel", "no_self_ask"):
            counts = [sum(int(per[v]["rounds"][0].get(f"positives_{verb}", 0)) for per in results.values() if v in per)
                      for verb in verbs]  # fmt: skip
            lines.append(f"| {v} | " + " | ".join(map(str, counts)) + " |")
    if any(values(c, "critic_accuracy") for c in NEGATIVES):
        lines += ["", "SELU with each choice of the critic's negatives (`model.labeling.negatives`):", "",
                  "| | " + " | ".join(NEGATIVES.values()) + " |", "|---" * (len(NEGATIVES) + 1) + "|"]
        for name, key in [*rows, ("actor SFT episodes", "actor_episodes")]:
            scale = 1.0 if key == "actor_episodes" else 100.0
            lines.append(f"| {name} | " + " | ".join(_cell(values(c, key), scale) for c in NEGATIVES) + " |")
    ppo = values("selu_ppo", "actor_success")
    if ppo:
        lines += ["", f"Critic as PPO reward (beyond the paper; seeds {len(ppo)}): actor success {_cell(ppo)} "
                  f"against {_cell(values('selu', 'actor_success'))} by the SFT route and "
                  f"{_cell(values('base', 'actor_success'))} at the base."]  # fmt: skip
    try:
        _picture(values, docs / "selu_virtualhome.png", _ppo_curves(out, used))
    except ImportError:  # matplotlib is optional (pip install matplotlib)
        lines.append("\n(no picture: matplotlib is not installed)")
    return "\n".join(lines)


def _ppo_curves(out: Path, seeds: list[int]) -> list[list[tuple[int, float]]]:
    """Per seed: the PPO route's held-out success (val/success_rate) against env steps."""
    from selu_lightning.tb import read_scalars

    curves = []
    for seed in seeds:
        run = out / f"seed{seed}" / "selu_ppo" / "round1" / "actor"
        if run.is_dir():
            scalars = read_scalars(str(run))
            points, steps = scalars.get("val/success_rate", []), scalars.get("train/env_steps", [])
            curves.append([(int(s), float(v)) for s, v in points] if not steps else _against(points, steps))
    return curves


def _against(points: list, steps: list) -> list[tuple[int, float]]:
    """Values logged at global steps, placed at the env steps logged nearest before them."""
    out = []
    for step, value in points:
        before = [v for s, v in steps if s <= step]
        out.append((int(before[-1]) if before else 0, float(value)))
    return out


def _picture(values: Any, path: Path, ppo: list[list[tuple[int, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if ppo else 3, figsize=(20 if ppo else 15, 3.6))
    for ax, (key, title) in zip(axes, [("critic_accuracy", "critic accuracy (held-out)"),
                                       ("critic_auroc", "critic AUROC (held-out)"),
                                       ("actor_success", "actor success (held-out)")]):  # fmt: skip
        cols = [c for c in COLUMNS if values(c, key)]
        means = [100 * mean(values(c, key)) for c in cols]
        errs = [100 * stdev(values(c, key)) if len(values(c, key)) > 1 else 0.0 for c in cols]
        ax.bar(range(len(cols)), means, yerr=errs, capsize=3, color=["#888"] + ["#4a7"] * (len(cols) - 1))
        ax.set_xticks(range(len(cols)), [c.replace("_", "\n") for c in cols], fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("points")
    if ppo:
        ax = axes[3]
        for k, curve in enumerate(ppo):
            ax.plot([s for s, _ in curve], [100 * v for _, v in curve], marker="o", label="PPO on the critic's reward (validation episodes)"
                    if k == 0 else None, color="#47a")  # fmt: skip
        for name, color in (("selu", "#4a7"), ("base", "#888")):
            if values(name, "actor_success"):
                ax.axhline(100 * mean(values(name, "actor_success")), ls="--", color=color,
                           label="SFT route (SELU), test episodes" if name == "selu" else "base actor, test episodes")  # fmt: skip
        if values("selu_ppo", "actor_success"):  # where PPO ended on the same test episodes as the lines
            last = max(s for curve in ppo for s, _ in curve)
            ax.plot([last], [100 * mean(values("selu_ppo", "actor_success"))], marker="X", ms=10, ls="", color="#47a",
                    label="PPO's end, test episodes")  # fmt: skip
        ax.set_title("actor: held-out success during PPO")
        ax.set_xlabel("env steps of PPO")
        ax.set_ylabel("points")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("SELU on VirtualHome (tiny LLaVA, 2 CPU cores; seeds' mean and std)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *RUNS],
                        help="selu_ppo: SELU's critic as the PPO actor's only reward (beyond the paper); "
                             "neg_rejected, neg_relabeled, neg_none: the critic's negatives ablation.")
    parser.add_argument("--out", type=Path, default=Path("results/selu"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--jobs", type=int, default=2, help="Seeds run at once (each on 2 / jobs threads).")
    parser.add_argument("--report", action="store_true", help="Only the table and picture from what exists.")
    parser.add_argument("extra", nargs="*", help="More selu-round options, after --, e.g. -- --episodes=100")
    args = parser.parse_args(argv)
    if not args.report:
        threads = max(1, 2 // args.jobs)
        with ThreadPoolExecutor(args.jobs) as pool:
            for done in [pool.submit(run_seed, s, args.variants, args.out, threads, args.extra) for s in args.seeds]:
                done.result()
    print(report(args.out, args.seeds, args.docs))


if __name__ == "__main__":
    main()
