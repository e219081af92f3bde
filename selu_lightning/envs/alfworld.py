"""ALFWorld on the real TextWorld PDDL engine, with a schematic frame of what the agent sees (RL4VLM's 6th task).

The engine is TextWorld's ``PddlEnv`` wrapped by ALFWorld's own ``AlfredDemangler`` (ids -> "cabinet 3") and
``AlfredInfos``: what ``textworld.gym.register_games(..., wrappers=[AlfredDemangler(), AlfredInfos])`` builds, used
directly rather than through ``textworld.gym`` so that ``reset`` picks the game with the env's seeded RNG and sees the
raw PDDL facts the reward needs. Fast Downward (bundled with TextWorld) computes the admissible commands and the
expert plan. Each env holds its own copy of the Fast Downward library (~34 MB file-backed; it keeps one task in
global state); closed envs hand theirs to the next one.

Reward per step, as RL4VLM: ``50 * won + fraction of the goal's conditions met - 1 per inadmissible command``; the
fraction is read off the PDDL goal and the engine's current facts (:class:`GoalProgress`).

Games are ``.tw-pddl`` files under ``<tasks_dir>/train`` and ``<tasks_dir>/eval``:
:mod:`selu_lightning.envs.alfworld_tasks` generates them offline, and 12 train + 6 eval games of all six task types
ship with the package. Games in ALFWorld's released format (``alfworld-download``, needs the internet; not tried
here) carry the same three PDDL/grammar fields and should load the same way; without our ``selu_task`` metadata the
goal is read from the intro and the expert plan is planned at reset.

Speed (2 CPU cores, shipped games): ~48 steps/s with the frame drawn, once each game's translation is cached
(first load of a game ~0.3 s). Set ``SELU_ALFWORLD_NO_CACHE=1`` to run the engine without the caches below.

State key (GiGPO's anchor states, :meth:`AlfWorldEnv.state_key`): a hash of the engine's PDDL facts. The text is only
the last command's feedback, so equal texts can be different states and one state can be reached with different
texts; the facts are the world state itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

from selu_lightning.envs.alfworld_tasks import alfworld_data_dir, engine_guard
from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.envs.cards.render import font

__all__ = ["AlfWorldEnv", "GoalProgress", "open_engine", "SHIPPED_TASKS"]

alfworld_data_dir()  # before anything imports alfworld (it creates that folder on import)

try:
    import fast_downward
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    from textworld.envs.pddl import PddlEnv
    from textworld.envs.pddl import textgen as _textgen
except ImportError as err:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        f"{err}; the alfworld env needs `pip install alfworld==0.4.2 textworld==1.7.0` "
        "(or `pip install selu_lightning[alfworld]`)"
    ) from err

#: The games that ship with the package: ``train/`` and ``eval/`` (unseen floor plans), all six task types.
SHIPPED_TASKS = Path(__file__).parent / "data" / "alfworld"
NOTHING_HAPPENS = "Nothing happens."


def _memoize_engine() -> None:
    """Cache two pure functions TextWorld's PDDL engine calls over and over with the same arguments.

    - Fast Downward's PDDL -> SAS translation, run twice on every load AND every reset (0.2-1 s per call on a
      kitchen): a reset of an already seen game then costs milliseconds. TextWorld only reads the result.
    - The grammar parser, run on every feedback template and admissible command of every step (tatsu, ~40% of a
      step): the cache hands out a deep copy of the parsed symbols, because the engine writes into them.

    Installed once, process-wide; the engine's outputs are unchanged (``tests/test_alfworld.py`` compares).
    """
    if getattr(fast_downward.pddl2sas, "_selu_cached", False):
        return
    translate = lru_cache(maxsize=64)(fast_downward.pddl2sas)
    translate._selu_cached = True
    fast_downward.pddl2sas = translate

    parse = lru_cache(maxsize=4096)(_textgen._parse_and_convert)

    def parse_copy(*args, **kwargs):
        return copy.deepcopy(parse(*args, **kwargs))

    _textgen._parse_and_convert = parse_copy


if not os.environ.get("SELU_ALFWORLD_NO_CACHE"):
    _memoize_engine()


def _request_infos() -> "textworld.EnvInfos":
    return textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=True, facts=True, feedback=True)


#: Fast Downward libraries freed by closed engines. Each engine needs its own copy (the library keeps one planning
#: task in globals); unloading one with dlclose crashes the process at exit, so copies are kept and reused instead.
_FREE_LIBS: list = []


class _PddlEngine(PddlEnv):
    """TextWorld's ``PddlEnv``, taking its Fast Downward copy from the pool of freed ones when there is one."""

    def __init__(self, infos: "textworld.EnvInfos") -> None:
        textworld.Environment.__init__(self, infos)
        self.downward_lib = _FREE_LIBS.pop() if _FREE_LIBS else fast_downward.load_lib()


def _make_engine():
    engine = _PddlEngine(_request_infos())
    for wrapper in (AlfredDemangler(), AlfredInfos):
        engine = wrapper(engine)
    return engine


def _close_engine(engine) -> None:
    inner = engine.unwrapped
    lib = getattr(inner, "downward_lib", None)
    if lib is not None:
        lib.cleanup()  # frees the loaded task; the copy is reused by the next engine
        inner.downward_lib = None
        _FREE_LIBS.append(lib)


@contextmanager
def open_engine(game: dict[str, Any] | str | Path) -> Iterator[Any]:
    """A loaded TextWorld engine for one game (a ``.tw-pddl`` path or its JSON), closed on exit."""
    engine = _make_engine()
    try:
        with engine_guard():
            engine.load(str(game) if isinstance(game, Path) else game)
        yield engine
    finally:
        _close_engine(engine)


# --- goal progress ------------------------------------------------------------------------------------------------


def _sexp(text: str) -> list:
    tokens = re.findall(r"\(|\)|[^\s()]+", re.sub(r";[^\n]*", "", text).lower())
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    return stack[0]


def _section(tree: list, key: str) -> list | None:
    for node in tree:
        if isinstance(node, list) and node and node[0] == key:
            return node
        if isinstance(node, list):
            found = _section(node, key)
            if found is not None:
                return found
    return None


def _typed(items: list[str]) -> list[tuple[str, str]]:
    """``[a, b, -, t, c, -, u]`` -> ``[(a, t), (b, t), (c, u)]``."""
    out, pending = [], []
    it = iter(items)
    for tok in it:
        if tok == "-":
            kind = next(it)
            out += [(name, kind) for name in pending]
            pending = []
        else:
            pending.append(tok)
    return out + [(name, "object") for name in pending]


@lru_cache(maxsize=8)
def _fluent_predicates(domain: str) -> frozenset[str]:
    """Predicates some action changes (named in an ``:effect``); the others are static facts of the problem."""
    found: set[str] = set()

    def heads(node) -> None:
        if isinstance(node, list) and node:
            if isinstance(node[0], str) and node[0] not in ("and", "not", "when", "forall", "increase"):
                found.add(node[0])
            for child in node[1:] if isinstance(node[0], str) else node:
                heads(child)

    tree = _sexp(domain)
    for node in _section(tree, "define") or tree:
        if isinstance(node, list) and node and node[0] == ":action":
            effect = node[node.index(":effect") + 1]
            heads(effect)
    return frozenset(found)


@dataclass
class _Group:
    variables: list[tuple[str, str]]
    constraints: list[tuple[bool, str, tuple[str, ...]]]  # (positive, predicate, args): must hold
    conditions: list[tuple[bool, str, tuple[str, ...]]]  # fluent literals: the goal conditions counted


class GoalProgress:
    """Fraction of a PDDL goal's conditions that hold now.

    The goal is split into its top-level conjuncts (``(and G1 G2 ...)``); each is an existential over typed
    variables whose body is a conjunction of literals (nested ``exists`` flattened). A literal on a *fluent* predicate
    (one some domain action changes: ``inReceptacle``, ``isHot``, ``holds``, ``atLocation``, ``isToggled`` ...) is a
    goal condition; a literal on a static predicate (``objectType``, ``receptacleType``, ``receptacleAtLocation``,
    ``cleanable``, ``=``) only restricts which objects may be bound. For each conjunct, the binding that satisfies
    its static literals and the most conditions counts; the fraction is the sum of those bests over the total number
    of conditions. It is 1 exactly when the goal holds. For ALFWorld's task types:

    - pick & place: 1 condition (an object of the type in a receptacle of the type);
    - clean / heat / cool & place: 2 (the object clean/hot/cool; the same object in the receptacle);
    - pick two: 2 (two distinct objects in the same receptacle);
    - look at X under the lamp: 4 (lamp switched on; lamp in a receptacle - already true at the start; agent at that
      receptacle's location; X held), so that type starts at 0.25.

    Goals with ``or``/``forall``/``imply`` fall back to 0/1 on the engine's own goal check (``won``).
    """

    def __init__(self, domain: str, problem: str) -> None:
        tree = _sexp(problem)
        self.fluents = _fluent_predicates(domain)
        objects = _section(tree, ":objects")
        self.by_type: dict[str, list[str]] = {}
        for name, kind in _typed(objects[1:] if objects else []):
            self.by_type.setdefault(kind, []).append(name)
        goal = _section(tree, ":goal")
        self.groups: list[_Group] | None = None
        try:
            body = goal[1]
            conjuncts = body[1:] if body[0] == "and" else [body]
            self.groups = [self._group(c) for c in conjuncts]
        except (TypeError, IndexError, ValueError):
            self.groups = None
        self.total = sum(len(g.conditions) for g in self.groups) if self.groups else 1

    def _group(self, node: list) -> _Group:
        group = _Group([], [], [])

        def walk(n: list) -> None:
            head = n[0]
            if head == "exists":
                group.variables += _typed(n[1])
                walk(n[2])
            elif head == "and":
                for child in n[1:]:
                    walk(child)
            elif head == "not" and isinstance(n[1], list) and n[1][0] not in ("and", "or", "exists"):
                self._literal(group, False, n[1])
            elif head in ("or", "forall", "imply", "not", "when"):
                raise ValueError(f"unsupported goal operator {head!r}")
            else:
                self._literal(group, True, n)

        walk(node)
        return group

    def _literal(self, group: _Group, positive: bool, atom: list) -> None:
        literal = (positive, atom[0], tuple(atom[1:]))
        (group.conditions if atom[0] in self.fluents else group.constraints).append(literal)

    def __call__(self, facts: dict[str, set[tuple[str, ...]]], won: bool) -> float:
        if self.groups is None or self.total == 0:
            return float(won)
        return sum(self._best(g, facts) for g in self.groups) / self.total

    @staticmethod
    def _holds(literal, binding: dict[str, str], facts) -> bool | None:
        positive, pred, args = literal
        values = tuple(binding.get(a, a) if a.startswith("?") else a for a in args)
        if any(v.startswith("?") for v in values):
            return None
        truth = (values[0] == values[1]) if pred == "=" else values in facts.get(pred, ())
        return truth == positive

    def _best(self, group: _Group, facts) -> int:
        best = 0
        kinds = dict(group.variables)

        def search(binding: dict[str, str], todo: list) -> None:
            nonlocal best
            if best == len(group.conditions):
                return
            # Check every constraint already ground; extend the binding through a positive one that is not.
            pending = []
            for literal in todo:
                truth = self._holds(literal, binding, facts)
                if truth is False:
                    return
                if truth is None:
                    pending.append(literal)
            extend = next((lit for lit in pending if lit[0] and lit[1] != "="), None)
            if extend is not None:
                rest = [lit for lit in pending if lit is not extend]
                _, pred, args = extend
                for values in facts.get(pred, ()):
                    if len(values) != len(args):
                        continue
                    new = dict(binding)
                    if all(new.setdefault(a, v) == v if a.startswith("?") else a == v for a, v in zip(args, values)):
                        search(new, rest)
                return
            free = [v for v in kinds if v not in binding]
            for values in product(*(self.by_type.get(kinds[v], []) for v in free)):
                full = binding | dict(zip(free, values))
                if any(self._holds(lit, full, facts) is False for lit in pending):
                    continue
                best = max(best, sum(bool(self._holds(c, full, facts)) for c in group.conditions))
                if best == len(group.conditions):
                    return

        search({}, list(group.constraints))
        return best


def _index(facts) -> dict[str, set[tuple[str, ...]]]:
    out: dict[str, set[tuple[str, ...]]] = {}
    for fact in facts:
        out.setdefault(fact.name.lower(), set()).add(tuple(v.name.lower() for v in fact.arguments))
    return out


# --- the frame ----------------------------------------------------------------------------------------------------

_BG, _BAR, _TILE, _EDGE, _HELD = (245, 243, 236), (52, 73, 94), (255, 255, 255), (120, 120, 120), (255, 244, 214)
_PALETTE = [(231, 76, 60), (46, 134, 193), (39, 174, 96), (243, 156, 18), (142, 68, 173), (22, 160, 133)]


def _natural(name: str) -> tuple:
    """Sort key: "cabinet 2" before "cabinet 10"."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def draw_scene(title: str, items: list[tuple[str, str, bool]], size: int = 300) -> np.ndarray:
    """``render_scene``'s layout with wider tiles: ALFWorld names ("countertop 3", "toiletpaper 2") run past the
    10 characters a 3-column tile holds. ``items``: (name, state, highlighted) per tile, 2 columns x 6 rows; more are
    counted at the bottom. One colour per object type; highlighted tiles (what the agent holds) are tinted."""
    img = Image.new("RGB", (300, 300), _BG)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 299, 34], fill=_BAR)
    draw.text((8, 8), title[:34], fill=(255, 255, 255), font=font(16))
    shown = items[:12]
    for k, (name, state, highlighted) in enumerate(shown):
        x0, y0 = 6 + (k % 2) * 146, 40 + (k // 2) * 41
        draw.rectangle([x0, y0, x0 + 141, y0 + 37], fill=_HELD if highlighted else _TILE, outline=_EDGE)
        kind = name.rsplit(" ", 1)[0]
        draw.ellipse([x0 + 4, y0 + 5, x0 + 14, y0 + 15], fill=_PALETTE[sum(map(ord, kind)) % len(_PALETTE)])
        draw.text((x0 + 18, y0 + 2), name[:16], fill=(20, 20, 20), font=font(14))
        draw.text((x0 + 18, y0 + 20), state[:20], fill=(90, 90, 90), font=font(12))
    if len(items) > len(shown):
        draw.text((8, 284), f"+{len(items) - len(shown)} more", fill=(60, 60, 60), font=font(12))
    if size != 300:
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()


# --- the env ------------------------------------------------------------------------------------------------------


@register_env("alfworld")
class AlfWorldEnv(TextVisualEnv):
    """One ALFWorld household task per episode, played through text commands.

    ``reset`` draws a game of the split uniformly with the env's seeded RNG (``options={"task": i}`` picks game ``i``
    of the sorted list). ``obs["text"]`` is the engine's text: the room and the task at the start, then the feedback
    of the last command. ``info``: ``legal_actions`` = the engine's admissible commands (sorted), ``goal`` = the task
    sentence, ``success`` = the game is won, ``expert_plan`` = Fast Downward's plan from the current state (see
    ``replan``), ``goal_conditions`` = the fraction of goal conditions met (see :class:`GoalProgress`),
    ``admissible`` = whether the last command was admissible, ``task_type`` and ``gamefile``.

    Reward per step (RL4VLM): ``50 * won + goal_conditions - (1 if the command was not admissible)``. Winning
    terminates; the episode is truncated after ``max_steps`` commands. A command that is not admissible (any string
    not in ``legal_actions``, compared after stripping whitespace) leaves the game as it was: the engine's answer to
    it is "Nothing happens.", legal actions and frame do not change, and it counts as a step.

    The frame (:func:`draw_scene`) shows where the agent is, then what it can see there: the receptacles at its
    location (open/closed), the objects in those it can look into, and what it holds, each with its state (hot,
    cold, clean, on). In the middle of the room it shows the receptacle types around, with counts.
    """

    has_goal = True
    task_description = (
        "You are a household robot in the ALFRED embodied environment, playing ALFWorld. The image sketches where you "
        "are and what you can see: the receptacles next to you (open or closed), the objects in them and what you "
        "hold. Each turn, choose one of the admissible text commands: go to a receptacle, open or close it, take an "
        "object from it, move an object to it, heat/cool/clean an object with a microwave/fridge/sinkbasin, use a "
        "lamp, examine, look or inventory. Complete the task in at most 50 commands: finishing it scores 50, each "
        "step also scores the fraction of the task's conditions already met, and an inadmissible command costs 1."
    )

    def __init__(
        self,
        split: str = "train",
        tasks_dir: str | None = None,
        text_state: bool = True,
        image_size: int = 300,
        max_steps: int = 50,
        replan: bool = False,
    ) -> None:
        """
        Args:
            split: "train" or "eval": the sub-folder of ``tasks_dir`` to draw games from (the shipped eval games
                use floor plans no train game uses).
            tasks_dir: A folder with ``train/`` and ``eval/`` ``.tw-pddl`` games (``tools/make_alfworld_tasks.py``
                writes one); default: the games shipped with the package.
            text_state: Also give the engine's text in ``obs["text"]``; the frame is always drawn.
            image_size: Side of the square frame, in pixels.
            max_steps: Commands per episode before truncation.
            replan: Run Fast Downward after every command so that ``info["expert_plan"]`` is always a plan from the
                current state (10 ms to seconds per step on large kitchens). Off: it is the game's stored plan
                (the generator stores it; planned at reset if a game has none) minus the steps taken while the
                commands follow it, and None once they leave it.
        """
        super().__init__(text_state=text_state, image_size=image_size)
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval'; got {split!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1; got {max_steps}")
        root = Path(tasks_dir) if tasks_dir is not None else SHIPPED_TASKS
        self.tasks = sorted((root / split).rglob("*.tw-pddl"))
        if not self.tasks:
            raise FileNotFoundError(f"no .tw-pddl games under {root / split}")
        self.split = split
        self.max_steps = max_steps
        self.replan = replan
        self.render_mode = "rgb_array"
        self._engine = None
        self._loaded: Path | None = None
        self._over = True

    # The engine is built on first reset: a pool of envs costs nothing until used.
    def _load(self, path: Path) -> None:
        if self._engine is None:
            self._engine = _make_engine()
            self._engine.unwrapped.request_infos.policy_commands = self.replan
        if path != self._loaded:
            game = json.loads(path.read_text())
            with engine_guard():
                self._engine.load(game)
            self._progress = GoalProgress(game["pddl_domain"], game["pddl_problem"])
            meta = game.get("selu_task", {})
            self._task_type = meta.get("goal_type", "")
            self._task_goal = meta.get("description")
            self._stored_plan = meta.get("expert_plan")
            self._loaded = path

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        index = int(options["task"]) if "task" in options else int(self.np_random.integers(len(self.tasks)))
        self._current = self.tasks[index]
        self._load(self._current)
        with engine_guard():
            self._state = self._engine.reset()
        self._history: list[str] = []
        self._goal = self._task_goal
        if not self._goal:  # a game without our metadata (e.g. ALFWorld's own): the intro states the task
            match = re.search(r"Your task is to: (.*)", self._state["feedback"])
            self._goal = match.group(1).strip().rstrip(".") if match else ""
        self._text = self._state["feedback"].strip()
        if self.replan:
            self._plan = list(self._state["policy_commands"])
        else:
            if self._stored_plan is None:
                with engine_guard():
                    self._stored_plan = self._engine.unwrapped._pddl_state.replan(self._engine._entity_infos)
            self._plan = list(self._stored_plan)
        self.steps = 0
        self._admissible = True
        self._over = False
        self._refresh()
        return self._obs(), self._info()

    def step(self, action: str):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset()")
        self._ensure_engine()
        self.steps += 1
        command = str(action).strip()
        self._admissible = command in self._state["admissible_commands"]
        if self._admissible:
            with engine_guard():
                self._state, _, _ = self._engine.step(command)
            self._history.append(command)
            self._text = self._state["feedback"].strip()
            self._refresh()
            if self.replan:
                self._plan = list(self._state["policy_commands"])
            elif self._plan and self._plan[0] == command:
                self._plan = self._plan[1:]
            else:
                self._plan = None  # off the stored plan; only a replan would know
        else:
            self._text = NOTHING_HAPPENS  # what the engine answers; skipping it saves a replan
        won = bool(self._state["won"])
        reward = 50.0 * won + self._fraction - (0.0 if self._admissible else 1.0)
        terminated = won
        truncated = not terminated and self.steps >= self.max_steps
        self._over = terminated or truncated
        return self._obs(), reward, terminated, truncated, self._info()

    def _refresh(self) -> None:
        self._facts = _index(self._state["_facts"])
        self._fraction = self._progress(self._facts, bool(self._state["won"]))
        self._frame = self._draw()

    def _name(self, entity: str) -> str:
        info = self._state["_entity_infos"].get(entity)
        return (info.name if info is not None and info.name else entity).strip()

    def _draw(self) -> np.ndarray:
        facts = self._facts
        at = {loc for _, loc in facts.get("atlocation", ())}
        opened = {r for (r,) in facts.get("opened", ())}
        openable = {r for (r,) in facts.get("openable", ())}
        marks = (("ishot", "hot"), ("iscool", "cold"), ("isclean", "clean"), ("ison", "on"), ("issliced", "sliced"))

        def state_of(o: str) -> str:
            return ", ".join(word for pred, word in marks if (o,) in facts.get(pred, ()))

        def sort(ids) -> list[str]:
            return sorted(ids, key=lambda i: _natural(self._name(i)))

        held = sort(o for _, o in facts.get("holds", ()))
        items = [(self._name(o), ("held " + state_of(o)).strip(), True) for o in held]
        here = sort(r for r, loc in facts.get("receptacleatlocation", ()) if loc in at)
        if here:
            title = "At " + ", ".join(self._name(r) for r in here)
            for r in here:
                items.append((self._name(r), "open" if r in opened else "closed" if r in openable else "", False))
                if r not in openable or r in opened:
                    inside = sort(o for o, rr in facts.get("inreceptacle", ()) if rr == r)
                    items += [(self._name(o), state_of(o) or "in " + self._name(r), False) for o in inside]
        else:
            # The middle of the room: one tile per receptacle type, with how many there are.
            title = "Middle of the room"
            kinds: dict[str, list[str]] = {}
            for r in {r for r, _ in facts.get("receptacleatlocation", ())}:
                kinds.setdefault(self._name(r).rsplit(" ", 1)[0], []).append(r)
            for kind in sorted(kinds):
                n, closed = len(kinds[kind]), sum(r in openable and r not in opened for r in kinds[kind])
                items.append((kind, f"{n} here" + (f", {closed} closed" if closed else ""), False))
        return draw_scene(title, items, size=self.image_size)

    def render(self) -> np.ndarray:
        return self._frame

    def _obs(self) -> dict[str, Any]:
        return {"image": self._frame, "text": self._text if self.text_state else ""}

    def _info(self) -> dict[str, Any]:
        return {
            "legal_actions": list(self._state["admissible_commands"]),
            "goal": self._goal,
            "success": bool(self._state["won"]),
            "expert_plan": None if self._plan is None else list(self._plan),
            "goal_conditions": self._fraction,
            "admissible": self._admissible,
            "task_type": self._task_type,
            "gamefile": str(self._loaded),
        }

    def state_key(self, obs: dict[str, Any], info: dict[str, Any]) -> str:
        """SHA-1 of the engine's current PDDL facts (sorted): the world state, whatever text led to it."""
        facts = sorted((name, sorted(args)) for name, args in self._facts.items())
        return hashlib.sha1(repr(facts).encode()).hexdigest()

    # Checkpoints rebuild the env by replay (TextVisualEnv.checkpoint_by); a pickled env (a copy) works too. The
    # engine (a C library) does not pickle: drop it, and rebuild it on the next step by replaying this episode's
    # admissible commands (the engine is deterministic).
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_engine=None, _loaded=None, _state=None, _facts=None)
        return state

    def _ensure_engine(self) -> None:
        if self._state is not None:
            return
        self._load(self._current)
        with engine_guard():
            state = self._engine.reset()
            for command in self._history:
                state, _, _ = self._engine.step(command)
        self._state, self._facts = state, _index(state["_facts"])

    def close(self) -> None:
        if self._engine is not None:
            _close_engine(self._engine)
            self._engine = None
            self._loaded = None
        self._over = True
        super().close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
