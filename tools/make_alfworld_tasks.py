"""Generate solvable ALFWorld text games offline, a train split and a held-out split.

    python tools/make_alfworld_tasks.py --out /tmp/alfworld-tasks --train 120 --eval 24 --seed 0

Needs `pip install alfworld==0.4.2 textworld==1.7.0` and no internet: games are built from the PDDL domain, grammar,
floor plans and object tables the alfworld wheel ships, and each is kept only if Fast Downward's plan wins it in the
TextWorld engine. Task types go round-robin over ALFWorld's six (or those of --types); train games use ALFRED's seen
floor plans, eval games the unseen ones (or, with --eval-floor-plans seen, new games on the seen ones). The same
arguments write the same games. Use them with ``data.env_kwargs: {tasks_dir: DIR}``.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from selu_lightning.envs.alfworld_tasks import GOAL_TYPES, generate_tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder; games go to OUT/train and OUT/eval")
    parser.add_argument("--train", type=int, default=60, help="number of train games")
    parser.add_argument("--eval", type=int, default=12, help="number of held-out games (see --eval-floor-plans)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed")
    parser.add_argument("--types", nargs="+", default=list(GOAL_TYPES), choices=GOAL_TYPES, metavar="TYPE",
                        help=f"task types, round-robin (default: all six: {', '.join(GOAL_TYPES)})")
    parser.add_argument("--eval-floor-plans", choices=["unseen", "seen"], default="unseen",
                        help="held-out games on ALFRED's unseen floor plans (ALFWorld's valid_unseen) or new games on "
                             "the seen ones (valid_seen)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    written = generate_tasks(args.out, args.train, args.eval, seed=args.seed, goal_types=args.types,
                             eval_floor_plans=args.eval_floor_plans,
                             progress=lambda s: print(s, flush=True))
    for split, paths in written.items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(Counter(path.name.split("-")[1] for path in paths).items()))
        print(f"{split}: {len(paths)} games in {args.out}/{split} ({kinds})")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
