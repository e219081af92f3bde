"""VirtualHome: household tasks on VirtualHome's evolving-graph simulator (symbolic, no Unity), text actions.

Needs ``pip install --no-deps virtualhome==2.3.0`` (its pinned dependencies do not build on Python 3.11). The
package's ``__init__`` crashes on import, so the simulator is imported as top-level ``evolving_graph`` from
``<site-packages>/virtualhome/simulation``. The package ships no scene graphs: the apartments used here are in
``selu_lightning/envs/data/virtualhome/*.json`` (evolving-graph format: nodes with class, category, properties,
states; edges INSIDE / ON / CLOSE / FACING). Any graph in that format can be passed as a scene by path.

State key (GiGPO's anchor states): the default, ``obs["text"]`` (room, posture, what is held, what is close and
visible, with states), or the frame's hash without ``text_state``. It names what the agent observes, not the whole
graph: objects out of sight do not enter it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from selu_lightning.critic.tasks import (
    SceneObject,
    TaskSpec,
    household_instruction,
    merge_objects,
    name_and_details,
    split_listing,
)
from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.envs.render import render_scene


def _add_simulator_to_path() -> None:
    spec = importlib.util.find_spec("virtualhome")  # finds the package without running its broken __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("VirtualHome needs `pip install --no-deps virtualhome==2.3.0`")
    sim_dir = str(Path(next(iter(spec.submodule_search_locations))) / "simulation")
    if sim_dir not in sys.path:
        sys.path.append(sim_dir)  # appended: its generic top-level names must not shadow anything else


_add_simulator_to_path()

from evolving_graph.common import TimeMeasurement  # noqa: E402
from evolving_graph.environment import (  # noqa: E402
    AddEdges,
    AnyNode,
    CharacterNode,
    DeleteEdges,
    EnvironmentGraph,
    EnvironmentState,
    GraphNode,
    NodeInstance,
    Property,
    Relation,
    State,
)
from evolving_graph.execution import ExecutionInfo, ScriptExecutor  # noqa: E402
from evolving_graph.scripts import Script, parse_script_line  # noqa: E402

__all__ = ["VirtualHomeEnv", "Task", "TASK_KINDS", "SCENE_DIR", "available_scenes"]

SCENE_DIR = Path(__file__).parent / "data" / "virtualhome"
#: Task kinds ("put" covers both "put X in Y" and "put X on Y").
TASK_KINDS = ("pick up", "open", "switch on", "sit on", "put")
_CHAR = 0  # the evolving-graph character index
_HANDS = (Relation.HOLDS_RH, Relation.HOLDS_LH)


def available_scenes() -> list[str]:
    """Names of the bundled apartments."""
    return sorted(p.stem for p in SCENE_DIR.glob("*.json"))


@lru_cache(maxsize=32)
def _load_graph(path: str) -> EnvironmentGraph:
    with open(path) as f:
        return EnvironmentGraph(json.load(f))


@dataclass(frozen=True)
class Task:
    """``kind`` one of "pick up", "open", "switch on", "sit on", "put in", "put on"; node ids in the scene."""

    kind: str
    obj: int
    dest: int | None = None


class _Scene:
    """A scene graph plus the names the agent uses for its nodes (unique, readable, stable)."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.graph = _load_graph(path)
        nodes = sorted(self.graph.get_nodes(), key=lambda n: n.id)
        self.rooms = [n.id for n in nodes if n.category == "Rooms"]
        self.objects = [n.id for n in nodes if n.category not in ("Rooms", "Characters")]
        if not self.rooms or not self.graph.get_nodes_by_attr("class_name", "character"):
            raise ValueError(f"scene {name!r} needs rooms and a character node")
        state = EnvironmentState(self.graph, {}, instance_selection=True)
        self.home_room = {i: _room_of(state, self.graph.get_node(i)).id for i in self.objects}
        self.names = self._names(nodes)
        self.ids = {v: k for k, v in self.names.items()}

    def _names(self, nodes: list[GraphNode]) -> dict[int, str]:
        """The class name if unique; else numbered (by id) if all copies share a room ("kitchencabinet 2"); else
        prefixed by the room ("bedroom tv"), and numbered within the room too if needed ("kitchen chair 1")."""
        names = {n.id: n.class_name for n in nodes if n.category == "Rooms"}
        objs = [self.graph.get_node(i) for i in self.objects]
        for node in objs:
            same = [o for o in objs if o.class_name == node.class_name]
            room = self.home_room[node.id]
            here = [o.id for o in same if self.home_room[o.id] == room]
            number = f" {here.index(node.id) + 1}" if len(here) > 1 else ""
            prefix = "" if len(here) == len(same) else f"{names[room]} "
            names[node.id] = f"{prefix}{node.class_name}{number}"
        return names


def _room_of(state: EnvironmentState, node: GraphNode) -> GraphNode:
    if node.category == "Rooms":
        return node
    for n in state.get_nodes_from(node, Relation.INSIDE):
        if n.category == "Rooms":
            return n
    for n in state.get_nodes_from(node, Relation.INSIDE):  # inside a container inside a room
        return _room_of(state, n)
    raise ValueError(f"{node} is not inside any room")


@register_env("virtualhome")
class VirtualHomeEnv(TextVisualEnv):
    """Household tasks in an apartment graph, executed by VirtualHome's evolving-graph simulator.

    ``reset`` draws a scene from ``scenes``, a start room for the character, a task kind from ``task_kinds`` and
    a task of that kind (all with ``self.np_random``) among the feasible ones: not already achieved and solvable
    by the scripted expert (``expert_actions``) within ``max_steps``. Kinds: "pick up X", "open X", "switch on
    X", "sit on X", "put X in Y" / "put X on Y". ``success`` is checked on the graph: X held in a hand / X OPEN
    / X ON / character SITTING and ON X / X INSIDE or ON Y (no longer held).

    Actions (text -> evolving-graph script line): "walk to <room>" and "walk to <object>" (``[walk]``),
    "grab X" (``[grab]``), "open X" / "close X", "switch on X" / "switch off X", "sit on X", "stand up",
    "put X on Y" (``[putback]``), "put X in Y" (``[putin]``). Objects are those the agent can see: in its room
    and not inside a closed container; rooms can always be walked to. ``legal_actions`` lists exactly the
    actions the simulator would execute now (each well-formed candidate is checked against the real
    preconditions: being close, a free hand, the container open, not sitting, ...).

    Any other action string, unparseable, naming something not visible, or refused by the simulator, changes
    nothing: reward 0, it counts as a step, and ``info["action_error"]`` says why (the simulator's message
    where it refused). Reward is 1 when the task is achieved (that ends the episode), 0 otherwise; truncated
    after ``max_steps`` (SELU: 10). ``info["script_line"]`` is the line executed this step (or "").

    obs text (``text_state``): the room, what the character holds, the visible objects with their states and
    places (those it is close to first), the other rooms. Image: ``render_scene`` of the same facts.
    ``reset(options={"scene": ..., "start_room": ..., "task": "Put the apple in the fridge."})`` fixes any of
    them (a task must be feasible from that start).
    """

    has_goal = True
    task_description = (
        "You control a person in a house (VirtualHome). You see the room you are in, the objects in it with "
        "their states (open/closed, on/off) and places, and what you hold. Use one of the listed actions: "
        '"walk to <room or object>", "grab <object>", "open <object>", "close <object>", "switch on <object>", '
        '"switch off <object>", "sit on <object>", "stand up", "put <object> on <object>", "put <object> in '
        '<object>". Walk to an object before using it; things inside a closed container are hidden until you '
        "open it; you have two hands; you cannot walk while sitting. Complete the instruction in at most 10 actions."
    )

    def __init__(
        self,
        scenes: Sequence[str] | None = None,
        text_state: bool = True,
        image_size: int = 300,
        max_steps: int = 10,
        task_kinds: Sequence[str] | None = None,
    ) -> None:
        """
        Args:
            scenes: Bundled apartment names (``available_scenes()``) or paths to evolving-graph JSON files;
                default: every bundled apartment.
            text_state: Also describe the scene in ``obs["text"]``.
            image_size: Side of the square observation image.
            max_steps: Step limit per episode; tasks are sampled among those the expert finishes within it.
            task_kinds: Subset of ``TASK_KINDS`` to sample from (default: all).
        """
        super().__init__(text_state=text_state, image_size=image_size)
        self.scene_names = list(scenes) if scenes is not None else available_scenes()
        if not self.scene_names:
            raise ValueError("scenes must name at least one scene")
        self._paths = [self._resolve(s) for s in self.scene_names]
        self.task_kinds = list(task_kinds) if task_kinds is not None else list(TASK_KINDS)
        bad = [k for k in self.task_kinds if k not in TASK_KINDS]
        if bad or not self.task_kinds:
            raise ValueError(f"task_kinds must be a non-empty subset of {TASK_KINDS} (got {self.task_kinds})")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (got {max_steps})")
        self.max_steps = max_steps
        self.render_mode = "rgb_array"
        self._scenes: dict[int, _Scene] = {}
        self._tasks: dict[tuple[int, int], list[Task]] = {}
        self._over = True

    @staticmethod
    def _resolve(scene: str) -> str:
        path = Path(scene) if scene.endswith(".json") else SCENE_DIR / f"{scene}.json"
        if not path.is_file():
            raise ValueError(f"unknown VirtualHome scene {scene!r}; bundled: {', '.join(available_scenes())}")
        return str(path)

    def _scene(self, k: int) -> _Scene:
        if k not in self._scenes:
            self._scenes[k] = _Scene(self.scene_names[k], self._paths[k])
        return self._scenes[k]

    # -- episode ---------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        k = int(self.np_random.integers(len(self.scene_names)))  # drawn even when fixed: the RNG stream stays put
        if "scene" in options:
            if options["scene"] not in self.scene_names:
                raise ValueError(f"scene {options['scene']!r} is not one of this env's scenes {self.scene_names}")
            k = self.scene_names.index(options["scene"])
        self.scene = self._scene(k)
        start = self.scene.rooms[int(self.np_random.integers(len(self.scene.rooms)))]
        if "start_room" in options:
            start = self.scene.ids[options["start_room"]]
        self._state = self._start_state(start)
        self._refresh()
        tasks = self._feasible_tasks(k, start)
        if "task" in options:
            wanted = _norm_goal(options["task"])
            matches = [t for t in tasks if _norm_goal(self.goal_text(t)) == wanted]
            if not matches:
                where = f"{self.scene.name} from the {self.scene.names[start]}"
                raise ValueError(f"task {options['task']!r} is not feasible in {where} within {self.max_steps} steps")
            self.task = matches[0]
        else:
            kinds = [kind for kind in self.task_kinds if any(_kind(t) == kind for t in tasks)]
            if not kinds:
                raise RuntimeError(
                    f"no feasible task of kinds {self.task_kinds} in {self.scene.name} within {self.max_steps} steps"
                )
            kind = kinds[int(self.np_random.integers(len(kinds)))]
            pool = [t for t in tasks if _kind(t) == kind]
            self.task = pool[int(self.np_random.integers(len(pool)))]
        self.steps = 0
        self._success = False
        self._over = False
        return self._obs(), self._info(error="", line="")

    def step(self, action: str):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset()")
        key = _norm(action) if isinstance(action, str) else ""
        line = self._candidates.get(key, "")
        error = "" if line else f"{action!r} is not an action on something you can see"
        if line:
            info = ExecutionInfo()
            new_state = next(ScriptExecutor.call_action_method(_script(line), self._state, info, _CHAR), None)
            TimeMeasurement._measurement_time.clear()  # the simulator keeps every timer it starts: drop them
            if new_state is None:
                error, line = info.get_error_string() or f"the simulator refused {line}", ""
            else:
                self._state = _materialise(new_state)
                self._refresh()
        self.steps += 1
        self._success = self.achieved(self.task)
        terminated = self._success
        truncated = not terminated and self.steps >= self.max_steps
        self._over = terminated or truncated
        return self._obs(), float(terminated), terminated, truncated, self._info(error=error, line=line)

    # -- graph queries -----------------------------------------------------------------------------------
    def _start_state(self, room: int) -> EnvironmentState:
        state = EnvironmentState(self.scene.graph, {}, instance_selection=True)
        placed = [Relation.INSIDE, Relation.CLOSE, Relation.FACING, Relation.ON]
        state.apply_changes([
            DeleteEdges(CharacterNode(_CHAR), placed, AnyNode()),
            AddEdges(CharacterNode(_CHAR), Relation.INSIDE, NodeInstance(self.scene.graph.get_node(room))),
        ])  # fmt: skip
        TimeMeasurement._measurement_time.clear()
        return _materialise(state)

    def _node(self, i: int) -> GraphNode:
        return self._state.get_node(i)

    def _char(self) -> GraphNode:
        return next(self._state.get_char_node(_CHAR))  # current: the state is materialised after each step

    def _held(self) -> list[int]:
        return sorted(n.id for r in _HANDS for n in self._state.get_nodes_from(self._char(), r))

    def _holder(self, i: int) -> tuple[str, GraphNode] | None:
        """("in", container) or ("on", surface) for what holds object ``i``, if not a room."""
        node = self._node(i)
        for rel, word in ((Relation.INSIDE, "in"), (Relation.ON, "on")):
            for n in self._state.get_nodes_from(node, rel):
                if n.category != "Rooms":
                    return word, n
        return None

    def _hidden(self, i: int) -> bool:
        where = self._holder(i)
        return where is not None and where[0] == "in" and State.CLOSED in where[1].states

    def achieved(self, task: Task) -> bool:
        """Whether ``task`` holds in the current graph."""
        obj, char = self._node(task.obj), self._char()
        if task.kind == "pick up":
            return obj.id in self._held()
        if task.kind == "open":
            return State.OPEN in obj.states
        if task.kind == "switch on":
            return State.ON in obj.states
        if task.kind == "sit on":
            return State.SITTING in char.states and self._state.has_edge(char, Relation.ON, obj)
        relation = Relation.INSIDE if task.kind == "put in" else Relation.ON
        return self._state.has_edge(obj, relation, self._node(task.dest)) and obj.id not in self._held()

    def _refresh(self) -> None:
        """Recompute what the agent sees and the legal actions (after every change of state)."""
        names, char = self.scene.names, self._char()
        self._room = _room_of(self._state, char).id
        held = self._held()
        close = {n.id for n in self._state.get_nodes_from(char, Relation.CLOSE)}
        here = [i for i in self.scene.objects if _room_of(self._state, self._node(i)).id == self._room]
        visible = [i for i in here if i not in held and not self._hidden(i)]
        self._visible = sorted(visible, key=lambda i: (i not in close, i))
        self._close = close
        cand: dict[str, str] = {}
        for r in self.scene.rooms:
            if r != self._room:
                cand[f"walk to {names[r]}"] = _line("walk", self._node(r))
        for i in self._visible:
            node, name = self._node(i), names[i]
            props = node.properties
            cand[f"walk to {name}"] = _line("walk", node)
            if Property.GRABBABLE in props:
                cand[f"grab {name}"] = _line("grab", node)
            if Property.CAN_OPEN in props:
                cand[f"open {name}"] = _line("open", node)
                cand[f"close {name}"] = _line("close", node)
            if Property.HAS_SWITCH in props:
                cand[f"switch on {name}"] = _line("switchon", node)
                cand[f"switch off {name}"] = _line("switchoff", node)
            if Property.SITTABLE in props:
                cand[f"sit on {name}"] = _line("sit", node)
        cand["stand up"] = "[standup]"
        for h in held:
            for i in self._visible:
                dest = self._node(i)
                if Property.SURFACES in dest.properties:
                    cand[f"put {names[h]} on {names[i]}"] = _line("putback", self._node(h), dest)
                if Property.CONTAINERS in dest.properties:
                    cand[f"put {names[h]} in {names[i]}"] = _line("putin", self._node(h), dest)
        self._candidates = cand
        self._legal = [a for a, line in cand.items() if self._executable(line)]

    def _executable(self, line: str) -> bool:
        check = ScriptExecutor.call_action_method(_script(line), self._state, ExecutionInfo(), _CHAR, modify=False)
        return next(check, None) is not None

    # -- tasks and the scripted expert ---------------------------------------------------------------------
    def goal_text(self, task: Task) -> str:
        names = self.scene.names
        if task.kind in ("put in", "put on"):
            return f"Put the {names[task.obj]} {task.kind[4:]} the {names[task.dest]}."
        return f"{task.kind.capitalize()} the {names[task.obj]}."

    def _feasible_tasks(self, k: int, start: int) -> list[Task]:
        """Every task not yet achieved whose expert program fits in ``max_steps`` (cached per scene and start)."""
        if (k, start) not in self._tasks:
            g = self.scene.graph
            nodes = [g.get_node(i) for i in self.scene.objects]
            has = lambda n, p: p in n.properties  # noqa: E731
            grabbable = [n for n in nodes if has(n, Property.GRABBABLE)]
            tasks = [Task("pick up", n.id) for n in grabbable]
            tasks += [Task("open", n.id) for n in nodes if has(n, Property.CAN_OPEN) and State.CLOSED in n.states]
            tasks += [Task("switch on", n.id) for n in nodes if has(n, Property.HAS_SWITCH) and State.OFF in n.states
                      and State.PLUGGED_OUT not in n.states]  # fmt: skip
            tasks += [Task("sit on", n.id) for n in nodes if has(n, Property.SITTABLE)]
            fixed = [n for n in nodes if not has(n, Property.GRABBABLE)]
            for x in grabbable:
                for y in fixed:
                    for kind, prop in (("put in", Property.CONTAINERS), ("put on", Property.SURFACES)):
                        if has(y, prop):
                            tasks.append(Task(kind, x.id, y.id))
            tasks = [t for t in tasks if not self.achieved(t) and len(self.expert_actions(t)) <= self.max_steps]
            self._tasks[(k, start)] = tasks
        return self._tasks[(k, start)]

    def expert_actions(self, task: Task | None = None) -> list[str]:
        """A program (text actions) that achieves ``task`` (default: this episode's) from the current state.

        Scripted from the graph's structure: stand up if sitting, walk to the object's room, open its closed
        container (or walk to the object), act; for "put", then walk to the destination's room and the
        destination, open it if needed, put. Used to keep sampled tasks feasible and as an oracle in tests.
        """
        task = task or self.task
        names = self.scene.names
        room = self._room
        plan: list[str] = []
        if State.SITTING in self._char().states and not (task.kind == "sit on" and self.achieved(task)):
            plan.append("stand up")

        def reach(i: int) -> None:
            nonlocal room
            if i in self._held():
                return
            target_room = _room_of(self._state, self._node(i)).id
            if target_room != room:
                plan.append(f"walk to {names[target_room]}")
                room = target_room
            where = self._holder(i)
            if where is not None and where[0] == "in" and State.CLOSED in where[1].states:
                plan.extend([f"walk to {names[where[1].id]}", f"open {names[where[1].id]}"])
            else:
                plan.append(f"walk to {names[i]}")

        name = names[task.obj]
        if task.kind in ("pick up", "put in", "put on"):
            if task.obj not in self._held():
                reach(task.obj)
                plan.append(f"grab {name}")
            if task.kind != "pick up":
                dest = self._node(task.dest)
                reach(task.dest)
                if task.kind == "put in" and State.CLOSED in dest.states:
                    plan.append(f"open {names[task.dest]}")
                plan.append(f"put {name} {task.kind[4:]} {names[task.dest]}")
        else:
            reach(task.obj)
            plan.append(f"{task.kind} {name}")
        return plan

    # -- observation ---------------------------------------------------------------------------------------
    def _describe(self, i: int) -> str:
        node, parts = self._node(i), []
        if Property.CAN_OPEN in node.properties:
            parts.append("open" if State.OPEN in node.states else "closed")
        if Property.HAS_SWITCH in node.properties:
            parts.append("on" if State.ON in node.states else "off")
        where = self._holder(i)
        if where is not None and Property.GRABBABLE in node.properties:
            parts.append(f"{where[0]} {self.scene.names[where[1].id]}")
        return ", ".join(parts)

    def _where_am_i(self) -> tuple[str, str]:
        names, char = self.scene.names, self._char()
        seats = [n for n in self._state.get_nodes_from(char, Relation.ON)]
        posture = f"sitting on the {names[seats[0].id]}" if State.SITTING in char.states and seats else "standing"
        held = [names[i] for i in self._held()]
        return posture, (" and ".join(held) if held else "nothing")

    def _obs(self) -> dict[str, Any]:
        names = self.scene.names
        posture, held = self._where_am_i()
        room = names[self._room]
        items = [(_tile_name(names[i], room), self._describe(i)) for i in self._visible]
        near = [names[i] for i in self._visible if i in self._close]
        title = f"{room}: holding {held}" if posture == "standing" else f"{room}: {posture}"
        image = _frame(title, tuple(items), f"near: {', '.join(near)}" if near else "", self.image_size).copy()
        text = ""
        if self.text_state:

            def listed(ids: list[int]) -> str:
                return ", ".join(names[i] + (f" ({d})" if (d := self._describe(i)) else "") for i in ids)

            close = [i for i in self._visible if i in self._close]
            far = [i for i in self._visible if i not in self._close]
            others = [names[r] for r in self.scene.rooms if r != self._room]
            text = f"You are in the {room}, {posture}, holding {held}."
            if close:
                text += f"\nClose to you: {listed(close)}."
            text += f"\nYou see: {listed(far) or 'nothing else'}."
            text += f"\nOther rooms: {', '.join(others)}."
        self._frame = image
        return {"image": image, "text": text}

    # -- task structure (SELU's critic: what an instruction asks, what an observation shows; never success) --
    task_verbs = ("pick up", "open", "switch on", "sit on", "put in", "put on")

    @classmethod
    def task_spec(cls, instruction: str) -> TaskSpec | None:
        """Verb and object names of an instruction as ``goal_text`` writes it ("Put the apple in the fridge.")."""
        text = _norm(instruction).rstrip(".")
        if text.startswith("put the "):
            for prep in ("in", "on"):
                obj, found, dest = text[len("put the ") :].partition(f" {prep} the ")
                if found and obj and dest:
                    return TaskSpec(f"put {prep}", (obj, dest))
            return None
        for verb in cls.task_verbs[:4]:
            obj = text.removeprefix(f"{verb} the ")
            if obj != text and obj:
                return TaskSpec(verb, (obj,))
        return None

    @classmethod
    def task_instruction(cls, spec: TaskSpec) -> str:
        """The instruction ``goal_text`` writes for a spec."""
        return household_instruction(spec)

    @classmethod
    def scene_objects(cls, observation: str) -> list[SceneObject]:
        """Objects an observation's text lists: held ("held"), sat on ("sat on"), close and seen, with the states
        and places the text gives ("open", "off", "in fridge")."""
        items: list[tuple[str, list[str]]] = []
        for line in observation.splitlines():
            if line.startswith("You are in the "):
                where, _, held = line.rstrip(".").rpartition(", holding ")
                seat = where.partition(", sitting on the ")[2]
                items += [(seat, ["sat on"])] if seat else []
                items += [(name, ["held"]) for name in held.split(" and ") if name != "nothing"]
            for prefix in ("Close to you: ", "You see: "):
                if line.startswith(prefix):
                    listed = split_listing(line[len(prefix) :].rstrip("."))
                    items += [name_and_details(item) for item in listed if item != "nothing else"]
        return merge_objects(items)

    def render(self) -> np.ndarray:
        return self._frame

    def _info(self, error: str, line: str) -> dict[str, Any]:
        return {
            "legal_actions": list(self._legal),
            "goal": self.goal_text(self.task),
            "success": self._success,
            "action_error": error,
            "script_line": line,
            "scene": self.scene.name,
            "task_kind": _kind(self.task),
        }


def _materialise(state: EnvironmentState) -> EnvironmentState:
    """The same state as a fresh graph with no pending changes.

    The simulator's checks read the character from the state's base graph (``get_char_node`` ignores changed
    nodes), so SITTING would never be seen by "walk", "sit" or "stand up" if changes piled up as deltas. Each
    executed line therefore starts from a graph that already holds the previous line's effects (VirtualHome's
    own step-by-step execution also rebuilds the graph from ``to_dict()``); the grab bookkeeping
    (``executor_data``) is carried over.
    """
    fresh = EnvironmentState(EnvironmentGraph(state.to_dict()), {}, instance_selection=True)
    fresh.executor_data = dict(state.executor_data)
    return fresh


def _tile_name(name: str, room: str) -> str:
    """A name that survives ``render_scene``'s 10-character labels: no room prefix (the title names the room),
    and a copy's number kept ("kitchencabinet 2" -> "kitchenc 2")."""
    name = name.removeprefix(f"{room} ")
    if len(name) <= 10:
        return name
    base, _, number = name.rpartition(" ")
    return f"{base[: 9 - len(number)]} {number}" if base and number.isdigit() else name[:10]


@lru_cache(maxsize=128)
def _frame(title: str, items: tuple[tuple[str, str], ...], footer: str, size: int) -> np.ndarray:
    # Drawing ~25 text labels is most of a step's cost, and episodes revisit the same views: keep recent frames.
    return render_scene(title, items, size=size, footer=footer)


def _line(verb: str, node: GraphNode, dest: GraphNode | None = None) -> str:
    line = f"[{verb}] <{node.class_name}> ({node.id})"
    return line if dest is None else f"{line} <{dest.class_name}> ({dest.id})"


@lru_cache(maxsize=4096)
def _script(line: str) -> Script:
    return Script([parse_script_line(line, 0)])


def _kind(task: Task) -> str:
    return "put" if task.kind.startswith("put") else task.kind


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _norm_goal(text: str) -> str:
    """Goal sentences compare without case, "the" or the final full stop."""
    return " ".join(w for w in _norm(text).rstrip(".").split() if w != "the")
