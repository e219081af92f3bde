"""STUB AI2-THOR player for tests: speaks AI2-THOR's FIFO protocol from the Unity side, over a fake scene.

This is NOT AI2-THOR. It stands in for the Unity build so that tests can drive the real
``ai2thor.controller.Controller`` (and its real ``ai2thor.fifo_server.FifoServer``) end to end on a machine
with no build, no GPU and no display. Start it the way the Controller starts Unity: give its launcher as
``Controller(local_executable_path=...)`` (see ``launcher``); the Controller runs it with the two pipe paths in
``AI2THOR_FIFO_SERVER_PIPE_PATH`` / ``AI2THOR_FIFO_CLIENT_PIPE_PATH``.

Protocol, as the real client (``ai2thor/fifo_server.py``, 5.0.0) reads and writes it:

- Every field is a header ``struct.pack("!BI", field_type, len(body))`` then the body; a message ends with the
  header of field type 255 (END_OF_MESSAGE) and length 0.
- The client writes actions to the *client* pipe: one ACTION field (type 2) holding JSON
  ``{"action": ..., "sequenceId": n, ...}``.
- The player writes to the *server* pipe: a METADATA field (type 1, msgpack) ``{"agents": [agent], "sequenceId":
  n, "activeAgentId": 0}``, then one RGB_IMAGE field (type 4) per agent: ``height*width*3`` raw bytes, rows
  bottom-up (the client flips them), unless the action asked ``renderImage=False``.
- On start the player sends one message (sequenceId 0) before any action arrives; each reply carries the
  sequenceId of its action.

The fake scene (one kitchen, offered as FloorPlan1 and FloorPlan2): the agent faces north (rotation 0) and sees
an Apple (pickupable) on a CounterTop (receptacle), a Fridge (openable receptacle) and a Microwave (toggleable,
openable receptacle). A second Apple lies to the east, seen only after one "RotateRight". MoveAhead works twice,
then the agent is blocked by a wall (a failed action). Rules, like THOR's: one held object; pick up and put
need the object visible; an openable receptacle must be open to put something in; opening what is open,
toggling on what is on and so on fail; unknown actions fail with errorCode "InvalidAction".
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import struct
import sys

import msgpack
import numpy as np

HEADER = "!BI"
HEADER_SIZE = struct.calcsize(HEADER)
METADATA, ACTION, RGB_IMAGE, END_OF_MESSAGE = 1, 2, 4, 255
SCENES = ["FloorPlan1_physics", "FloorPlan2_physics"]


def _object(object_type: str, xyz: tuple[float, float, float], facing: int, **props) -> dict:
    x, y, z = xyz
    state = dict(
        objectId=f"{object_type}|{x:+06.2f}|{y:+06.2f}|{z:+06.2f}",
        objectType=object_type,
        name=f"{object_type}_stub",
        position=dict(x=x, y=y, z=z),
        visible=False,
        isInteractable=False,
        pickupable=False,
        isPickedUp=False,
        openable=False,
        isOpen=False,
        toggleable=False,
        isToggled=False,
        receptacle=False,
        receptacleObjectIds=None,
        parentReceptacles=None,
    )
    state.update(props)
    state["_facing"] = facing  # stub-only: the agent rotation it is seen from (dropped before sending)
    return state


def initial_objects() -> list[dict]:
    counter = _object("CounterTop", (0.5, 0.9, 1.0), 0, receptacle=True, receptacleObjectIds=[])
    objects = [
        counter,
        _object("Apple", (0.4, 0.97, 1.0), 0, pickupable=True),
        _object("Fridge", (-0.8, 0.0, 1.2), 0, openable=True, receptacle=True, receptacleObjectIds=[]),
        _object("Microwave", (0.9, 1.0, 1.1), 0, openable=True, toggleable=True, receptacle=True,
                receptacleObjectIds=[]),
        _object("Apple", (1.5, 0.97, 0.0), 90, pickupable=True),
    ]
    counter["receptacleObjectIds"].append(objects[1]["objectId"])
    objects[1]["parentReceptacles"] = [counter["objectId"]]
    return objects


class StubScene:
    """The fake scene and THOR-like rules; ``apply(action_dict)`` returns the agent metadata to send."""

    def __init__(self, width: int = 300, height: int = 300) -> None:
        self.width, self.height = width, height
        self.scene_name = SCENES[0]
        self.reset_state()

    def reset_state(self) -> None:
        self.objects = initial_objects()
        self.rotation = 0
        self.horizon = 0
        self.z = 0.0
        self.moves = 0

    def by_id(self, object_id: str | None) -> dict | None:
        return next((o for o in self.objects if o["objectId"] == object_id), None)

    def held(self) -> dict | None:
        return next((o for o in self.objects if o["isPickedUp"]), None)

    def _refresh_visibility(self) -> None:
        for o in self.objects:
            inside_closed = any(
                (p := self.by_id(r)) is not None and p["openable"] and not p["isOpen"]
                for r in (o["parentReceptacles"] or [])
            )
            o["visible"] = o["isPickedUp"] or (o["_facing"] == self.rotation and not inside_closed)
            o["isInteractable"] = o["visible"]

    def apply(self, action: dict) -> tuple[bool, str, str, object]:
        """Run one action: (success, errorMessage, errorCode, actionReturn)."""
        name = action.get("action")
        target = self.by_id(action.get("objectId"))
        held = self.held()
        if name == "GetScenesInBuild":
            return True, "", "", list(SCENES)
        if name == "Reset":
            self.scene_name = action.get("sceneName", SCENES[0])
            self.reset_state()
            return True, "", "", None
        if name == "Initialize":
            return True, "", "", dict(cameraNearPlane=0.1, cameraFarPlane=20.0)
        if name == "ChangeResolution":
            self.width, self.height = int(action["x"]), int(action["y"])
            return True, "", "", None
        if name == "ChangeQuality":
            return True, "", "", None
        if name == "MoveAhead":
            if self.moves >= 2:
                return False, "MoveAhead: agent is blocked by Wall", "", None
            self.moves += 1
            self.z += 0.25
            return True, "", "", None
        if name in ("RotateLeft", "RotateRight"):
            self.rotation = (self.rotation + (90 if name == "RotateRight" else -90)) % 360
            return True, "", "", None
        if name in ("LookUp", "LookDown"):
            horizon = self.horizon + (-30 if name == "LookUp" else 30)
            if not -30 <= horizon <= 60:
                return False, f"{name}: camera horizon limit reached", "", None
            self.horizon = horizon
            return True, "", "", None
        object_actions = {"PickupObject", "PutObject", "OpenObject", "CloseObject", "ToggleObjectOn",
                          "ToggleObjectOff"}  # fmt: skip
        if name not in object_actions:
            return False, f"Invalid action: {name}", "InvalidAction", None
        if "objectId" not in action:
            return False, f"{name}: objectId is missing", "MissingArguments", None
        if target is None or not target["visible"]:
            return False, f"{action['objectId']} is not visible", "", None
        if name == "PickupObject":
            if not target["pickupable"]:
                return False, f"{target['objectId']} is not pickupable", "", None
            if held is not None:
                return False, "Agent's hand is already holding an object", "", None
            for r in target["parentReceptacles"] or []:
                self.by_id(r)["receptacleObjectIds"].remove(target["objectId"])
            target["isPickedUp"], target["parentReceptacles"] = True, None
        elif name == "PutObject":
            if held is None:
                return False, "Agent is not holding an object", "", None
            if not target["receptacle"] or target is held:
                return False, f"{target['objectId']} is not a receptacle", "", None
            if target["openable"] and not target["isOpen"]:
                return False, f"{target['objectId']} is not open", "", None
            held["isPickedUp"], held["parentReceptacles"] = False, [target["objectId"]]
            target["receptacleObjectIds"].append(held["objectId"])
            held["_facing"] = target["_facing"]
        elif name in ("OpenObject", "CloseObject"):
            want = name == "OpenObject"
            if not target["openable"]:
                return False, f"{target['objectId']} is not openable", "", None
            if target["isOpen"] == want:
                return False, f"{target['objectId']} is already {'open' if want else 'closed'}", "", None
            target["isOpen"] = want
        else:
            want = name == "ToggleObjectOn"
            if not target["toggleable"]:
                return False, f"{target['objectId']} is not toggleable", "", None
            if target["isToggled"] == want:
                return False, f"{target['objectId']} is already {'on' if want else 'off'}", "", None
            target["isToggled"] = want
        return True, "", "", None

    def agent_metadata(self, action: str, success: bool, error: str, code: str, ret: object) -> dict:
        self._refresh_visibility()
        objects = [{k: v for k, v in o.items() if not k.startswith("_")} for o in copy.deepcopy(self.objects)]
        held = self.held()
        return dict(
            sceneName=self.scene_name,
            screenWidth=self.width,
            screenHeight=self.height,
            lastAction=action,
            lastActionSuccess=success,
            errorMessage=error,
            errorCode=code,
            actionReturn=ret,
            thirdPartyCameras=[],
            agent=dict(position=dict(x=0.0, y=0.9, z=self.z), rotation=dict(x=0.0, y=float(self.rotation), z=0.0),
                       cameraHorizon=float(self.horizon)),
            inventoryObjects=[] if held is None else [dict(objectId=held["objectId"], objectType=held["objectType"])],
            objects=objects,
        )

    def frame(self) -> bytes:
        """A flat colour per rotation with one bar per visible object: just enough to tell frames apart."""
        img = np.full((self.height, self.width, 3), (40 + self.rotation // 2, 90, 140), np.uint8)
        visible = [o for o in self.objects if o["visible"]]
        for k, o in enumerate(visible):
            x0 = (k * self.width) // max(len(visible), 1)
            img[self.height // 2 :, x0 : x0 + max(self.width // 10, 1)] = (200 if o["isOpen"] else 120,
                                                                           200 if o["isToggled"] else 60, 40 * k)
        return np.flipud(img).tobytes()  # Unity's rows run bottom-up; the client flips them back


def write_message(pipe, fields: list[tuple[int, bytes]]) -> None:
    for field_type, body in fields:
        pipe.write(struct.pack(HEADER, field_type, len(body)) + body)
    pipe.write(struct.pack(HEADER, END_OF_MESSAGE, 0))
    pipe.flush()


def read_message(pipe) -> dict[int, bytes] | None:
    """One message from the client as {field type: body}; None when the client has closed its pipe."""
    fields = {}
    while True:
        header = pipe.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return None
        field_type, length = struct.unpack(HEADER, header)
        if field_type == END_OF_MESSAGE:
            return fields
        fields[field_type] = pipe.read(length)


def reply(pipe, scene: StubScene, sequence_id: int, action: dict, result: tuple) -> None:
    agent = scene.agent_metadata(action.get("action", ""), *result)
    metadata = dict(agents=[agent], sequenceId=sequence_id, activeAgentId=0)
    fields = [(METADATA, msgpack.dumps(metadata, use_bin_type=True))]
    if action.get("renderImage", True):
        fields.append((RGB_IMAGE, scene.frame()))
    write_message(pipe, fields)


def _screen_size(argv: list[str]) -> tuple[int, int]:
    def arg(flag: str, default: int) -> int:
        return int(argv[argv.index(flag) + 1]) if flag in argv else default

    return arg("-screen-width", 300), arg("-screen-height", 300)


def main(argv: list[str]) -> None:
    if os.environ.get("AI2THOR_SERVER_TYPE", "FIFO") != "FIFO":
        sys.exit("stub_thor_player speaks only the FIFO protocol")
    scene = StubScene(*_screen_size(argv))
    # The client opens the server pipe for reading first (it waits for the player's first message).
    with open(os.environ["AI2THOR_FIFO_SERVER_PIPE_PATH"], "wb") as out:
        reply(out, scene, 0, {"action": ""}, (True, "", "", None))
        with open(os.environ["AI2THOR_FIFO_CLIENT_PIPE_PATH"], "rb") as inp:
            while (message := read_message(inp)) is not None:
                action = json.loads(message[ACTION])
                reply(out, scene, action["sequenceId"], action, scene.apply(action))


def launcher(directory: str) -> str:
    """Write an executable that runs this stub (the Controller launches a build path plus Unity flags)."""
    path = os.path.join(directory, "stub-thor-player")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(__file__))} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
