"""Reading actions out of generated text, and the chain-of-thought / action token split."""

import random

import pytest
import torch

from selu_lightning.action_spaces.parsing import action_boundary, parse_action
from selu_lightning.action_spaces.text import token_weights

NL = ["+", "-"]
BJ = ["stand", "hit"]
EZ = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "+", "*", "="]
P24 = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "+", "-", "*", "/", "(", ")", "="]


# RL4VLM's rule, derived by hand from VLM_PPO/a2c_ppo_acktr/rl_utils.py::text_projection: lower-case the text,
# read from the first '"action":' to the end (or only the last character when there is none), collect every
# action that occurs in that span as a substring ("10" first, then cut out, for the points games); exactly one
# distinct action is the answer, anything else a random action (None here).
@pytest.mark.parametrize(
    "text, legal, expected",
    [
        ('{"thoughts": "move right", "action": "+"}', NL, "+"),
        ('{"thoughts": "x", "action": "-"}\n', NL, "-"),
        ('"Action": "+"', NL, "+"),  # the text is lower-cased before the search
        ('"ACTION": "-"', NL, "-"),
        ('{"thoughts": "+ or -? go +", "action": "+"}', NL, "+"),  # text before the key is never read
        ('"action": "+" because 3 - 2 = 1', NL, None),  # everything after the key is read: + and -
        ('"action": "+", then again "action": "+"', NL, "+"),  # the same action twice is one match
        ('"action": "+" ... final "action": "-"', NL, None),
        ('"action":"+"', NL, "+"),
        ('"action" : "+"', NL, None),  # no exact '"action":' -> only the last character, '"'
        ("{'thoughts': 'x', 'action': '-'}", NL, None),  # single quotes: key missing, last char "}"
        ("so I choose +", NL, "+"),  # no key: the last character alone decides
        ("so I choose + ", NL, None),  # ... and a trailing space is that character
        ("target is 5 - 3", NL, None),
        ("", NL, None),
        ('"action": "10"', NL, None),  # no legal action in the span
        ('"action": "STAND"', BJ, "stand"),
        ('{"thoughts": "hit or stand?", "action": "hit"}', BJ, "hit"),
        ('"action": "stand"} I would not hit', BJ, None),
        ('"action": "white"', BJ, "hit"),  # a substring is enough
        ("I hit", BJ, None),  # no key: the last character "t" is not an action
        ('"action": "10"', EZ, "10"),
        ('"action": 10}', EZ, "10"),
        ('"action": "1"', EZ, "1"),
        ('"action": "100"', EZ, "10"),  # "10" cut out, the "0" left matches nothing
        ('"action": "11"', EZ, "1"),  # two ones are one match
        ('"action": "110"', EZ, None),  # "10" and "1"
        ('"action": "12"', EZ, None),  # "1" and "2"
        ('"action": "="\n}', EZ, "="),
        ('"action": "5 + 7"', EZ, None),
        ('{"cards": [5, 7], "current formula": 5+, "action": "7"}', EZ, "7"),
        ('"action": "１０"', EZ, None),  # full-width digits are not "10" to a substring search
        ("the formula is done, 5", EZ, "5"),  # no key: last character
        ('"action": "("', P24, "("),
        ('"action": "/"', P24, "/"),
        ('"action": "10/"', P24, None),
        ('"action": "-1"', P24, None),
        ('"action": "10"', ["1", "2"], "1"),  # the "10" rule needs "10" to be a legal action
        ('"action": "HİT"', BJ, None),  # "İ" lower-cases to "i" + a combining dot: no "hit"
        ("\u202e\x00\ufffd💥 \"action\": \"\ufffd\"", NL, None),  # unicode garbage
    ],
)
def test_parse_action_rl4vlm(text, legal, expected):
    assert parse_action(text, legal) == expected
    assert parse_action(text, legal, rule="rl4vlm") == expected


def test_rl4vlm_fallback_is_a_uniform_legal_action_like_the_reference():
    # RL4VLM draws random.randint over the env's whole action list when the text does not decide; the
    # project's TextActionSpace draws uniformly from legal_actions, which for the card games is that list.
    assert parse_action('"action": "+-"', NL) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"thoughts": "move right", "action": "+"}', "+"),
        ("{'thoughts': 'x', 'action': '-'}", "-"),
        ('"action": 10', "10"),
        ('"action": "10"', "10"),
        ('"action": "1"', "1"),
        ('"action": "10."', "10"),
        ('  "action":   " = "  ', "="),
        ("no json at all, I think plus", None),
        ('"action": "+", then again "action": "*"', None),  # several different actions
        ('"action": "+" ... final "action": "+"', "+"),  # repeated, same action
        ('"action": "11"', None),  # 11 is not 1 and not 10
        ('"action": "１０"', "10"),  # full-width digits normalise (NFKC)
        ("\u202e\x00\ufffd💥 \"action\": \"\ufffd\"", None),  # unicode garbage
        ("", None),
    ],
)
def test_parse_action_strict(text, expected):
    legal = NL if expected in ("+", "-") else EZ
    assert parse_action(text, legal, rule="strict") == expected


def test_rules_differ_where_documented():
    # the same text read both ways: the knob changes the outcome
    cases = [('"action": "11"', EZ, "1", None), ("so I choose +", NL, "+", None), ("{'action': '-'}", NL, None, "-")]
    for text, legal, rl4vlm, strict in cases:
        assert (parse_action(text, legal), parse_action(text, legal, rule="strict")) == (rl4vlm, strict)


@pytest.mark.parametrize("rule", ["rl4vlm", "strict"])
def test_parse_is_case_insensitive_but_returns_the_legal_spelling(rule):
    assert parse_action('"action": "STAND"', ["stand", "hit"], rule=rule) == "stand"
    assert parse_action('"action": "stand"', ["Stand", "Hit"], rule=rule) == "Stand"


def test_bad_rule_and_non_string():
    with pytest.raises(ValueError, match="rl4vlm"):
        parse_action('"action": "+"', NL, rule="fuzzy")
    with pytest.raises(ValueError, match="strict"):
        action_boundary('"action": "+"', rule="fuzzy")
    assert parse_action(None, NL) is None  # RL4VLM: anything but a string -> random action


@pytest.mark.parametrize(
    "text, boundary",
    [
        ('{"thoughts": "go", "action": "+"}', 19),
        ('{"thoughts": "go", "Action": "+"}', 19),
        ('"action": "+" and "action": "-"', 0),  # the first key: RL4VLM reads from there on
        ("no key here +", 12),  # the last character is what RL4VLM reads
        ("x", 0),
        ("", None),
        ('İx "Action": "+"', 3),  # an offset into the original text, though "İ" lower-cases to two characters
    ],
)
def test_action_boundary_rl4vlm(text, boundary):
    assert action_boundary(text) == boundary
    if boundary is not None:
        assert text[boundary:].lower().startswith('"action":') or boundary == len(text) - 1


def test_action_boundary_strict():
    text = '{"thoughts": "go", "action": "+"}'
    assert action_boundary(text, rule="strict") == text.index('"action"')
    assert action_boundary('x "action": "+", "action": "-"', rule="strict") == 2  # the first: all fields count
    assert action_boundary("nothing here", rule="strict") is None


@pytest.mark.parametrize("rule", ["rl4vlm", "strict"])
def test_boundary_is_where_parsing_reads(rule):
    """Reading only from the boundary on gives the same action: the boundary never cuts off what decides."""
    rng = random.Random(0)
    pieces = ['"action":', '"action": ', "'action': ", '"Action":', "+", "-", "10", "1", " ", "}", "x", '"', "hit"]
    legal_sets = [NL, EZ, BJ, P24]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        legal = rng.choice(legal_sets)
        boundary = action_boundary(text, rule=rule)
        if boundary is None:
            assert parse_action(text, legal, rule=rule) is None, text
        else:
            assert parse_action(text[boundary:], legal, rule=rule) == parse_action(text, legal, rule=rule), text


def test_token_weights_rule():
    # tokens end at chars 3, 7, 10; boundary at 7 -> the first two are CoT (end <= 7), the last is action
    assert token_weights([3, 7, 10], 7, 0.5).tolist() == [0.5, 0.5, 1.0]
    # a token that straddles the boundary counts as action
    assert token_weights([3, 8, 10], 7, 0.5).tolist() == [0.5, 1.0, 1.0]
    assert token_weights([3, 8], None, 0.2).tolist() == pytest.approx([0.2, 0.2])


def test_no_key_makes_only_the_last_token_an_action_token():
    text = "I think the answer is +"
    w = token_weights([5, 10, 15, 21, len(text)], action_boundary(text), 0.5)
    assert w.tolist() == [0.5, 0.5, 0.5, 0.5, 1.0]


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
