"""The latent space's maths, pinned by hand: the IDM's t+1 reading, straight-through gradients, the
projector's Gaussian NLL and cycle loss, the world model's output form, code sampling and scoring."""

import math

import pytest
import torch
from torch import nn

from selu_lightning.errors import ConfigError
from selu_lightning.latent import (
    CodeStack,
    InverseDynamics,
    LatentActionModel,
    LatentConfig,
    code_logprobs,
    cycle_nll,
    gaussian_nll,
    negative_entropy,
    next_token_targets,
    sample_codes,
    shift_to_next,
    straight_through_gumbel,
    world_logits,
)  # fmt: skip
from selu_lightning.latent.policy import outcome_logprobs
from selu_lightning.latent.projector import CrossModalProjector

D, K = 8, 8


def one_hot_states(tokens):
    """Hidden states that are each position's token as a one-hot (d = K)."""
    return torch.nn.functional.one_hot(torch.tensor([tokens]), D).float()


def identity_idm():
    """An IDM whose causal blocks add nothing (zeroed) and whose head reads h as its code logits: before the
    shift, position j's code is token j."""
    stack = CodeStack(D, K, layers=2, heads=2, ffn_size=16, eps=1e-6)
    with torch.no_grad():
        for block in stack.blocks:
            block.out.weight.zero_()
            block.down.weight.zero_()
        stack.head.weight.copy_(torch.eye(K) * 10)
    return InverseDynamics(stack)


def test_the_code_at_t_is_read_at_t_plus_1_and_only_the_future_token_decides_it():
    tokens = [3, 1, 4, 1, 5, 2]
    codes = identity_idm()(one_hot_states(tokens)).argmax(-1)[0]
    assert codes[:-1].tolist() == tokens[1:]  # the step t -> t+1 is labelled by token t+1
    # Changing the current token leaves the code of its step alone; changing the next one changes it.
    idm = identity_idm()
    base = idm(one_hot_states(tokens)).argmax(-1)[0]
    cur = idm(one_hot_states([3, 1, 7, 1, 5, 2])).argmax(-1)[0]
    nxt = idm(one_hot_states([3, 1, 4, 6, 5, 2])).argmax(-1)[0]
    assert cur[2] == base[2] == 1 and nxt[2] == 6
    assert torch.equal(shift_to_next(torch.arange(6.0).view(1, 3, 2)), torch.tensor([[[2.0, 3], [4, 5], [4, 5]]]))


def test_the_idm_is_causal_apart_from_its_one_step_look_ahead():
    torch.manual_seed(0)
    idm = InverseDynamics(CodeStack(D, K, layers=2, heads=2, ffn_size=16, eps=1e-6))
    h = torch.randn(1, 6, D)
    later = h.clone()
    later[0, 4:] += 5.0  # positions 4, 5 change
    a, b = idm(h), idm(later)
    torch.testing.assert_close(a[0, :3], b[0, :3])  # t <= 2 reads at most t+1 = 3
    assert not torch.allclose(a[0, 3], b[0, 3])  # t = 3 reads position 4


@pytest.mark.parametrize("readout", ["additive", "reference"])
def test_straight_through_codes_are_hard_forward_and_pass_gradients_to_codebook_and_idm(readout):
    torch.manual_seed(0)
    config = LatentConfig(num_codes=K, idm_layers=1, policy_layers=1, merge_layers=2, readout=readout)
    model = LatentActionModel(config, D, 2, 16, 1e-6)
    for block in model.world.blocks:  # as after a first step (additive starts them at zero: no gradient yet)
        nn.init.normal_(block.proj.weight, std=0.1)
    norm, head = nn.RMSNorm(D), nn.Linear(D, 11, bias=False)
    h = torch.randn(2, 5, D)
    logits = model.idm(h)
    one_hot, codes = straight_through_gumbel(logits, tau=2.0)
    assert torch.equal(one_hot.detach(), torch.nn.functional.one_hot(codes, K).float())
    vec = model.codebook(one_hot)
    torch.testing.assert_close(vec, model.codebook.embed(codes))  # the forward value is the chosen row
    out = model.world.logits(h, vec, norm, head)
    torch.nn.functional.cross_entropy(out.reshape(-1, 11), torch.randint(11, (10,))).backward()
    used = torch.zeros(K, dtype=torch.bool)
    used[codes.unique()] = True
    grad_rows = model.codebook.weight.grad.abs().sum(-1) > 0
    assert torch.equal(grad_rows, used)  # exactly the chosen rows
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.idm.parameters())
    # Zero noise gives the argmax; without noise injected the draw is random.
    _, greedy = straight_through_gumbel(logits, 2.0, gumbels=torch.zeros_like(logits))
    assert torch.equal(greedy, logits.argmax(-1))


def test_world_logits_read_out_the_merged_state_by_the_configured_form():
    torch.manual_seed(1)
    norm, head = nn.RMSNorm(D, elementwise_affine=True), nn.Linear(D, 5, bias=False)
    nn.init.uniform_(norm.weight, 0.5, 2.0)
    h, merged = torch.randn(3, D), torch.randn(3, D)
    torch.testing.assert_close(world_logits(merged, h, norm, head, "reference"), head(norm(merged) - h))
    torch.testing.assert_close(world_logits(merged, h, norm, head, "additive"), head(merged))
    with pytest.raises(ValueError, match="readout"):
        world_logits(merged, h, norm, head, "minus")


def test_the_additive_world_model_starts_as_the_base_lm_whatever_the_code():
    torch.manual_seed(2)
    norm, head = nn.RMSNorm(D), nn.Linear(D, 7, bias=False)
    model = LatentActionModel(LatentConfig(num_codes=K, idm_layers=1, policy_layers=1, merge_layers=2), D, 2, 16, 1e-6)
    h = torch.randn(4, D)
    for code in range(K):
        out = model.world.logits(h, model.codebook.embed(torch.full((4,), code)), norm, head)
        torch.testing.assert_close(out, head(h))
    # The reference's form does not: it reads out norm(x) - h, far from the base LM's logits.
    ref = LatentActionModel(LatentConfig(num_codes=K, idm_layers=1, policy_layers=1, merge_layers=2,
                                         readout="reference"), D, 2, 16, 1e-6)  # fmt: skip
    assert not torch.allclose(ref.world.logits(h, ref.codebook.embed(torch.zeros(4, dtype=torch.long)), norm, head),
                              head(h), atol=1e-2)  # fmt: skip


def test_gaussian_nll_against_hand_computed_numbers():
    mu = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [9.0, 9.0]]])
    logvar = torch.tensor([[[0.0, math.log(4.0)], [0.5, -0.5], [3.0, 3.0]]])
    target = torch.zeros(1, 3, 2)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third position is padding
    # position 0: 1 * 1 + 0 + 4 / 4 + ln 4 = 2 + ln 4; position 1: 0 + (0.5 - 0.5) = 0
    expected = (2 + math.log(4.0) + 0.0) / 2
    assert gaussian_nll(mu, logvar, target, mask).item() == pytest.approx(expected, rel=1e-6)


def test_cycle_loss_against_hand_computed_numbers():
    proj = CrossModalProjector(2)
    with torch.no_grad():
        for p in proj.parameters():
            p.zero_()  # log-variances tanh(0) = 0
        t2m = proj.text_to_mm.mean
        t2m[0].weight.copy_(torch.tensor([[1.0, 0.0]]))  # m = [tanh(h0), tanh(h0)]
        t2m[2].weight.copy_(torch.tensor([[1.0], [1.0]]))
        m2t = proj.mm_to_text.mean
        m2t[0].weight.copy_(torch.tensor([[0.0, 1.0]]))  # mu = [2 tanh(m1), 0]
        m2t[2].weight.copy_(torch.tensor([[2.0], [0.0]]))
    h = torch.tensor([[[0.5, 1.0], [-1.0, 2.0]]])
    by_hand = [(2 * math.tanh(math.tanh(h0)) - h0) ** 2 + h1**2 for h0, h1 in h[0].tolist()]
    assert cycle_nll(proj, h, torch.ones(1, 2)).item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_entropy_term_and_targets_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [1.0, 1e-30]]]))
    # sum p log p: ln 0.5 at the first position, 0 at the second (masked in or not)
    assert negative_entropy(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(0.5), rel=1e-5)
    ids = torch.tensor([[5, 9, 9, 6, 7, 0]])
    text = torch.tensor([[True, False, False, True, True, False]])  # 9 = image token, last = padding
    assert next_token_targets(ids, text).tolist() == [[-100, -100, 6, 7, -100, -100]]


def test_code_sampling_and_scoring():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]]).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_codes(logits, 1.0, top_k=1, generator=g), torch.zeros(400, dtype=torch.long))
    drawn = sample_codes(logits, 1.0, top_k=2, generator=g)
    assert set(drawn.tolist()) == {0, 1}  # only the top 2
    assert set(sample_codes(logits, 1.0, top_k=0, generator=g).tolist()) == {0, 1, 2, 3}
    logp, ent = code_logprobs(logits[:1], torch.tensor([2]), temperature=2.0)
    ref = torch.log_softmax(logits[0] / 2.0, -1)
    assert logp.item() == pytest.approx(ref[2].item()) and ent.item() == pytest.approx(-(ref.exp() * ref).sum().item())


def test_outcome_log_probs_sum_the_codes_that_decode_alike():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    same = torch.tensor([[True, False, True, False]])
    grouped, ent = outcome_logprobs(logits, same, temperature=2.0)
    p = torch.softmax(logits[0] / 2.0, -1)
    assert grouped.item() == pytest.approx(math.log(p[0] + p[2]), rel=1e-6)
    assert ent.item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)
    everything, _ = outcome_logprobs(logits, torch.ones(1, 4, dtype=torch.bool), temperature=1.0)
    assert everything.item() == pytest.approx(0.0, abs=1e-6)


def test_latent_config_is_checked():
    with pytest.raises(ConfigError, match="num_codes"):
        LatentConfig(num_codes=1)
    with pytest.raises(ConfigError, match="tau"):
        LatentConfig(tau=0.0)
    with pytest.raises(ConfigError, match="readout"):
        LatentConfig(readout="minus")
    with pytest.raises(ConfigError, match="idm_layers"):
        LatentConfig(idm_layers=0)
    with pytest.raises(ConfigError, match="policy_layers"):
        LatentConfig(policy_layers=-1)
    assert LatentConfig(policy_layers=0).policy_layers == 0  # a linear code head
    # A checkpoint from before the read-out was a setting was built with the reference's form.
    old = {k: v for k, v in LatentConfig().to_dict().items() if k != "readout"}
    assert LatentConfig.from_saved(old).readout == "reference"
    assert LatentConfig.from_saved(LatentConfig().to_dict()).readout == "additive"
