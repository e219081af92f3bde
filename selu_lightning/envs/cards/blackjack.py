"""Blackjack with gymnasium's rules (``Blackjack-v1``, natural=False), string actions and a drawn table."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.envs.cards.render import (
    CANVAS,
    FELT,
    SUITS,
    WHITE,
    Card,
    card_back,
    card_face,
    draw_lines,
    parse_rank,
    paste_row,
    to_array,
)

__all__ = ["BlackjackEnv", "hand_total"]

CARD_W, CARD_H = 60, 84


def hand_total(cards: list[Card]) -> int:
    """Best total: an ace counts 11 when that does not go over 21 (a "usable ace"), else 1."""
    total = sum(c.value for c in cards)
    return total + 10 if any(c.rank == 1 for c in cards) and total + 10 <= 21 else total


@register_env("blackjack")
class BlackjackEnv(TextVisualEnv):
    """RL4VLM's ``gym-cards/gym_cards/envs/blackjack.py`` (gymnasium's Blackjack-v1 rules, natural=False,
    sab=False). Infinite deck: a card's value is drawn uniformly from 1 (ace: 1 or 11), 2..9, 10, 10, 10, 10, and
    a 10 is shown as J, Q or K with equal odds (so a dealt card is never a "10"). The dealer and then the
    player get two cards; the dealer shows the first. "hit": draw a card, -1 and terminate on going
    over 21. "stand": the dealer draws while below 17 (a usable ace counts 11, so the dealer stands on soft 17),
    then +1 if the player's total beats the dealer's (or the dealer went over 21), 0 on a tie, -1 otherwise;
    terminates. No bonus for a natural. ``success``: the hand was won, which is RL4VLM's "episode return above
    0" (``VLM_PPO/main.py``), the only non-zero reward being the last.

    An action string other than "stand"/"hit" forfeits the hand: -1, terminated, a loss (so an unparsable action
    is never better than playing, and the episode cannot stall).

    ``reset(options={"state": {"player": [10, "K"], "dealer": [6, 10], "deck": [9]}})`` starts from given
    hands; ``deck`` (optional) lists the next cards drawn before random draws resume. Suits are decorative and
    follow the card's position in the hand.

    obs text: ``"Dealer shows: 7\\nYour cards: 5, K (total 15)"``; once the hand is over the first line becomes
    ``"Dealer has: 7, 10, 5 (total 22)"`` and the image reveals the dealer's cards.
    """

    task_description = (
        "You are playing Blackjack against a dealer. Cards 2 to 10 count their number, J, Q and K count 10, and "
        "an ace counts 11 unless that would take the total over 21, then 1. You see your cards and one of the "
        'dealer\'s cards. Each step choose "hit" to take another card or "stand" to stop; going over 21 loses at '
        "once. When you stand, the dealer draws until reaching 17 or more. You win (+1) with a higher total than "
        "the dealer or if the dealer goes over 21, tie (0) on equal totals, and lose (-1) otherwise."
    )
    ACTIONS = ("stand", "hit")

    def __init__(self, text_state: bool = True, image_size: int = 300) -> None:
        super().__init__(text_state=text_state, image_size=image_size)
        self.render_mode = "rgb_array"
        self._over = True

    def _draw_rank(self) -> int:
        if self._deck:
            return self._deck.pop(0)
        # RL4VLM's draw_card_with_info: a value from [1..9, 10, 10, 10, 10], and a 10 is shown as J, Q or K.
        rank = int(self.np_random.integers(1, 14))
        return 11 + int(self.np_random.integers(0, 3)) if rank >= 10 else rank

    def _deal_to(self, hand: list[Card], suit_offset: int) -> None:
        hand.append(Card(self._draw_rank(), SUITS[(len(hand) + suit_offset) % 4]))

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        state = (options or {}).get("state") or {}
        self._deck = [parse_rank(r) for r in state.get("deck", [])]
        self.dealer: list[Card] = []
        self.player: list[Card] = []
        for hand, offset, key in ((self.dealer, 2, "dealer"), (self.player, 0, "player")):
            if key in state:
                ranks = [parse_rank(r) for r in state[key]]
                if len(ranks) != 2:
                    raise ValueError(f"blackjack state {key!r} needs 2 cards; got {state[key]}")
                hand.extend(Card(r, SUITS[(i + offset) % 4]) for i, r in enumerate(ranks))
            else:
                self._deal_to(hand, offset)
                self._deal_to(hand, offset)
        self._over = False
        self._outcome: float | None = None
        self._frame = self._draw()
        return self._obs(), self._info()

    def step(self, action: str):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset()")
        if action == "hit":
            self._deal_to(self.player, 0)
            reward = -1.0 if hand_total(self.player) > 21 else 0.0
            terminated = reward < 0
        elif action == "stand":
            while hand_total(self.dealer) < 17:
                self._deal_to(self.dealer, 2)
            player, dealer = hand_total(self.player), hand_total(self.dealer)
            reward = 1.0 if dealer > 21 or player > dealer else (0.0 if player == dealer else -1.0)
            terminated = True
        else:  # not a legal action: forfeit
            reward, terminated = -1.0, True
        if terminated:
            self._outcome = reward
        self._over = terminated
        self._frame = self._draw()
        return self._obs(), reward, terminated, False, self._info()

    def render(self) -> np.ndarray:
        return self._frame

    def _draw(self) -> np.ndarray:
        img = Image.new("RGB", (CANVAS, CANVAS), FELT)
        if self._over:
            dealer_label = f"Dealer: {hand_total(self.dealer)}"
            dealer_cards = [card_face(c, CARD_W, CARD_H) for c in self.dealer]
        else:
            dealer_label = f"Dealer shows: {self.dealer[0].name}"
            dealer_cards = [card_face(self.dealer[0], CARD_W, CARD_H), card_back(CARD_W, CARD_H)]
        draw_lines(img, [dealer_label], (12, 8), size=22, fill=WHITE)
        paste_row(img, dealer_cards, top=38)
        draw_lines(img, [f"You: {hand_total(self.player)}"], (12, 134), size=22, fill=WHITE)
        paste_row(img, [card_face(c, CARD_W, CARD_H) for c in self.player], top=164)
        if self._outcome is not None:
            result = {1.0: "You win", 0.0: "Draw", -1.0: "You lose"}[self._outcome]
            draw_lines(img, [result], (12, 262), size=24, fill=WHITE)
        return to_array(img, self.image_size)

    def _obs(self) -> dict[str, Any]:
        if not self.text_state:
            return {"image": self._frame, "text": ""}
        if self._over:
            dealer = f"Dealer has: {', '.join(c.name for c in self.dealer)} (total {hand_total(self.dealer)})"
        else:
            dealer = f"Dealer shows: {self.dealer[0].name}"
        player = f"Your cards: {', '.join(c.name for c in self.player)} (total {hand_total(self.player)})"
        return {"image": self._frame, "text": f"{dealer}\n{player}"}

    def _info(self) -> dict[str, Any]:
        return {
            "legal_actions": list(self.ACTIONS),
            "goal": "Beat the dealer: finish closer to 21 than the dealer without going over 21.",
            "success": self._outcome == 1.0,
        }
