"""SELUCritic on a tiny model: batched verdicts, answer-only cross-entropy, ground truth never in its training data,
a short fit scored against held-out ground truth, and its checkpoint judging as ActorPPO's reward."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("virtualhome") is None:
    pytest.skip("needs `pip install --no-deps virtualhome==2.3.0`", allow_module_level=True)

from selu_lightning.critic.data import CriticQuery, LabelingConfig  # noqa: E402
from selu_lightning.data import CriticDataModule  # noqa: E402
from selu_lightning.data.store import TrajectoryStore  # noqa: E402
from selu_lightning.data.trajectories import EpisodeRecorder  # noqa: E402
from selu_lightning.envs.virtualhome import VirtualHomeEnv  # noqa: E402
from selu_lightning.errors import ConfigError  # noqa: E402
from selu_lightning.modules import SELUCritic  # noqa: E402
from selu_lightning.modules.critic import yes_probability  # noqa: E402
from selu_lightning.policy.vlm import PolicyConfig  # noqa: E402
from selu_lightning.rewards import CriticReward  # noqa: E402

from helpers import TINY_LORA, cpu_trainer  # noqa: E402

CRITIC_POLICY = PolicyConfig("tiny:llava", lora=TINY_LORA, value_head_widths=None)


def critic_module(policy: PolicyConfig = CRITIC_POLICY, **kwargs) -> SELUCritic:
    kwargs.setdefault("labeling", LabelingConfig(negatives="rejected"))  # every episode gives an example
    return SELUCritic(policy, env="virtualhome", answer_max_new_tokens=4, minibatch_size=4, **kwargs)


def virtualhome_episodes(n: int, seed: int = 0) -> list:
    """Half the episodes follow the expert's plan (success), half stop one action short (failure)."""
    env = VirtualHomeEnv(image_size=64)
    recorder = EpisodeRecorder(1, f"vh-{seed}")
    episodes = []
    for k in range(n):
        obs, info = env.reset(seed=seed * 1000 + k)
        plan = env.expert_actions()
        plan = plan if k % 2 == 0 else (plan[:-1] or ["stand up"])
        for t, action in enumerate(plan):  # noqa: B007 (t: the last step, read below)
            next_obs, reward, terminated, truncated, next_info = env.step(action)
            recorder.step(0, obs["image"], obs["text"], info["goal"], obs["text"], action, action, reward)
            obs, info = next_obs, next_info
        episodes.append(recorder.finish(0, obs["image"], obs["text"], (t, 0), not terminated,
                                        {"success": bool(info["success"])}))  # fmt: skip
    assert {e.ground_truth["success"] for e in episodes} == {True, False}
    return episodes


@pytest.fixture(scope="module")
def critic():
    module = critic_module()
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero adapters, so the LoRA path is exercised
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return module


@pytest.fixture(scope="module")
def episodes():
    return virtualhome_episodes(6)


def test_verdict_batched_equals_one_by_one(critic, episodes):
    frames = [e.final_frame for e in episodes]
    goals = [e.goal for e in episodes]
    batched = critic.verdict(frames, goals)
    alone = torch.cat([critic.verdict([f], [g]) for f, g in zip(frames, goals)])
    assert batched.dtype == torch.float32 and batched.shape == (len(episodes),)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    assert ((batched > 0) & (batched < 1)).all()
    critic.hparams.chunk_size = 4  # chunks bound memory; the answer is the same
    try:
        torch.testing.assert_close(critic.verdict(frames, goals), batched, atol=1e-5, rtol=1e-4)
    finally:
        critic.hparams.chunk_size = 16


def test_yes_probability_is_yes_over_yes_plus_no():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    probs = logits.softmax(-1)
    torch.testing.assert_close(yes_probability(logits, 0, 2), probs[:, 0] / (probs[:, 0] + probs[:, 2]))


def test_questions_and_answers_read_the_instruction(critic, episodes):
    e = episodes[0]
    spec = VirtualHomeEnv.task_spec(e.goal)
    asked = critic.questions.ask(critic.templates, spec, e.goal)
    query = CriticQuery(e.final_frame, e.final_observation, asked)
    torch.testing.assert_close(critic.p_yes([query]), critic.verdict([e.final_frame], [e.goal]))
    answers = critic.answer([query, query])
    assert len(answers) == 2 and answers[0] == answers[1] and isinstance(answers[0], str)  # greedy


def test_loss_is_cross_entropy_on_the_answer_tokens_only(critic, episodes):
    loader = critic.build_train_data(episodes)
    batch = next(iter(loader))
    samples = batch["samples"]
    yes = critic.policy.tokenizer(critic.questions.answer_yes, add_special_tokens=False)["input_ids"]
    no = critic.policy.tokenizer(critic.questions.answer_no, add_special_tokens=False)["input_ids"]
    eos = next(iter(critic.policy.eos_token_ids))
    assert all(s["response"].tolist() in ([*yes, eos], [*no, eos]) for s in samples)
    with torch.no_grad():
        scored = critic.policy.score([s["prompt"] for s in samples], [s["response"] for s in samples])
        loss = critic.critic_loss(batch)
    torch.testing.assert_close(loss, -torch.cat(scored.token_logprobs).mean())
    stats = critic.data_stats
    assert stats.episodes == len(episodes) and stats.accepted + stats.rejected == len(episodes)
    assert len(critic.last_examples) == stats.accepted + stats.relabeled + stats.negatives


def test_critic_training_data_never_depends_on_ground_truth(critic, episodes, tmp_path):
    """Invariant 7: the same episodes with their ground truth shuffled (and their env rewards changed) give the
    same critic examples, token for token; a store hands the critic no ground truth at all."""
    rng = np.random.default_rng(1)
    shuffled = [dataclasses.replace(e, ground_truth={"success": bool(rng.integers(2))},
                                    steps=[dataclasses.replace(s, reward=float(rng.normal())) for s in e.steps])
                for e in episodes]  # fmt: skip
    a = next(iter(critic.build_train_data(episodes)))["samples"]
    examples_a = [(x.episode_id, x.question, x.answer) for x in critic.last_examples]
    b = next(iter(critic.build_train_data(shuffled)))["samples"]  # the loader's order is seeded: same order
    examples_b = [(x.episode_id, x.question, x.answer) for x in critic.last_examples]
    assert examples_a == examples_b
    for x, y in zip(a, b):
        assert torch.equal(x["response"], y["response"])
        assert all(torch.equal(x["prompt"][k], y["prompt"][k]) for k in ("input_ids", "pixel_values"))
    TrajectoryStore(tmp_path / "s", env="virtualhome").append(shuffled)
    assert all(t.ground_truth == {} for t in TrajectoryStore(tmp_path / "s").iter_trajectories())


def test_a_short_fit_learns_and_is_scored_against_held_out_ground_truth(tmp_path, episodes):
    train, val = tmp_path / "train", tmp_path / "val"
    TrajectoryStore(train, env="virtualhome").append(episodes)
    TrajectoryStore(val, env="virtualhome").append(virtualhome_episodes(4, seed=1))
    module = critic_module(lr=1e-2, lr_schedule="constant")
    trainer = cpu_trainer(tmp_path, max_epochs=2, limit_val_batches=None, enable_checkpointing=False)
    data = CriticDataModule(str(train), val_trajectories=str(val), env="virtualhome", eval_batch_size=3)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer.fit(module, data)
    after = dict(module.named_parameters())
    assert before and all(not torch.equal(v, after[n]) for n, v in before.items() if "lora_B" in n)
    metrics = trainer.callback_metrics
    for key in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert 0.0 <= float(metrics[f"val/critic_{key}"]) <= 1.0
    assert np.isfinite(float(metrics["train/loss_critic"])) and float(metrics["critic_data/episodes"]) == len(episodes)

    # The checkpoint judges for ActorPPO: the reward source sees only judged views and scores at episode ends.
    ckpt = tmp_path / "critic.ckpt"
    trainer.save_checkpoint(ckpt)
    judge = critic_module(policy=dataclasses.replace(CRITIC_POLICY, init_from=str(ckpt)))
    reward = CriticReward(judge, device="cpu")
    seen = []
    judge_episodes = judge.judge_episodes
    judge.judge_episodes = lambda ts: seen.extend(ts) or judge_episodes(ts)

    class FakeRollout:
        rewards = torch.ones(8, 2)
        trajectories = [dataclasses.replace(e, end=(k, k % 2)) for k, e in enumerate(episodes[:3])]

    out = reward.rewards(FakeRollout())
    expected = module.judge_episodes(FakeRollout.trajectories)
    assert all(t.ground_truth == {} and all(np.isnan(s.reward) for s in t.steps) for t in seen)
    torch.testing.assert_close(out[[0, 1, 2], [0, 1, 0]], expected, atol=1e-5, rtol=1e-4)
    assert float(out.sum() - out[[0, 1, 2], [0, 1, 0]].sum()) == 0.0  # every other step: 0
    binary = CriticReward(judge, output="binary", threshold=0.5, device="cpu").score_episodes(FakeRollout.trajectories)
    assert binary == [float(p >= 0.5) for p in expected]


def test_bad_critic_configurations_fail_before_weights_load():
    with pytest.raises(ConfigError, match="no value head"):
        SELUCritic(PolicyConfig("tiny:llava"), env="virtualhome")
    with pytest.raises(ConfigError, match="sees nothing"):
        SELUCritic(CRITIC_POLICY, env="virtualhome", with_image=False)
    with pytest.raises(ConfigError, match="does not expose the task structure"):
        SELUCritic(CRITIC_POLICY, env="numberline")
    with pytest.raises(ConfigError, match="CriticDataModule"):
        SELUCritic(CRITIC_POLICY, env="virtualhome").check_env(VirtualHomeEnv)
    with pytest.raises(ConfigError, match="output"):
        CriticReward(SELUCritic(CRITIC_POLICY, env="virtualhome"), output="logit")


def test_scene_prior_and_oracle_examples(critic, episodes):
    """The prior's examples: yes/no answered with the answer words, "which" with the object's name after the
    hindsight prompt; the oracle's: each episode's own question answered with its ground truth."""
    loader = critic.build_scene_data(episodes)
    kinds = {e.kind for e in critic.last_examples}
    assert kinds == {"self_ask", "which"} and len(loader.dataset) == len(critic.last_examples)
    which = next(k for k, e in enumerate(critic.last_examples) if e.kind == "which")
    name = critic.last_examples[which].answer
    ids = critic.policy.tokenizer(name, add_special_tokens=False)["input_ids"]
    assert loader.dataset[which]["response"].tolist()[:-1] == ids
    labels = [bool(e.ground_truth["success"]) for e in episodes]
    critic.build_oracle_data(episodes, labels)
    assert [e.answer == "yes" for e in critic.last_examples] == labels
    assert critic.data_stats.accepted == sum(labels)


def test_self_consistency_votes_replace_p_yes(critic, episodes):
    frames, goals = [e.final_frame for e in episodes], [e.goal for e in episodes]
    p = critic.verdict(frames, goals)
    critic.hparams.self_consistency = 64
    try:
        votes = critic.verdict(frames, goals)
    finally:
        critic.hparams.self_consistency = 0
    assert votes.shape == p.shape and ((votes >= 0) & (votes <= 1)).all()
    assert not torch.equal(votes, p)  # shares of sampled votes (tests/test_selu_round.py), not p(yes)
