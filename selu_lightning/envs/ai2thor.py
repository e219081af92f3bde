"""AI2-THOR (iTHOR kitchens) behind the string-action contract, with SELU's task kinds: pick up, open, toggle, put.

Wraps the real ``ai2thor.controller.Controller``. It needs AI2-THOR's Unity build (downloaded by ``ai2thor`` on
first use: internet access, ~0.5 GB) and a GPU display to run it: Vulkan for ``platform="CloudRendering"``
(headless) or an X server with GLX for ``platform="Linux64"``; or an existing build given as
``local_executable_path`` (launched as an X11 player: pass ``x_display``). When none of that is available the
env raises one ``ConfigError`` line saying so, and never hangs: the controller's start runs under a
``start_timeout`` watchdog (the FIFO client otherwise blocks for ever opening its pipe if no player answers).

The tests drive the real Controller against ``tests/stub_thor_player.py``, a STUB player that speaks AI2-THOR's
FIFO protocol over a four-object fake scene; it is not AI2-THOR and says nothing about real scenes.

State key (GiGPO's anchor states): the default, ``obs["text"]`` (the visible objects and their states), or the
frame's hash without ``text_state``; the agent's pose is not in it, so views that look alike share a key.
"""

from __future__ import annotations

import inspect
import os
import re
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from selu_lightning.critic.tasks import (
    SceneObject,
    TaskSpec,
    household_instruction,
    merge_objects,
    name_and_details,
    split_listing,
)
from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.errors import ConfigError

try:
    import ai2thor.controller
    import ai2thor.fifo_server
    import ai2thor.platform
except ImportError as err:  # an optional extra: the registry turns this into one line
    raise ImportError(f"the ai2thor package cannot be imported ({err}); pip install selu_lightning[ai2thor]") from err

__all__ = ["AI2ThorEnv", "HOW_TO_GET_A_BUILD", "TASK_KINDS", "object_names"]

HOW_TO_GET_A_BUILD = (
    "AI2-THOR needs its Unity build and a GPU display: run on a machine that can download the build "
    "(ai2thor fetches ~0.5 GB on first use) with a Vulkan GPU (platform=CloudRendering) or an X server with GLX "
    "(platform=Linux64), or pass env_kwargs.local_executable_path=<an existing AI2-THOR build executable> "
    "with env_kwargs.x_display=<X display, e.g. :0>"
)
TASK_KINDS = ("pick up", "open", "toggle on", "put")
NAVIGATION = {
    "move ahead": "MoveAhead",
    "rotate left": "RotateLeft",
    "rotate right": "RotateRight",
    "look up": "LookUp",
    "look down": "LookDown",
}
OBJECT_ACTIONS = {
    "pick up": "PickupObject",
    "open": "OpenObject",
    "close": "CloseObject",
    "toggle on": "ToggleObjectOn",
    "toggle off": "ToggleObjectOff",
}
#: Receptacles one puts things *in* (the rest take things *on*); both words are accepted when parsing.
CONTAINERS = frozenset(
    "Fridge Microwave Cabinet Drawer Box Safe Sink SinkBasin Bathtub BathtubBasin Bowl Cup Mug Pot Kettle "
    "GarbageCan LaundryHamper Toilet Vase".split()
)
DEFAULT_SCENES = ["FloorPlan1", "FloorPlan2", "FloorPlan3", "FloorPlan4", "FloorPlan5"]
PLATFORMS = {"CloudRendering": ai2thor.platform.CloudRendering, "Linux64": ai2thor.platform.Linux64}
_CONTROLLER_ARGS = frozenset(inspect.signature(ai2thor.controller.Controller.__init__).parameters) - {"self"}


def object_names(objects: list[dict[str, Any]]) -> dict[str, str]:
    """objectId -> readable name: the type ("Apple"), then "Apple 2", "Apple 3" in objectId order."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for obj in objects:
        by_type[obj["objectType"]].append(obj["objectId"])
    names = {}
    for object_type, ids in by_type.items():
        for k, object_id in enumerate(sorted(ids)):
            names[object_id] = object_type if k == 0 else f"{object_type} {k + 1}"
    return names


def _preposition(receptacle_type: str) -> str:
    return "in" if receptacle_type in CONTAINERS else "on"


@dataclass(frozen=True)
class Task:
    kind: str  # one of TASK_KINDS
    object_id: str
    receptacle_id: str | None = None  # "put" only


@register_env("ai2thor")
class AI2ThorEnv(TextVisualEnv):
    """iTHOR scenes; each episode one task of SELU's kinds on an object of the scene, at most ``max_steps`` steps.

    Actions (case-insensitive; "the" is ignored): "move ahead", "rotate left", "rotate right", "look up",
    "look down", "pick up <Object>", "put <Object> in <Receptacle>" (or "on"; THOR's PutObject: the object must
    be the one held), "open <Object>", "close <Object>", "toggle on <Object>", "toggle off <Object>". Objects are
    named by type, numbered in objectId order when a scene has several ("Apple", "Apple 2"), and must be
    visible now. ``info["legal_actions"]`` lists navigation plus what the metadata allows on the visible,
    interactable objects (pickupable with an empty hand, open/close, toggle on/off, put the held object into
    an open or open-less receptacle); THOR may still refuse one.

    Tasks, drawn with ``self.np_random`` from what the scene's metadata allows (``tasks`` picks the kinds; a kind
    with no candidate is skipped): "pick up X" (pickupable; done when ``isPickedUp``), "open X" (openable and
    closed; ``isOpen``), "toggle on X" (toggleable and off; ``isToggled``), "put X in/on Y" (pickupable X, a
    receptacle Y not holding X yet; done when Y is in X's ``parentReceptacles`` and X is not held). THOR's
    metadata does not say which receptacle fits which object, so some put tasks cannot be done. With
    ``visible_targets_only`` the task's objects are drawn from those visible at reset (the whole scene when no
    task fits them): a 10-step episode cannot cross a room.

    Reward 1 when the task is done (terminates), 0 otherwise; truncated after ``max_steps`` steps. A failed
    action (THOR's ``lastActionSuccess`` false, an action THOR rejects as invalid, an unknown string or an
    object not visible, which never reach THOR) also gets 0, counts as a step, leaves the scene as it was,
    sets ``info["action_success"] = False`` with ``info["action_error"]``, and the next text starts with
    "Last action failed: ...". ``info["success"]`` is the task's ground truth.

    obs text: ``"You see: Apple, CounterTop, Fridge (closed), Microwave (closed, off). You hold: nothing."``
    ``reset(options={"scene": "FloorPlan1", "task": {"kind": "put", "object": "Apple", "receptacle": "Fridge"}})``
    fixes the scene and/or task (names as in the actions, resolved over all objects).
    """

    has_goal = True
    task_description = (
        "You are a household robot in an AI2-THOR kitchen. The image is your first-person view. Do the task in "
        "at most 10 actions: move and turn to find objects, then act on the objects you can see by name: pick up "
        "an object, put the object you hold in or on a receptacle, open or close it, toggle it on or off. "
        "Finishing the task scores a point."
    )
    # Checkpoints rebuild the env by replay (TextVisualEnv.checkpoint_by): a fresh controller, the same seed (so the
    # same scene and task), the same actions. A GPU renderer may not redraw a frame bit for bit: keep the frame.
    replays_frames_exactly = False

    def __init__(
        self,
        scenes: list[str] | None = None,
        platform: str = "CloudRendering",
        local_executable_path: str | None = None,
        x_display: str | None = None,
        start_timeout: float = 120.0,
        text_state: bool = True,
        image_size: int = 300,
        max_steps: int = 10,
        tasks: list[str] | None = None,
        visible_targets_only: bool = True,
        controller_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            scenes: iTHOR scene names an episode draws from (default FloorPlan1-5, kitchens).
            platform: ``"CloudRendering"`` (headless, Vulkan GPU) or ``"Linux64"`` (X server with GLX); ignored
                with ``local_executable_path``.
            local_executable_path: An existing AI2-THOR build's executable instead of the downloaded one
                (started as an X11 player: give ``x_display``).
            x_display: X display for Linux64 / local builds, e.g. ``":0"`` (default ``$DISPLAY``).
            start_timeout: Seconds the controller may take to start (launch the player, its first message, the
                first scene; not ai2thor's one-time build download) before the env gives up with one error line.
            text_state: Also describe the visible objects in ``obs["text"]``.
            image_size: Side of the (square) frame; THOR renders at this size unless ``controller_kwargs``
                sets ``width``/``height``, then frames are resized.
            max_steps: Steps per episode (SELU: 10).
            tasks: Task kinds to draw from, a subset of "pick up", "open", "toggle on", "put" (default all).
            visible_targets_only: Draw task objects among those visible at reset when possible.
            controller_kwargs: More ``Controller`` arguments and THOR initialization parameters
                (e.g. ``{gridSize: 0.25, visibilityDistance: 1.5, gpu_device: 0}``); they override the env's.
        """
        super().__init__(text_state=text_state, image_size=image_size)
        if platform not in PLATFORMS:
            raise ConfigError(f"ai2thor env: platform must be one of {', '.join(PLATFORMS)} (got {platform!r})")
        self.tasks = list(TASK_KINDS if tasks is None else tasks)
        unknown = [t for t in self.tasks if t not in TASK_KINDS]
        if unknown or not self.tasks:
            raise ConfigError(f"ai2thor env: tasks must be a non-empty subset of {list(TASK_KINDS)} (got {tasks})")
        if max_steps < 1 or start_timeout <= 0:
            raise ConfigError(f"ai2thor env: max_steps ({max_steps}) and start_timeout ({start_timeout}) must be > 0")
        self.scenes = list(scenes or DEFAULT_SCENES)
        self.max_steps = max_steps
        self.visible_targets_only = visible_targets_only
        self.start_timeout = start_timeout
        self.render_mode = "rgb_array"
        self.controller = self._start_controller(
            platform, local_executable_path, x_display, start_timeout, dict(controller_kwargs or {})
        )
        self._over = True
        self.task: Task | None = None
        self._frame = np.zeros((image_size, image_size, 3), np.uint8)

    # ------------------------------------------------------------------ controller start
    def _start_controller(
        self, platform: str, executable: str | None, x_display: str | None, timeout: float, extra: dict[str, Any]
    ) -> ai2thor.controller.Controller:
        if executable is not None:
            if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
                raise ConfigError(
                    f"ai2thor env: local_executable_path {executable!r} is not an executable file. {HOW_TO_GET_A_BUILD}"
                )
            # ai2thor runs a local build as an X11 player; with no display it crashes with a TypeError.
            if not (x_display or os.environ.get("DISPLAY")) and ai2thor.platform.Linux64.launch_env(
                self.image_size, self.image_size, None
            ).get("DISPLAY") is None:
                raise ConfigError(
                    "ai2thor env: local_executable_path needs an X display: pass env_kwargs.x_display "
                    f"(e.g. ':0') or set DISPLAY. {HOW_TO_GET_A_BUILD}"
                )
        args: dict[str, Any] = dict(
            platform=PLATFORMS[platform], width=self.image_size, height=self.image_size,
            gridSize=0.25, visibilityDistance=1.5, server_start_timeout=timeout,
        )  # fmt: skip
        if executable is not None:
            args["local_executable_path"] = executable
        if x_display is not None:
            args["x_display"] = x_display
        args.update(extra)
        ctor = {k: v for k, v in args.items() if k in _CONTROLLER_ARGS and k not in ("scene", "download_only")}
        init_params = {k: v for k, v in args.items() if k not in _CONTROLLER_ARGS}

        # Phase 1 (finds, and downloads when it can, the build): offline it fails at once with a ValueError.
        try:
            controller = ai2thor.controller.Controller(download_only=True, **ctor)
        except Exception as err:  # noqa: BLE001 - ai2thor raises bare Exceptions for missing builds/displays
            raise ConfigError(f"ai2thor env cannot start: {_one_line(err)}. {HOW_TO_GET_A_BUILD}") from err

        # Phase 2 (launch the player, first message, first scene) under a watchdog: the FIFO client's open()
        # of its pipe blocks for ever when no player ever connects.
        outcome: dict[str, Any] = {}

        def start() -> None:
            try:
                controller.start(
                    port=ctor.get("port", 0), start_unity=ctor.get("start_unity", True), width=ctor["width"],
                    height=ctor["height"], x_display=ctor.get("x_display"), host=ctor.get("host", "127.0.0.1"),
                )  # fmt: skip
                controller.initialization_parameters = dict(init_params)  # what Controller.__init__ would set
                missing = [s for s in self.scenes if controller.normalize_scene(s) not in controller.scenes_in_build]
                if missing and controller.scenes_in_build:
                    raise ConfigError(
                        f"ai2thor env: scenes {missing} are not in this build "
                        f"(it has e.g. {sorted(controller.scenes_in_build)[:5]})"
                    )
                event = controller.reset(self.scenes[0])
                if event.metadata["actionReturn"]:  # as Controller.__init__ does after its first reset
                    controller.server.set_init_params(event.metadata["actionReturn"])
                outcome["ok"] = True
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                outcome["error"] = err

        thread = threading.Thread(target=start, name="ai2thor-start", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            _abandon(controller, thread)
            raise ConfigError(
                f"ai2thor env cannot start: no AI2-THOR player answered within start_timeout={timeout:g}s. "
                f"{HOW_TO_GET_A_BUILD}"
            )
        if "error" in outcome:
            _stop(controller)
            err = outcome["error"]
            if isinstance(err, ConfigError):
                raise err
            raise ConfigError(f"ai2thor env cannot start: {_one_line(err)}. {HOW_TO_GET_A_BUILD}") from err
        return controller

    # ------------------------------------------------------------------ gym API
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        scene = options.get("scene") or self.scenes[int(self.np_random.integers(len(self.scenes)))]
        self.event = self.controller.reset(scene)
        objects = self.event.metadata["objects"]
        self.names = object_names(objects)
        self.task = self._task_from(options["task"], objects) if "task" in options else self._sample_task(objects)
        self.goal = self._goal_text()
        self.steps = 0
        self.last_error = ""
        self._over = False
        self._frame = self._image()
        return self._obs(), self._info(action_success=True)

    def step(self, action: str):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset()")
        self.steps += 1
        thor_action, error = self._thor_action(action)
        if thor_action is not None:
            try:
                self.event = self.controller.step(thor_action)
                if not self.event.metadata["lastActionSuccess"]:
                    error = self.event.metadata.get("errorMessage") or f"{thor_action['action']} failed"
            except ValueError as err:  # THOR's InvalidAction / InvalidArgument / ...: the scene did not change
                error = str(err)
        self.last_error = _one_line(error)[:200] if error else ""
        self.names = object_names(self.event.metadata["objects"])
        terminated = self._task_done()
        truncated = not terminated and self.steps >= self.max_steps
        self._over = terminated or truncated
        self._frame = self._image()
        info = self._info(action_success=not error)
        if error:
            info["action_error"] = self.last_error
        return self._obs(), 1.0 if terminated else 0.0, terminated, truncated, info

    # -- task structure (SELU's critic: what an instruction asks, what an observation shows; never success) --
    task_verbs = ("pick up", "open", "toggle on", "put in", "put on")

    @classmethod
    def task_spec(cls, instruction: str) -> TaskSpec | None:
        """Verb and object names (spelled as the scene's) of an instruction as the env writes it
        ("Put the Apple in the Fridge.")."""
        text = " ".join(instruction.strip().rstrip(".").split())
        lower = text.lower()
        if lower.startswith("put the "):
            for prep in ("in", "on"):
                at = lower.find(f" {prep} the ", len("put the "))
                if at > len("put the ") and len(text) > at + len(prep) + 6:
                    return TaskSpec(f"put {prep}", (text[len("put the ") : at], text[at + len(prep) + 6 :]))
            return None
        for verb in cls.task_verbs[:3]:
            if lower.startswith(f"{verb} the ") and len(text) > len(verb) + 5:
                return TaskSpec(verb, (text[len(verb) + 5 :],))
        return None

    @classmethod
    def task_instruction(cls, spec: TaskSpec) -> str:
        """The instruction the env writes for a spec."""
        return household_instruction(spec)

    @classmethod
    def scene_objects(cls, observation: str) -> list[SceneObject]:
        """Objects an observation's text lists: the visible ones with their states ("open", "off") and the held
        one ("held")."""
        items: list[tuple[str, list[str]]] = []
        for line in observation.splitlines():
            if line.startswith("You see: "):
                seen, _, held = line[len("You see: ") :].rstrip(".").rpartition(". You hold: ")
                if seen != "nothing":
                    items += [name_and_details(item) for item in split_listing(seen)]
                if held and held != "nothing":
                    items.append((held, ["held"]))
        return merge_objects(items)

    def render(self) -> np.ndarray:
        return self._frame

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "an AI2ThorEnv holds a live AI2-THOR controller and cannot be pickled; EnvPool checkpoints rebuild it "
            "by replaying its episode"
        )

    def close(self) -> None:
        controller, self.controller = getattr(self, "controller", None), None
        if controller is not None:
            _stop(controller)

    # ------------------------------------------------------------------ actions
    def _thor_action(self, action: str) -> tuple[dict[str, Any] | None, str]:
        """The THOR action dict for a text action, or (None, why not)."""
        text = re.sub(r"\s+", " ", re.sub(r"\bthe\b", " ", action.strip().lower().rstrip("."))).strip()
        if text in NAVIGATION:
            return {"action": NAVIGATION[text]}, ""
        put = re.fullmatch(r"put (.+?) (?:in|on|into|onto) (.+)", text)
        if put:
            holding, receptacle = self._held(), self._visible_id(put.group(2))
            if holding is None or self.names[holding["objectId"]].lower() != put.group(1):
                return None, f"not holding {put.group(1)!r}"
            if receptacle is None:
                return None, f"no visible object named {put.group(2)!r}"
            return {"action": "PutObject", "objectId": receptacle}, ""
        for verb, thor_name in OBJECT_ACTIONS.items():
            if text.startswith(verb + " "):
                object_id = self._visible_id(text[len(verb) + 1 :])
                if object_id is None:
                    return None, f"no visible object named {text[len(verb) + 1:]!r}"
                return {"action": thor_name, "objectId": object_id}, ""
        return None, f"unknown action {action!r}"

    def _visible_id(self, name: str) -> str | None:
        for obj in self.event.metadata["objects"]:
            if obj["visible"] and self.names[obj["objectId"]].lower() == name.strip():
                return obj["objectId"]
        return None

    def _held(self) -> dict[str, Any] | None:
        return next((o for o in self.event.metadata["objects"] if o.get("isPickedUp")), None)

    def legal_actions(self) -> list[str]:
        actions = list(NAVIGATION)
        held = self._held()
        for obj in self._visible_objects():
            if held is not None and obj["objectId"] == held["objectId"]:
                continue
            name = self.names[obj["objectId"]]
            if obj.get("pickupable") and held is None:
                actions.append(f"pick up {name}")
            if obj.get("openable"):
                actions.append(f"{'close' if obj.get('isOpen') else 'open'} {name}")
            if obj.get("toggleable"):
                actions.append(f"toggle {'off' if obj.get('isToggled') else 'on'} {name}")
            if held is not None and obj.get("receptacle") and (not obj.get("openable") or obj.get("isOpen")):
                actions.append(f"put {self.names[held['objectId']]} {_preposition(obj['objectType'])} {name}")
        return actions

    def _visible_objects(self) -> list[dict[str, Any]]:
        objects = [o for o in self.event.metadata["objects"] if o["visible"] and o.get("isInteractable", True)]
        return sorted(objects, key=lambda o: self.names[o["objectId"]])

    # ------------------------------------------------------------------ tasks
    def _candidates(self, objects: list[dict[str, Any]], pool: list[dict[str, Any]]) -> dict[str, list[Task]]:
        found: dict[str, list[Task]] = {kind: [] for kind in self.tasks}
        for obj in pool:
            oid = obj["objectId"]
            if "pick up" in found and obj.get("pickupable") and not obj.get("isPickedUp"):
                found["pick up"].append(Task("pick up", oid))
            if "open" in found and obj.get("openable") and not obj.get("isOpen"):
                found["open"].append(Task("open", oid))
            if "toggle on" in found and obj.get("toggleable") and not obj.get("isToggled"):
                found["toggle on"].append(Task("toggle on", oid))
            if "put" in found and obj.get("pickupable") and not obj.get("isPickedUp"):
                parents = obj.get("parentReceptacles") or []
                found["put"] += [
                    Task("put", oid, r["objectId"])
                    for r in pool
                    if r.get("receptacle") and r["objectId"] != oid and r["objectId"] not in parents
                ]
        return {kind: tasks for kind, tasks in found.items() if tasks}

    def _sample_task(self, objects: list[dict[str, Any]]) -> Task:
        visible = [o for o in objects if o["visible"]]
        candidates = self._candidates(objects, visible) if self.visible_targets_only else {}
        if not candidates:
            candidates = self._candidates(objects, objects)
        if not candidates:
            raise RuntimeError(f"scene {self.event.metadata['sceneName']} offers no task of kinds {self.tasks}")
        kinds = sorted(candidates)
        kind = kinds[int(self.np_random.integers(len(kinds)))]
        options = sorted(candidates[kind], key=lambda t: (t.object_id, t.receptacle_id or ""))
        return options[int(self.np_random.integers(len(options)))]

    def _task_from(self, spec: dict[str, str], objects: list[dict[str, Any]]) -> Task:
        ids = {name.lower(): oid for oid, name in self.names.items()}
        kind = spec["kind"]
        if kind not in TASK_KINDS:
            raise ValueError(f"task kind must be one of {TASK_KINDS}; got {spec}")
        try:
            object_id = ids[spec["object"].lower()]
            receptacle_id = ids[spec["receptacle"].lower()] if kind == "put" else None
        except KeyError as err:
            raise ValueError(f"task {spec} names an object not in the scene ({sorted(self.names.values())})") from err
        return Task(kind, object_id, receptacle_id)

    def _goal_text(self) -> str:
        task = self.task
        name = self.names[task.object_id]
        if task.kind == "put":
            receptacle = self._object(task.receptacle_id)
            where = _preposition(receptacle["objectType"])
            return f"Put the {name} {where} the {self.names[task.receptacle_id]}."
        return f"{task.kind.capitalize()} the {name}."

    def _object(self, object_id: str) -> dict[str, Any]:
        return next(o for o in self.event.metadata["objects"] if o["objectId"] == object_id)

    def _task_done(self) -> bool:
        obj = self._object(self.task.object_id)
        if self.task.kind == "pick up":
            return bool(obj.get("isPickedUp"))
        if self.task.kind == "open":
            return bool(obj.get("isOpen"))
        if self.task.kind == "toggle on":
            return bool(obj.get("isToggled"))
        return self.task.receptacle_id in (obj.get("parentReceptacles") or []) and not obj.get("isPickedUp")

    # ------------------------------------------------------------------ observations
    def _image(self) -> np.ndarray:
        frame = self.event.frame
        if frame is None:  # renderImage=False (headless)
            return np.zeros((self.image_size, self.image_size, 3), np.uint8)
        frame = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
        if frame.shape[:2] != (self.image_size, self.image_size):
            frame = np.asarray(Image.fromarray(frame).resize((self.image_size, self.image_size), Image.BILINEAR))
        return frame

    def _describe(self) -> str:
        held = self._held()
        seen = []
        for obj in self._visible_objects():
            if held is not None and obj["objectId"] == held["objectId"]:
                continue
            states = []
            if obj.get("openable"):
                states.append("open" if obj.get("isOpen") else "closed")
            if obj.get("toggleable"):
                states.append("on" if obj.get("isToggled") else "off")
            seen.append(self.names[obj["objectId"]] + (f" ({', '.join(states)})" if states else ""))
        holding = self.names[held["objectId"]] if held else "nothing"
        text = f"You see: {', '.join(seen) or 'nothing'}. You hold: {holding}."
        return (f"Last action failed: {self.last_error}\n" if self.last_error else "") + text

    def _obs(self) -> dict[str, Any]:
        return {"image": self._frame, "text": self._describe() if self.text_state else ""}

    def _info(self, action_success: bool) -> dict[str, Any]:
        return {
            "legal_actions": self.legal_actions(),
            "goal": self.goal,
            "success": self._task_done(),
            "action_success": action_success,
            "scene": self.event.metadata["sceneName"],
        }


def _one_line(err: BaseException | str) -> str:
    text = str(err) if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _stop(controller: ai2thor.controller.Controller) -> None:
    try:
        if controller.server is not None:
            controller.stop()
    except Exception:  # noqa: BLE001 - best effort while already failing or closing
        pass


def _abandon(controller: ai2thor.controller.Controller, thread: threading.Thread) -> None:
    """Wake a start stuck on the FIFO (its open() or its read) with an empty message, then stop the player."""
    server = controller.server
    if isinstance(server, ai2thor.fifo_server.FifoServer):
        for _ in range(10):
            try:
                # A reader blocked in open() counts as a reader, so a non-blocking writer may open the pipe.
                fd = os.open(server.server_pipe_path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                thread.join(0.2)  # its open() is not reached yet
                continue
            try:
                os.write(fd, server.eom_header)  # a message with no metadata: the client raises and returns
            finally:
                os.close(fd)
            thread.join(2.0)
            break
    _stop(controller)
