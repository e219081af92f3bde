"""selu_lightning: a PyTorch Lightning trainer for vision-language agents that learn by acting.

RL4VLM actor-PPO, SELU critic self-learning and latent action spaces share one machinery:
env pools, a VLM policy, swappable action spaces, and a rollout DataModule feeding LightningModules.
"""

__version__ = "0.1.0"
