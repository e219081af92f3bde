"""Solvable ALFWorld text games generated offline from what the ``alfworld`` wheel ships.

The wheel has the PDDL domain, the TextWorld grammar, 120 AI2-THOR floor plans (receptacles with the pose an agent
stands at to reach them, and the object types each scene holds), the tables of what fits where and which objects can
be cleaned, heated, cooled or switched on, and the PDDL goal of each ALFRED task type. It has no games:
``alfworld-download`` fetches those from the internet. This module builds games of the six ALFWorld task types from
those pieces:

1. pick a floor plan where the task type makes sense (ALFRED's room rules: heating happens in kitchens, looking at
   something under a lamp in living rooms and bedrooms, ...);
2. pick the task's object and receptacle types among those the scene has (the object must fit the receptacle, be
   cleanable/heatable/coolable as the task needs; a lamp for the light task);
3. put one to three instances of every portable object type of the scene into receptacles they fit (never a target
   into a receptacle of the goal's type, so no game starts solved); the agent starts on a free floor cell;
4. write the PDDL problem, the goal from ALFRED's own goal library and the task sentence into the grammar;
5. keep the game only if the bundled Fast Downward planner finds a plan and playing it in the TextWorld engine wins.

Simplifications against the released ALFWorld games: no sliced-object variants, no movable-receptacle task type (not
one of the six), every portable object sits directly in a fixed receptacle (none inside a mug or a bowl), nothing starts
cold, hot or clean. A game is the JSON TextWorld loads as ``.tw-pddl``: ``{pddl_domain, grammar, pddl_problem,
solvable}`` plus ``selu_task`` (task type, targets, floor plan, expert plan), which the engine ignores.

    generate_tasks("/tmp/alfworld-tasks", n_train=60, n_eval=12, seed=0)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "GOAL_TYPES",
    "Layout",
    "TaskSpec",
    "load_layout",
    "sample_task",
    "build_game",
    "solve_game",
    "generate_tasks",
    "alfworld_data_dir",
    "engine_guard",
]

#: ALFWorld's six task types, in the order of its task-type ids 1..6.
GOAL_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
#: The appliance a state-change task needs, and the receptacle type that may not be the goal's (ALFRED's rule).
_APPLIANCE = {
    "pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable"),
    "pick_heat_then_place_in_recep": ("Microwave", "Heatable"),
    "pick_cool_then_place_in_recep": ("Fridge", "Coolable"),
}
_LAMPS = ("DeskLamp", "FloorLamp")
#: Where a lamp may stand (it needs a receptacle: the domain's ToggleObject asks for one at the agent's location).
_LAMP_STANDS = {"Desk", "Dresser", "SideTable", "Shelf", "CoffeeTable", "DiningTable", "TVStand", "CounterTop"}
#: Type constants the domain's actions name; every problem must declare them.
_DOMAIN_OTYPES = ("KnifeType", "ButterKnifeType")
_DOMAIN_RTYPES = ("SinkBasinType", "MicrowaveType", "FridgeType")
#: Other object types per game. Fast Downward's translation (on every reset) and search grow with objects x
#: receptacles; ALFRED's own problems list only the task's objects. 8 keeps a kitchen reset well under a second.
DISTRACTOR_TYPES = 8
_MAX_PLAN = 30  # ALFRED discards plans over 100 low-level steps; 30 high-level commands keeps games within 50 steps


def alfworld_data_dir() -> str:
    """Point ``ALFWORLD_DATA`` at a temp folder unless set: importing alfworld creates that folder."""
    if "ALFWORLD_DATA" not in os.environ:
        os.environ["ALFWORLD_DATA"] = os.path.join(tempfile.gettempdir(), "selu-alfworld-data")
    return os.environ["ALFWORLD_DATA"]


@contextmanager
def engine_guard() -> Iterator[None]:
    """Fast Downward's translator overwrites ``sys.argv`` on every game load; put it back (DDP relaunches use it)."""
    argv = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = argv


def _alfworld():
    alfworld_data_dir()
    import alfworld.gen.constants as constants
    import alfworld.gen.goal_library as goal_library
    import alfworld.info as info

    return constants, goal_library, info


@lru_cache(maxsize=1)
def domain_and_grammar() -> tuple[str, str]:
    """The wheel's PDDL domain (comments dropped: half of it is commented-out actions) and TextWorld grammar."""
    _, _, info = _alfworld()
    domain = Path(info.ALFRED_PDDL_PATH).read_text()
    lines = [line.split(";", 1)[0].rstrip() for line in domain.splitlines()]
    domain = "\n".join(line for line in lines if line.strip()) + "\n"
    return domain, Path(info.ALFRED_TWL2_PATH).read_text()


@dataclass(frozen=True)
class Layout:
    """One floor plan: its receptacles (id -> (type, location)), its object types and its free floor cells."""

    scene: int
    room: str
    receptacles: dict[str, tuple[str, tuple[int, int, int, int]]]
    object_types: frozenset[str]
    floor: np.ndarray  # (n, 2) reachable (x, z) in metres


def _room(scene: int) -> str:
    constants, _, _ = _alfworld()
    return next(room for room, scenes in constants.SCENE_TYPE.items() if scene in scenes)


@lru_cache(maxsize=None)
def load_layout(scene: int) -> Layout:
    """Read FloorPlan``scene``'s receptacles (with the pose to reach each), object types and floor cells."""
    _, _, info = _alfworld()
    folder = Path(info.__file__).parent / "gen" / "layouts"
    poses = json.loads((folder / f"FloorPlan{scene}-openable.json").read_text())
    receptacles = {}
    for rid, (x, z, rotation, horizon) in poses.items():
        parts = rid.split("|")
        rtype = parts[-1] if parts[-1].isalpha() else parts[0]  # "Sink|...|SinkBasin" is a SinkBasin
        # Grid units of 0.25 m and quarter turns, as ALFRED names its navigation points.
        loc = (int(round(x / 0.25)), int(round(z / 0.25)), int(rotation) // 90 % 4, int(horizon))
        receptacles[rid] = (rtype, loc)
    objects = frozenset(json.loads((folder / f"FloorPlan{scene}-objects.json").read_text()))
    floor = np.load(folder / f"FloorPlan{scene}-layout.npy")
    return Layout(scene, _room(scene), receptacles, objects, floor)


@dataclass
class TaskSpec:
    """Everything a game is written from."""

    goal_type: str
    scene: int
    object_target: str
    parent_target: str | None
    toggle_target: str | None
    receptacles: dict[str, tuple[str, tuple[int, int, int, int]]]
    placements: dict[str, str]  # object id -> receptacle id
    agent_loc: tuple[int, int, int, int]
    description: str


def _fits() -> dict[str, set[str]]:
    constants, _, _ = _alfworld()
    return {rtype: set(objs) for rtype, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}


def _portable(layout: Layout) -> list[str]:
    """Object types of the scene that some receptacle holds (the pickable ones), no sliced variants."""
    constants, _, _ = _alfworld()
    holdable = set().union(*_fits().values())
    return sorted(t for t in layout.object_types if t in holdable and t in constants.OBJECTS and "Sliced" not in t)


def _scenes(split: str) -> list[int]:
    constants, _, info = _alfworld()
    folder = Path(info.__file__).parent / "gen" / "layouts"
    pool = constants.TRAIN_SCENE_NUMBERS if split == "train" else constants.TEST_SCENE_NUMBERS
    return [s for s in pool if (folder / f"FloorPlan{s}-openable.json").exists()]


def sample_task(
    rng: np.random.Generator, goal_type: str, split: str = "train", distractors: int = DISTRACTOR_TYPES
) -> TaskSpec | None:
    """One random task of ``goal_type`` on a floor plan of ``split`` (train: ALFRED's seen scenes, eval: unseen).

    Besides the target objects, up to ``distractors`` other portable object types of the scene get one or two
    instances each. Returns None when the drawn floor plan cannot host the task type; call again with the same
    generator.
    """
    constants, goal_library, _ = _alfworld()
    fits = _fits()
    rooms = constants.GOALS_VALID[goal_type]
    scenes = [s for s in _scenes(split) if _room(s) in rooms]
    layout = load_layout(int(rng.choice(scenes)))
    rtypes = {rtype for rtype, _ in layout.receptacles.values()}
    portable = _portable(layout)

    toggle = parent = None
    if goal_type == "look_at_obj_in_light":
        lamps = [t for t in _LAMPS if t in layout.object_types]
        stands = [r for r, (t, _) in layout.receptacles.items() if t in _LAMP_STANDS]
        if not lamps or not stands:
            return None
        toggle = str(rng.choice(lamps))
        candidates = portable
        parent_choices: list[str] = []
    else:
        need = _APPLIANCE.get(goal_type)
        if need is not None and need[0] not in rtypes:
            return None
        able = set(constants.VAL_ACTION_OBJECTS[need[1]]) if need else None
        candidates = [t for t in portable if able is None or t in able]
        # The goal receptacle: one the object fits in, never the task's own appliance.
        parent_choices = sorted(r for r in rtypes if r in fits and (need is None or r != need[0]))
    pairs = [(o, p) for o in candidates for p in (parent_choices or [None]) if p is None or o in fits[p]]
    # The object must also fit somewhere that is not of the goal type, to start elsewhere.
    pairs = [(o, p) for o, p in pairs if any(o in fits.get(r, ()) and r != p for r in rtypes)]
    if not pairs:
        return None
    obj, parent = pairs[int(rng.integers(len(pairs)))]

    others = [t for t in portable if t != obj]
    keep = sorted(rng.choice(others, size=min(distractors, len(others)), replace=False).tolist()) if others else []
    placements: dict[str, str] = {}
    rec_ids = sorted(layout.receptacles)
    for otype in sorted([obj, *keep]):
        low = 2 if (otype == obj and goal_type == "pick_two_obj_and_place") else 1
        count = int(rng.integers(low, 4)) if otype == obj else int(rng.integers(1, 3))
        spots = [r for r in rec_ids if otype in fits.get(layout.receptacles[r][0], ())]
        if otype == obj:
            spots = [r for r in spots if layout.receptacles[r][0] != parent]
        if not spots:
            continue
        for k in range(count):
            placements[f"{otype}|{k + 1:02d}"] = str(rng.choice(spots))
    if toggle is not None:
        stands = [r for r, (t, _) in layout.receptacles.items() if t in _LAMP_STANDS]
        placements[f"{toggle}|01"] = str(rng.choice(sorted(stands)))

    taken = {loc[:2] for _, loc in layout.receptacles.values()}
    cells = [c for c in layout.floor if (int(round(c[0] / 0.25)), int(round(c[1] / 0.25))) not in taken]
    x, z = cells[int(rng.integers(len(cells)))]
    agent_loc = (int(round(x / 0.25)), int(round(z / 0.25)), int(rng.integers(4)), 30)

    templates = goal_library.gdict[goal_type]["templates"]
    template = templates[int(rng.integers(len(templates)))]
    description = template.format(obj=obj.lower(), recep=(parent or "").lower(), toggle=(toggle or "").lower())
    return TaskSpec(goal_type, layout.scene, obj, parent, toggle, dict(layout.receptacles), placements, agent_loc,
                    description)  # fmt: skip


def _mangle(name: str) -> str:
    # The id spelling ALFWorld's games use (its Demangler reverses it into "cabinet 3").
    for a, b in (("|", "_bar_"), ("+", "_plus_"), ("-", "_minus_"), (".", "_dot_"), (",", "_comma_")):
        name = name.replace(a, b)
    return name


def _loc(loc: tuple[int, int, int, int]) -> str:
    return _mangle("loc|%d|%d|%d|%d" % loc)


def problem_pddl(spec: TaskSpec) -> str:
    """The PDDL problem of ``spec``: objects, initial facts and ALFRED's goal for its task type."""
    constants, goal_library, _ = _alfworld()
    fits = _fits()
    used = {rid for rid in spec.placements.values()} | set(spec.receptacles)
    receptacles = sorted(used)
    objects = sorted(spec.placements)
    otype = {o: o.split("|")[0] for o in objects}
    rtype = {r: spec.receptacles[r][0] for r in receptacles}
    locations = sorted({spec.receptacles[r][1] for r in receptacles} | {spec.agent_loc})
    otypes = sorted(set(otype.values()) | {spec.object_target} | {t[: -len("Type")] for t in _DOMAIN_OTYPES})
    rtypes = sorted(set(rtype.values()) | ({spec.parent_target} if spec.parent_target else set())
                    | {t[: -len("Type")] for t in _DOMAIN_RTYPES})  # fmt: skip

    decl = ["agent1 - agent"]
    decl += [f"{_mangle(o)} - object" for o in objects]
    decl += [f"{_mangle(r)} - receptacle" for r in receptacles]
    decl += [f"{_loc(loc)} - location" for loc in locations]
    decl += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]

    init = ["(= (total-cost) 0)", f"(atLocation agent1 {_loc(spec.agent_loc)})"]
    for r in receptacles:
        init.append(f"(receptacleType {_mangle(r)} {rtype[r]}Type)")
        init.append(f"(receptacleAtLocation {_mangle(r)} {_loc(spec.receptacles[r][1])})")
        if rtype[r] in constants.OPENABLE_CLASS_SET:
            init.append(f"(openable {_mangle(r)})")
    actions = constants.VAL_ACTION_OBJECTS
    for o in objects:
        t, r = otype[o], spec.placements[o]
        init.append(f"(objectType {_mangle(o)} {t}Type)")
        init.append(f"(inReceptacle {_mangle(o)} {_mangle(r)})")
        init.append(f"(objectAtLocation {_mangle(o)} {_loc(spec.receptacles[r][1])})")
        if t in _LAMPS:
            init.append(f"(toggleable {_mangle(o)})")
            continue
        init.append(f"(pickupable {_mangle(o)})")
        for flag, table in (("cleanable", "Cleanable"), ("heatable", "Heatable"), ("coolable", "Coolable"),
                            ("sliceable", "Sliceable")):  # fmt: skip
            if t in actions[table]:
                init.append(f"({flag} {_mangle(o)})")
        if t in constants.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {_mangle(o)})")
    for r in rtypes:
        for t in otypes:
            if t in fits.get(r, ()):
                init.append(f"(canContain {r}Type {t}Type)")

    goal = goal_library.gdict[spec.goal_type]["pddl"].format(
        obj=spec.object_target, recep=spec.parent_target or "", toggle=spec.toggle_target or ""
    )
    goal = goal.replace(" # ", " - ").strip()
    goal = goal[: goal.rstrip().rfind(")")].rstrip()  # the library's goals also close the (define ...)
    name = f"{spec.goal_type}-{spec.scene}"
    body = "\n        ".join
    return (
        f"(define (problem {name})\n    (:domain alfred)\n    (:objects\n        {body(decl)}\n    )\n"
        f"    (:init\n        {body(init)}\n    )\n    {goal}\n)\n"
    )


def build_game(spec: TaskSpec) -> dict[str, Any]:
    """The ``.tw-pddl`` JSON of ``spec`` (``solvable`` still False: :func:`solve_game` checks it)."""
    domain, grammar = domain_and_grammar()
    return {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", spec.description),
        "pddl_problem": problem_pddl(spec),
        "solvable": False,
        "selu_task": {
            "goal_type": spec.goal_type,
            "scene": f"FloorPlan{spec.scene}",
            "object_target": spec.object_target,
            "parent_target": spec.parent_target,
            "toggle_target": spec.toggle_target,
            "description": spec.description,
        },
    }


def solve_game(game: dict[str, Any]) -> list[str] | None:
    """Plan with Fast Downward, play the plan in the TextWorld engine; the plan if it wins, else None."""
    from selu_lightning.envs.alfworld import open_engine

    with open_engine(game) as engine, engine_guard():
        state = engine.reset()
        plan = list(state["policy_commands"] or [])
        if not plan:
            return None
        for command in plan:
            if command not in state["admissible_commands"]:
                return None
            state, _, _ = engine.step(command)
        return plan if state["won"] else None


def generate_tasks(
    out_dir: str | os.PathLike, n_train: int, n_eval: int, seed: int = 0,
    progress: Callable[[str], None] | None = None, goal_types: Sequence[str] = GOAL_TYPES,
    eval_floor_plans: str = "unseen",
) -> dict[str, list[Path]]:  # fmt: skip
    """Write ``n_train`` + ``n_eval`` solvable games under ``out_dir/{train,eval}/`` and return their paths.

    Task types go round-robin over ``goal_types`` (by default ALFWorld's six: any six consecutive games hold all
    six); train games use ALFRED's seen floor plans, eval games its unseen ones (ALFWorld's ``valid_unseen``) or,
    with ``eval_floor_plans="seen"``, new games on the seen ones (``valid_seen``: new object placements and tasks in
    rooms training knows). Game ``i`` of a split depends only on (seed, split, i, its task type, its floor plans):
    the same arguments write the same files.
    """
    if eval_floor_plans not in ("seen", "unseen"):
        raise ValueError(f"eval_floor_plans must be 'seen' or 'unseen'; got {eval_floor_plans!r}")
    goal_types = tuple(goal_types)
    unknown = sorted(set(goal_types) - set(GOAL_TYPES))
    if not goal_types or unknown:
        raise ValueError(f"goal_types must be some of {', '.join(GOAL_TYPES)}; got {list(goal_types)}")
    out = Path(out_dir)
    written: dict[str, list[Path]] = {}
    for split_id, (split, count) in enumerate((("train", n_train), ("eval", n_eval))):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        written[split] = []
        for i in range(count):
            goal_type = goal_types[i % len(goal_types)]
            rng = np.random.default_rng([seed, split_id, i])
            for attempt in range(200):
                spec = sample_task(rng, goal_type, "train" if eval_floor_plans == "seen" else split)
                if spec is None:
                    continue
                game = build_game(spec)
                plan = solve_game(game)
                if plan is not None and len(plan) <= _MAX_PLAN:
                    break
            else:
                raise RuntimeError(f"no solvable {goal_type} game in 200 draws (seed {seed}, {split} #{i})")
            game["solvable"] = True
            game["selu_task"]["expert_plan"] = plan
            path = folder / f"{i:04d}-{goal_type}-FloorPlan{spec.scene}.tw-pddl"
            path.write_text(json.dumps(game, indent=None, sort_keys=True))
            written[split].append(path)
            if progress is not None:
                progress(f"[{split} {i + 1}/{count}] {goal_type} FloorPlan{spec.scene}: "
                         f"{spec.description!r}, plan {len(plan)} steps, {attempt + 1} draw(s)")  # fmt: skip
    return written
