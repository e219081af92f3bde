"""The RL4VLM card games; importing this package registers them: numberline, ezpoints, points24, blackjack.

State key (GiGPO's anchor states): the default, ``obs["text"]`` (NumberLine: target and position; EZPoints and
Points24: the cards and the formula so far; Blackjack: the dealer's shown card and the player's hand), which is the
whole state the policy can act on; without ``text_state`` a hash of the frame, which is drawn from the same state.
"""

from selu_lightning.envs.cards.blackjack import BlackjackEnv
from selu_lightning.envs.cards.ezpoints import EZPointsEnv
from selu_lightning.envs.cards.numberline import NumberLineEnv
from selu_lightning.envs.cards.points24 import Points24Env, solve24

__all__ = ["NumberLineEnv", "EZPointsEnv", "Points24Env", "BlackjackEnv", "solve24"]
