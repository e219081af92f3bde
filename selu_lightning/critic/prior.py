"""The perception prior SELU assumes: scene questions answered from what an observation's text states.

SELU starts from pretrained MLLMs that already see whether a fridge is open or what the agent holds; a tiny model
built offline sees nothing. This is its stand-in: before any SELU round, the critic is fine-tuned on questions
about single observations of scenes that SELU never evaluates on (other apartments / levels, other seeds), each
answered from the states the observation's text lists (:func:`~selu_lightning.critic.tasks` ``scene_objects``):

- yes/no, the verb's self-asking wording: "Is the fridge open?" -> "Yes" for an object in the verb's state, "No"
  for a listed object that is not;
- which, the verb's hindsight wording: "Which object is open?" -> the name of an object in that state.

Every question is about an observation and whatever objects it lists, at any step of an episode, never about an
episode's instruction or whether it succeeded: no success label and no success question enters the prior. Only
verbs with a state in :data:`SCENE_STATES` are asked.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from selu_lightning.critic.data import CriticExample
from selu_lightning.critic.questions import VerbQuestions, fill_question
from selu_lightning.critic.tasks import SceneObject, TaskSpec
from selu_lightning.data.trajectories import Trajectory
from selu_lightning.rewards.base import judged_view

__all__ = ["SCENE_STATES", "scene_examples", "objects_in_state"]

#: Per env, per verb: the state word (as ``scene_objects`` gives it) an object is in once the verb is done to it;
#: ``{target}`` is the verb's second object (put-in / put-on).
SCENE_STATES: dict[str, dict[str, str]] = {
    "virtualhome": {"pick up": "held", "open": "open", "switch on": "on", "sit on": "sat on", "put in": "in {target}",
                    "put on": "on {target}"},  # fmt: skip
    "ai2thor": {"pick up": "held", "open": "open", "toggle on": "on"},
    "babyai": {"go to": "in front", "pick up": "carried", "open": "open"},
}


def objects_in_state(objects: Sequence[SceneObject], state: str) -> list[str]:
    """Names of the objects whose listed states include ``state``."""
    return [o.name for o in objects if state in o.states]


def scene_examples(
    trajectories: Sequence[Trajectory],
    env: str,
    structure: Any,
    templates: dict[str, VerbQuestions],
    rng: np.random.Generator,
    observations_per_episode: int = 2,
) -> list[CriticExample]:
    """Scene questions about observations of the given episodes (see the module docstring): per sampled
    observation and verb, one "yes" and one "no" question (when the scene has such objects) and one "which"
    question (``kind="which"``: its answer is the object's name, not yes/no). The wording is always the verb's
    self-asking and hindsight templates (the prior knows no "did the agent ..." question). Episodes are read without ground truth."""
    states = SCENE_STATES.get(env)
    if states is None:
        raise ValueError(f"no scene states for env {env!r}: add its verbs to selu_lightning.critic.prior.SCENE_STATES")
    examples: list[CriticExample] = []
    for traj in trajectories:
        view = judged_view(traj)
        shots = [(s.frame, s.observation) for s in view.steps] + [(view.final_frame, view.final_observation)]
        picks = rng.choice(len(shots), size=min(observations_per_episode, len(shots)), replace=False)
        for k in sorted(int(p) for p in picks):
            frame, observation = shots[k]
            objects = structure.scene_objects(observation)
            names = [o.name for o in objects]
            for verb, state in states.items():
                if verb not in templates:
                    continue
                target = None
                if "{target}" in state:
                    # The target of put-in/-on: an object something is in/on, or any listed object.
                    places = sorted({s.split(" ", 1)[1] for o in objects for s in o.states
                                     if s.startswith(state.split(" ")[0] + " ")} & set(names))  # fmt: skip
                    if not names:
                        continue
                    target = str(rng.choice(places or names))
                word = state.format(target=target)
                yes = [n for n in objects_in_state(objects, word) if n != target]
                no = [n for n in names if n not in yes and n != target]
                spec_of = lambda name: TaskSpec(verb, (name,) if target is None else (name, target))  # noqa: E731
                for answer, pool in (("yes", yes), ("no", no)):
                    if pool:
                        spec = spec_of(str(rng.choice(pool)))
                        examples.append(CriticExample(view.episode_id, frame, observation,
                                                      fill_question(templates[verb].ask, spec), answer,
                                                      structure.task_instruction(spec), verb, "self_ask"))  # fmt: skip
                if yes:
                    spec = spec_of(yes[0])
                    examples.append(CriticExample(view.episode_id, frame, observation,
                                                  fill_question(templates[verb].hindsight, spec), spec.object,
                                                  structure.task_instruction(spec), verb, "which"))  # fmt: skip
    return examples
