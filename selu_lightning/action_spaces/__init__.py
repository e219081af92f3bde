"""Action spaces: how model output becomes an env action. Swap with ``model.action_space.class_path``."""

from selu_lightning.action_spaces.base import ActionSpace, Decision, Evaluation
from selu_lightning.action_spaces.candidates import CandidateActionSpace
from selu_lightning.action_spaces.latent import LatentActionSpace
from selu_lightning.action_spaces.text import TextActionSpace

__all__ = ["ActionSpace", "Decision", "Evaluation", "TextActionSpace", "CandidateActionSpace", "LatentActionSpace"]
