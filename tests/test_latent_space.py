"""LatentActionSpace: acting on codes, first-minibatch ratio 1 for codes, only the code policy (+ final norm)
and the value head train, and a token run and a latent run that differ only in model.action_space."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import LossRecorder, cpu_trainer, tiny_data
from latent_helpers import latent_checkpoint

from selu_lightning.action_spaces import LatentActionSpace
from selu_lightning.envs.pool import EnvPool
from selu_lightning.errors import ConfigError
from selu_lightning.latent import vlm_norm
from selu_lightning.modules import ActorPPO
from selu_lightning.policy.vlm import PolicyConfig

ROOT = Path(__file__).resolve().parents[1]
POLICY = PolicyConfig("tiny:llava", lora=None, freeze=["vision_tower"], value_head_widths=[16])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(latent_checkpoint(tmp_path_factory.mktemp("latent") / "latent.ckpt", POLICY))


def module(ckpt, policy=POLICY, **space):
    space = {"temperature": 1.0, "max_new_tokens": 12, "top_k": 4} | space
    return ActorPPO(policy, LatentActionSpace(ckpt, **space), minibatch_size=4, ppo_epochs=1, lr=1e-2)


def test_acting_stores_one_code_per_token_and_greedy_decoding_repeats(ckpt):
    agent = module(ckpt)
    agent.configure_model()
    pool = EnvPool("numberline", 3, seed=1)
    pool.reset()
    first = agent.decide(pool.states, pool.task_description, greedy=True, rng=np.random.default_rng(0))
    again = agent.decide(pool.states, pool.task_description, greedy=True, rng=np.random.default_rng(5))
    for a, b in zip(first, again):
        assert torch.equal(a.sample["response"], b.sample["response"]) and torch.equal(a.sample["codes"], b.sample["codes"])
        assert a.sample["codes"].shape == a.sample["response"].shape and int(a.sample["codes"].max()) < 8
    # Each stored token is the world model's argmax given its stored code, also in one teacher-forced pass
    # (the KV-cached decoding reads the same states).
    from selu_lightning.latent import vlm_lm_head, world_logits
    from selu_lightning.policy.vlm import BackboneOutput

    d, latent, hf = first[0], agent.action_space.latent, agent.policy.hf_model
    out = agent.policy.backbone([d.sample["prompt"]], [d.sample["response"]])
    h = BackboneOutput(out.hidden, out.prompt_lens, out.cont_lens).continuation_hidden()
    logits = world_logits(latent.world.merge(h, latent.codebook.embed(d.sample["codes"])), h,
                          vlm_norm(hf), vlm_lm_head(hf))  # fmt: skip
    logits[:, sorted(agent.policy.suppress_token_ids)] = float("-inf")
    assert torch.equal(logits.argmax(-1), d.sample["response"])
    sampled = agent.decide(pool.states, pool.task_description, greedy=False, rng=np.random.default_rng(1))
    assert any(not torch.equal(a.sample["codes"], s.sample["codes"]) for a, s in zip(first, sampled))
    # log pi = lambda-weighted sum of the chosen codes' log-probs, rescored exactly as stored.
    d = sampled[0]
    ev = agent.action_space.evaluate(agent.policy, [d.sample], with_entropy=True)
    by_hand = (ev.token_logprobs[0] * d.sample["weights"]).sum()
    assert ev.logprobs[0].item() == pytest.approx(d.logprob, abs=1e-5) == pytest.approx(by_hand.item(), abs=1e-5)
    assert (ev.token_logprobs[0] <= 0).all() and ev.entropy is not None


def test_only_the_code_policy_final_norm_and_value_head_train_and_the_first_ratio_is_1(ckpt, tmp_path):
    agent = module(ckpt)
    agent.configure_model()
    latent = agent.action_space.latent
    assert not hasattr(latent, "idm") and not hasattr(latent, "projector")  # never run in RL: freed
    trainable = {n for n, p in agent.named_parameters() if p.requires_grad}
    norm = {f"policy.model.{n}" for n, _ in agent.policy.hf_model.named_parameters()
            if n.startswith("model.language_model.norm")}  # fmt: skip
    assert trainable == {n for n, _ in agent.named_parameters()
                         if n.startswith(("action_space.latent.policy.", "policy.value_head."))} | norm  # fmt: skip
    before = {n: p.detach().clone() for n, p in agent.named_parameters()}
    rec = LossRecorder(agent)
    cpu_trainer(tmp_path).fit(agent, tiny_data())
    assert rec.stats[0]["ratio_max_abs_log"] < 1e-4  # invariant 1, for codes
    changed = {n for n, p in agent.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and changed <= trainable
    assert any(n.startswith("action_space.latent.policy.") for n in changed)
    frozen_norm = module(ckpt, train_final_norm=False)
    frozen_norm.configure_model()
    assert not any(p.requires_grad for p in vlm_norm(frozen_norm.policy.hf_model).parameters())


def test_a_linear_code_head_acts_and_trains_only_d_times_k_plus_norm_parameters(tmp_path):
    """``policy_layers: 0``: the code policy is RMSNorm + Linear(d, K) on the VLM's own hidden state."""
    agent = module(str(latent_checkpoint(tmp_path / "head.ckpt", POLICY, policy_layers=0)))
    agent.configure_model()
    policy, d = agent.action_space.latent.policy, agent.action_space.latent.codebook.weight.shape[1]
    assert len(policy.blocks) == 0 and sum(p.numel() for p in policy.parameters()) == d * 8 + d
    pool = EnvPool("numberline", 3, seed=1)
    pool.reset()
    first = agent.decide(pool.states, pool.task_description, greedy=True, rng=np.random.default_rng(0))
    again = agent.decide(pool.states, pool.task_description, greedy=True, rng=np.random.default_rng(5))
    assert all(torch.equal(a.sample["codes"], b.sample["codes"]) for a, b in zip(first, again))
    d0 = first[0]
    ev = agent.action_space.evaluate(agent.policy, [d0.sample], with_entropy=False)  # the cached decode scored what one pass scores
    assert ev.logprobs[0].item() == pytest.approx(d0.logprob, abs=1e-5)
    head = policy.head.weight.detach().clone()
    rec = LossRecorder(agent)
    cpu_trainer(tmp_path).fit(agent, tiny_data())
    assert rec.stats[0]["ratio_max_abs_log"] < 1e-4 and not torch.equal(head, policy.head.weight.detach())


def test_text_only_prompts_act_through_the_projector(ckpt):
    agent = module(ckpt, with_image=False)
    agent.configure_model()
    pool = EnvPool("numberline", 2, seed=3)
    pool.reset()
    decisions = agent.decide(pool.states, pool.task_description, greedy=False, rng=np.random.default_rng(0))
    assert all("pixel_values" not in d.sample["prompt"] for d in decisions)
    out = agent.policy.backbone([decisions[0].sample["prompt"]], [decisions[0].sample["response"]])
    latent = agent.action_space.latent
    assert not hasattr(latent, "idm") and hasattr(latent, "projector")  # text-only prompts read the projector
    projected = latent.policy(latent.to_text_space(out.hidden))
    raw = latent.policy(out.hidden)
    assert not torch.allclose(projected, raw)  # the policy read the projected states, not h
    ev = agent.action_space.evaluate(agent.policy, [decisions[0].sample], with_entropy=False)
    assert ev.logprobs[0].item() == pytest.approx(decisions[0].logprob, abs=1e-5)


def test_token_log_probs_sum_the_codes_that_decode_the_same_token(ckpt, tmp_path):
    agent = module(ckpt, logprob="token")
    agent.configure_model()
    pool = EnvPool("numberline", 2, seed=4)
    pool.reset()
    # The checkpoint's merges are fresh (additive read-out: the base LM whatever the code): every code gives
    # the same token, so each outcome is certain and log pi is 0, while the codes' own log-probs are not.
    decisions = agent.decide(pool.states, pool.task_description, greedy=False, rng=np.random.default_rng(0))
    for d in decisions:
        same = d.sample["same_codes"]
        assert same.shape == (d.sample["codes"].numel(), 8) and same.all()
        assert d.logprob == pytest.approx(0.0, abs=1e-5)
    code_space = module(ckpt)
    code_space.configure_model()
    code_ev = code_space.action_space.evaluate(code_space.policy, [{k: v for k, v in decisions[0].sample.items()
                                                                     if k != "same_codes"}], with_entropy=False)  # fmt: skip
    assert code_ev.logprobs[0].item() < -0.1
    # Once codes reach different tokens, only the codes that gave the decoded token count.
    for block in agent.action_space.latent.world.blocks:
        torch.nn.init.normal_(block.proj.weight, std=5.0)
    decisions = agent.decide(pool.states, pool.task_description, greedy=False, rng=np.random.default_rng(1))
    same = torch.cat([d.sample["same_codes"] for d in decisions])
    codes = torch.cat([d.sample["codes"] for d in decisions])
    assert same[torch.arange(len(codes)), codes].all() and not same.all()
    rec = LossRecorder(agent)
    cpu_trainer(tmp_path).fit(agent, tiny_data())
    assert rec.stats[0]["ratio_max_abs_log"] < 1e-4  # invariant 1 with outcome log-probs
    with pytest.raises(ConfigError, match="logprob"):
        LatentActionSpace(ckpt, logprob="codes")


def test_a_latent_checkpoint_of_another_backbone_is_refused(ckpt, tmp_path):
    other = module(ckpt, policy=dataclasses.replace(POLICY, model_name_or_path="tiny:idefics3"))
    with pytest.raises(ConfigError, match="latent_checkpoint was built on 'tiny:llava'"):
        other.configure_model()
    with pytest.raises(ConfigError, match="needs model.action_space.init_args.latent_checkpoint"):
        ActorPPO(POLICY, LatentActionSpace()).configure_model()
    with pytest.raises(ConfigError, match="is not a file"):
        LatentActionSpace(str(tmp_path / "missing.ckpt"))


def test_token_and_latent_runs_differ_only_in_the_action_space(ckpt, tmp_path, monkeypatch, capsys):
    """The RL4VLM CPU recipe, once as it is and once with model.action_space swapped on the command line:
    the parsed configs differ in that key alone, both runs train, and the latent one trains only the code
    policy, the final norm and the value head (on the tiny model a 1-layer code policy is a third of the LM;
    the >= 10x of the issue is for real sizes)."""
    from selu_lightning.cli import SeluCLI

    monkeypatch.chdir(ROOT)
    common = ["-c", "configs/rl4vlm_cpu/ppo_numberline.yaml", f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--data.num_envs=4", "--data.steps_per_epoch=8", "--model.minibatch_size=8", "--model.ppo_epochs=1",
              "--trainer.max_epochs=1", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
              "--model.action_space.init_args.max_new_tokens=16", "--model.log_reference_kl=false"]  # fmt: skip
    swap = ["--model.action_space=selu_lightning.action_spaces.LatentActionSpace",
            f"--model.action_space.init_args.latent_checkpoint={ckpt}"]  # fmt: skip
    token = SeluCLI(args=common, run=False)
    latent = SeluCLI(args=common + swap, run=False)
    a, b = token.config.as_dict(), latent.config.as_dict()
    differ = {k for k in a["model"]["init_args"] if a["model"]["init_args"][k] != b["model"]["init_args"][k]}
    assert differ == {"action_space"} and {k: v for k, v in a.items() if k != "model"} == {
        k: v for k, v in b.items() if k != "model"}  # fmt: skip
    counts = {}
    for name, cli in (("token", token), ("latent", latent)):
        cli.trainer.fit(cli.model, cli.datamodule)
        assert "train/loss_policy" in cli.trainer.callback_metrics
        counts[name] = sum(p.numel() for p in cli.model.parameters() if p.requires_grad)
    model = latent.model
    expected = sum(p.numel() for m in (model.action_space.latent.policy, model.policy.value_head,
                                       vlm_norm(model.policy.hf_model)) for p in m.parameters())  # fmt: skip
    assert counts["latent"] == expected < counts["token"]


def test_grpo_acts_on_codes_unchanged(ckpt, tmp_path):
    """The group algorithms read LatentActionSpace as any other space: no value head, first ratio 1."""
    agent = ActorPPO(dataclasses.replace(POLICY, value_head_widths=None),
                     LatentActionSpace(ckpt, temperature=1.0, max_new_tokens=12, top_k=4),
                     algorithm="grpo", minibatch_size=4, ppo_epochs=1, lr=1e-2)  # fmt: skip
    rec = LossRecorder(agent)
    cpu_trainer(tmp_path).fit(agent, tiny_data(group_size=2, steps_per_epoch=48))
    assert agent._epoch_metrics.get("train/groups", 0) > 0  # whole episode groups were learned from
    assert rec.stats and rec.stats[0]["ratio_max_abs_log"] < 1e-4


def test_the_kl_reference_of_codes_is_the_code_policy_as_attached(ckpt, tmp_path):
    """``kl_coef`` with latent actions: the reference is the code policy and final norm from the latent
    checkpoint (no copy of the frozen VLM), in no optimizer and no checkpoint. The KL is 0 on the first
    minibatch and grows as the code policy moves; the reference does not move."""
    agent = ActorPPO(POLICY, LatentActionSpace(ckpt, max_new_tokens=12, top_k=4), minibatch_size=4, ppo_epochs=4,
                     lr=1e-2, kl_coef=0.1)  # fmt: skip
    agent.configure_model()
    assert not agent.policy._reference  # the VLM is frozen: nothing of it is copied
    code_ref, norm_ref = agent.action_space._reference
    kept = {n: p.detach().clone() for n, p in [*code_ref.named_parameters(), *norm_ref.named_parameters()]}
    rec = LossRecorder(agent)
    trainer = cpu_trainer(tmp_path)
    trainer.fit(agent, tiny_data())
    assert abs(rec.stats[0]["kl_to_ref"]) < 1e-6 and rec.stats[-1]["kl_to_ref"] > 1e-6
    assert all(torch.equal(p, kept[n]) for n, p in [*code_ref.named_parameters(), *norm_ref.named_parameters()])
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in [*code_ref.parameters(), *norm_ref.parameters()])
    assert not any(k.startswith("_reference") or "._reference" in k for k in agent.state_dict())
    with agent.action_space.reference(agent.policy):  # swapped in, and back afterwards
        assert agent.action_space.latent.policy is code_ref and vlm_norm(agent.policy.hf_model) is norm_ref
    assert agent.action_space.latent.policy is not code_ref and vlm_norm(agent.policy.hf_model) is not norm_ref


@pytest.mark.parametrize(("model", "with_image", "logprob"), [("tiny:llava", True, "code"), ("tiny:llava", False, "token"),
                                                             ("tiny:llava_next", True, "token"), ("tiny:idefics3", True, "code")])  # fmt: skip
def test_the_kl_reference_reuses_the_live_pass_and_scores_what_a_second_pass_scores(model, with_image, logprob, tmp_path):
    """The VLM below the final norm is frozen, so the reference starts from the live pass's pre-norm states:
    the same per-token log-probs as a second backbone pass (reference norm and code policy differing from the
    live ones), with no second pass. With dropout possible (a backbone module in train mode) it runs the pass."""
    policy = dataclasses.replace(POLICY, model_name_or_path=model)
    agent = module(str(latent_checkpoint(tmp_path / "latent.ckpt", policy)), policy=policy, with_image=with_image,
                   logprob=logprob, max_new_tokens=8)  # fmt: skip
    agent.configure_model()
    agent.action_space.keep_reference(agent.policy)
    space, hf = agent.action_space, agent.policy.hf_model
    with torch.no_grad():  # the live policy and norm move away from the reference
        for p in [*space.latent.policy.parameters(), *vlm_norm(hf).parameters()]:
            p.add_(0.3 * torch.randn_like(p))
        for block in space.latent.world.blocks:  # codes reach different tokens (logprob: token is not all 0)
            torch.nn.init.normal_(block.proj.weight, std=5.0)
    pool = EnvPool("numberline", 3, seed=5)
    pool.reset()
    samples = [d.sample for d in agent.decide(pool.states, pool.task_description, greedy=False,
                                              rng=np.random.default_rng(0))]  # fmt: skip
    agent.eval()
    live = space.evaluate(agent.policy, samples, with_entropy=False)
    assert live.frozen is not None
    passes = []
    hook = agent.policy._backbone(hf).register_forward_hook(lambda *_: passes.append(1))
    with torch.no_grad(), space.reference(agent.policy):
        reused = space.evaluate_reference(agent.policy, samples, live)
        assert not passes  # no second backbone pass
        space.reuse_frozen_pass = False
        again = space.evaluate_reference(agent.policy, samples, space.evaluate(agent.policy, samples, with_entropy=False))
        assert passes
    hook.remove()
    for a, b, c in zip(reused.token_logprobs, again.token_logprobs, live.token_logprobs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert max((a - c).abs().max().item() for a, c in zip(reused.token_logprobs, live.token_logprobs)) > 1e-3
    torch.testing.assert_close(reused.logprobs, again.logprobs, atol=1e-5, rtol=1e-5)
    space.reuse_frozen_pass = True
    agent.train()  # dropout possible: nothing kept, the reference runs its own pass
    assert space.evaluate(agent.policy, samples, with_entropy=False).frozen is None


def test_the_code_policy_ignores_left_padding_in_one_pass_and_step_by_step():
    """``key_mask`` hides padding: a left-padded row gets the code logits it gets alone, in one pass and when
    continued from the cache; queries on padding see themselves only (no NaN)."""
    from selu_lightning.latent.layers import CodeStack, padded_causal_mask

    torch.manual_seed(0)
    stack = CodeStack(16, 8, layers=2, heads=2, ffn_size=32, eps=1e-6)
    short, long = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    batch = torch.cat([torch.cat([torch.randn(1, 2, 16), short], dim=1), long])  # row 0: 2 pads, then 3 real
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert padded_causal_mask(mask, 5)[0, 0].tolist() == [True, False, False, False, False]  # a pad sees itself
    assert padded_causal_mask(mask, 5)[0, 4].tolist() == [False, False, True, True, True]
    out = stack(batch, key_mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2:], stack(short)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], stack(long)[0], atol=1e-5, rtol=1e-5)
    cache: list = []
    stack(batch, cache=cache, key_mask=mask)
    step = torch.randn(2, 1, 16)
    grown = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], dim=1)
    continued = stack(step, cache=cache, key_mask=grown)[:, -1]
    torch.testing.assert_close(continued[0], stack(torch.cat([short, step[:1]], dim=1))[0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(continued[1], stack(torch.cat([long, step[1:]], dim=1))[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", ["tiny:llava", "tiny:llava_next", "tiny:idefics3"])
def test_a_decoded_batch_gives_each_row_what_it_gets_alone(model, tmp_path, monkeypatch):
    """Batched decoding (left padding, counted position ids, padding hidden from the code policy): at every step
    each row's code logits are those it gets decoded alone, and so are its greedy codes and tokens, for prompts
    of different lengths."""
    policy = dataclasses.replace(POLICY, model_name_or_path=model)
    agent = module(str(latent_checkpoint(tmp_path / "latent.ckpt", policy)), policy=policy, max_new_tokens=6)
    agent.configure_model()
    code_policy, seen = agent.action_space.latent.policy, []
    forward = code_policy.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen.append(out[:, -1])
        return out

    monkeypatch.setattr(code_policy, "forward", spy)
    pool = EnvPool("blackjack", 6, seed=2)  # hands of different sizes: prompts of different lengths
    pool.reset()
    batched = agent.decide(pool.states, pool.task_description, greedy=True, rng=np.random.default_rng(0))
    steps = torch.stack(seen)  # [steps, rows, K]
    prompts = [d.sample["prompt"] for d in batched]
    assert len({int(p["input_ids"].numel()) for p in prompts}) > 1  # padding is exercised
    for row, (d, prompt) in enumerate(zip(batched, prompts)):
        seen.clear()
        [(tokens, codes, _)] = agent.action_space.decode(agent.policy, [prompt], greedy=True)
        assert torch.equal(tokens, d.sample["response"]) and torch.equal(codes, d.sample["codes"])
        alone = torch.cat(seen)  # [steps, K]
        torch.testing.assert_close(steps[: len(alone), row], alone, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="decode_batch_size"):
        LatentActionSpace(decode_batch_size=0)


#: Every latent RL recipe and the token recipe it is compared with (the token PPO / group recipe of its env).
LATENT_RL_RECIPES = sorted(
    (f"configs/{'rl4vlm_cpu' if p.stem.startswith('ppo_') else 'group'}/{p.name}", f"configs/latent/{p.name}")
    for p in (ROOT / "configs/latent").glob("*.yaml") if p.stem.split("_")[0] in ("ppo", "grpo")
)


def test_every_env_of_the_latent_table_has_both_rl_recipes():
    assert {latent for _, latent in LATENT_RL_RECIPES} >= {
        f"configs/latent/{algo}_{env}.yaml" for algo in ("ppo", "grpo") for env in ("numberline", "blackjack")}


@pytest.mark.parametrize(("token", "latent"), LATENT_RL_RECIPES)
def test_the_latent_recipes_are_the_token_recipes_with_the_action_space_swapped(token, latent):
    """The token-vs-latent table compares like with like: same env steps, updates and settings, only
    ``model.action_space`` (and the run's name) differ."""
    import yaml

    a, b = (yaml.safe_load((ROOT / path).read_text()) for path in (token, latent))
    for cfg in (a, b):
        del cfg["model"]["init_args"]["action_space"], cfg["trainer"]["logger"]["init_args"]["name"]
    assert a == b
    assert yaml.safe_load((ROOT / latent).read_text())["model"]["init_args"]["action_space"]["class_path"].endswith(
        "LatentActionSpace")
