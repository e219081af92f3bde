"""Pure RL maths: advantages and losses. No model, no Lightning: tested against hand-computed numbers."""

from selu_lightning.rl.advantages import gae, normalize_advantages
from selu_lightning.rl.group import group_advantages, group_normalize
from selu_lightning.rl.losses import clipped_value_loss, k3_kl, ppo_policy_loss

__all__ = [
    "gae", "normalize_advantages", "group_advantages", "group_normalize", "ppo_policy_loss", "clipped_value_loss", "k3_kl",
]
