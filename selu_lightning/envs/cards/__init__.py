"""The RL4VLM card games; importing this package registers them: numberline, ezpoints, points24, blackjack."""

from selu_lightning.envs.cards.blackjack import BlackjackEnv
from selu_lightning.envs.cards.ezpoints import EZPointsEnv
from selu_lightning.envs.cards.numberline import NumberLineEnv
from selu_lightning.envs.cards.points24 import Points24Env, solve24

__all__ = ["NumberLineEnv", "EZPointsEnv", "Points24Env", "BlackjackEnv", "solve24"]
