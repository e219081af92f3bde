"""SELU's critic, without the model: task structure read from envs (``tasks``), the questions it asks itself
(``questions``), and the data it labels for itself (``data``: self-asking, hindsight relabeling). The
LightningModule is ``selu_lightning.modules.SELUCritic``. Only the light modules are imported here: env modules
import ``critic.tasks``, and must not pull in the training stack."""

from selu_lightning.critic.questions import DEFAULT_TEMPLATES, CriticQuestions, VerbQuestions, match_object
from selu_lightning.critic.tasks import SceneObject, TaskSpec, task_structure

__all__ = ["TaskSpec", "SceneObject", "task_structure", "CriticQuestions", "VerbQuestions", "DEFAULT_TEMPLATES",
           "match_object"]  # fmt: skip
