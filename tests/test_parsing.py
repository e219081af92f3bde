"""Reading actions out of generated text, and the chain-of-thought / action token split."""

import pytest
import torch

from selu_lightning.action_spaces.parsing import action_boundary, parse_action
from selu_lightning.action_spaces.text import token_weights

EZ = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "+", "*", "="]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"thoughts": "move right", "action": "+"}', "+"),
        ("{'thoughts': 'x', 'action': '-'}", "-"),
        ('"Action" : "HIT"', None),  # hit not legal in the number-line set below
        ('"action": 10', "10"),
        ('"action": "10"', "10"),
        ('"action": "1"', "1"),
        ('"action": "10."', "10"),
        ('  "action":   " = "  ', "="),
        ('no json at all, I think plus', None),
        ('"action": "+", then again "action": "*"', None),  # several different actions
        ('"action": "+" ... final "action": "+"', "+"),  # repeated, same action
        ('"action": "11"', None),  # 11 is not 1 and not 10
        ('"action": "１０"', "10"),  # full-width digits normalise (NFKC)
        ("\u202e\x00\ufffd💥 \"action\": \"\ufffd\"", None),  # unicode garbage
        ("", None),
    ],
)
def test_parse_action(text, expected):
    legal = ["+", "-"] if expected in ("+", "-") or "HIT" in text else EZ
    assert parse_action(text, legal) == expected


def test_parse_is_case_insensitive_but_returns_the_legal_spelling():
    assert parse_action('"action": "STAND"', ["stand", "hit"]) == "stand"


def test_action_boundary():
    text = '{"thoughts": "go", "action": "+"}'
    assert action_boundary(text) == text.index('"action"')
    assert action_boundary("nothing here") is None


def test_token_weights_rule():
    # tokens end at chars 3, 7, 10; boundary at 7 -> the first two are CoT (end <= 7), the last is action
    assert token_weights([3, 7, 10], 7, 0.5).tolist() == [0.5, 0.5, 1.0]
    # a token that straddles the boundary counts as action
    assert token_weights([3, 8, 10], 7, 0.5).tolist() == [0.5, 1.0, 1.0]
    assert token_weights([3, 8], None, 0.2).tolist() == pytest.approx([0.2, 0.2])


def test_lambda_split_on_a_real_tokenizer(tiny_llava_policy):
    """The boundary comes from character offsets mapped onto the tokenizer's own tokens (no hard-coded ids)."""
    tok = tiny_llava_policy.tokenizer
    text = '{"thoughts": "the target is 5 and I am at 10", "action": "+"}'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prefixes = tok.batch_decode([ids[: k + 1] for k in range(len(ids))], skip_special_tokens=True)
    w = token_weights([len(p) for p in prefixes], action_boundary(prefixes[-1]), 0.5)
    action_tokens = [ids[k] for k in range(len(ids)) if w[k] == 1.0]
    cot_tokens = [ids[k] for k in range(len(ids)) if w[k] == 0.5]
    assert tok.decode(cot_tokens) + tok.decode(action_tokens) == text
    assert tok.decode(action_tokens).lstrip(' ,').startswith('"action"')
    assert "thoughts" in tok.decode(cot_tokens) and "action" not in tok.decode(cot_tokens)
    # weighted log-prob = lambda * sum(CoT) + sum(action)
    logp = torch.linspace(-1, -2, len(ids))
    expect = 0.5 * logp[w == 0.5].sum() + logp[w == 1.0].sum()
    assert (w * logp).sum().item() == pytest.approx(expect.item())
