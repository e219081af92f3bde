"""DataModules: rollouts gathered from simulators each epoch."""

from selu_lightning.data.critic import CriticDataModule
from selu_lightning.data.demonstrations import DemonstrationDataModule
from selu_lightning.data.rollout import RolloutDataModule

__all__ = ["RolloutDataModule", "DemonstrationDataModule", "CriticDataModule"]
