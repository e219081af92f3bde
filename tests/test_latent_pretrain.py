"""LatentActionPretrain: aligned image / image-free views, each stage trains only its own parts, the stage
chain through checkpoints, and the usage / reconstruction metrics it logs."""

import numpy as np
import pytest
import torch
from helpers import cpu_trainer
from latent_helpers import TINY_LATENT, demo_store

from selu_lightning.action_spaces.base import user_message
from selu_lightning.data import DemonstrationDataModule
from selu_lightning.errors import ConfigError
from selu_lightning.latent import STAGE_COMPONENTS, sequence_view
from selu_lightning.modules import ActorSFT, LatentActionPretrain
from selu_lightning.policy.tiny import TINY_ARCHS
from selu_lightning.policy.vlm import PolicyConfig, VLMPolicy

POLICY = PolicyConfig("tiny:llava", lora=None, value_head_widths=None)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_a_token_sequence_run_with_and_without_its_image_aligns_position_by_position(arch):
    policy = VLMPolicy(PolicyConfig(f"tiny:{arch}", lora=None, value_head_widths=None))
    policy.load()
    frame = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    prompt = policy.encode_prompt(user_message("The current number is 3 and the target is 7.", True), frame)
    sample = {"prompt": prompt, "response": torch.tensor(policy.tokenizer("move right")["input_ids"][-3:])}
    with_image = sequence_view(policy, [sample], with_image=True)
    without = sequence_view(policy, [sample], with_image=False)
    assert with_image.hidden.shape == without.hidden.shape
    assert torch.equal(with_image.ids, without.ids) and torch.equal(with_image.text_mask, without.text_mask)
    image = ~with_image.text_mask[0]
    first = int(image.nonzero()[0])
    assert image.sum() > 0 and not with_image.text_mask[0, first:first + int(image.sum())].any()
    # Causal: before the image both runs are the same model on the same tokens; after it the image matters.
    torch.testing.assert_close(with_image.hidden[0, :first], without.hidden[0, :first])
    assert not torch.allclose(with_image.hidden[0, -1], without.hidden[0, -1])
    # Image positions are never targets, and the text after the image is.
    targets = with_image.targets[0]
    assert (targets[first - 1: first + int(image.sum()) - 1] == -100).all() and (targets[-4:-1] >= 0).all()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return demo_store(tmp_path_factory.mktemp("latent") / "demos", episodes=2)


def fit_stage(tmp_path, store, stage, latent_init=None, **kwargs):
    module = LatentActionPretrain(POLICY, stage, latent_init=latent_init, minibatch_size=4, lr=1e-2,
                                  lr_schedule="constant", **TINY_LATENT, **kwargs)  # fmt: skip
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = cpu_trainer(tmp_path / stage, max_steps=2, logger=False)
    trainer.fit(module, DemonstrationDataModule(str(store), env="numberline", num_envs=4, steps_per_epoch=8, val_episodes=4))
    ckpt = tmp_path / f"{stage}.ckpt"
    trainer.save_checkpoint(ckpt)
    changed = {n.split(".")[1] if n.startswith("latent.") else "vlm" for n, p in module.named_parameters()
               if not torch.equal(before[n], p.detach())}  # fmt: skip
    return module, trainer, ckpt, changed


def test_each_stage_trains_only_its_parts_and_hands_the_whole_space_on(tmp_path, store):
    ckpt = None
    for stage in ("idm_warmup", "projector_init", "joint", "policy_bc", "world_sft"):
        module, trainer, next_ckpt, changed = fit_stage(tmp_path, store, stage, latent_init=ckpt and str(ckpt))
        assert changed == set(STAGE_COMPONENTS[stage]), stage  # and the VLM never changes
        trainable = {n.split(".")[1] for n, p in module.named_parameters() if p.requires_grad}
        assert trainable == set(STAGE_COMPONENTS[stage])
        saved = torch.load(next_ckpt, weights_only=False)
        latent_keys = {k for k in saved["state_dict"] if k.startswith("latent.")}
        assert latent_keys == {f"latent.{k}" for k in module.latent.state_dict()}  # every part, not only this stage's
        assert not any(k.startswith("policy.") for k in saved["state_dict"])
        if ckpt is not None:  # the stage started from the previous stage's weights
            previous = torch.load(ckpt, weights_only=False)["state_dict"]
            frozen = [k for k in latent_keys if k.split(".")[1] not in STAGE_COMPONENTS[stage]]
            assert all(torch.equal(previous[k], saved["state_dict"][k]) for k in frozen)
        metrics = trainer.callback_metrics
        if stage != "projector_init":  # every stage that draws codes counts them
            assert "latent/code_perplexity" in metrics and "latent/dead_codes" in metrics
        if stage in ("idm_warmup", "joint", "world_sft"):
            assert {"train/recon_ce", "train/base_ce"} <= set(metrics)
        if stage in ("projector_init", "joint"):
            assert {"train/nll_text_to_mm", "train/nll_mm_to_text"} <= set(metrics)
        if stage == "joint":
            assert {"train/loss_cycle", "train/recon_ce_text", "train/loss_recon_text"} <= set(metrics)
        if stage == "policy_bc":
            assert "train/bc_accuracy" in metrics
        ckpt = next_ckpt


def test_joint_batches_are_half_paired_half_text_only(store):
    from selu_lightning.data.store import TrajectoryStore

    module = LatentActionPretrain(POLICY, "joint", minibatch_size=6, **TINY_LATENT)
    module.configure_model()
    episodes = list(TrajectoryStore(store).iter_trajectories())
    batch = next(iter(module.build_train_data(episodes)))
    assert len(batch["paired"]) == 3 and len(batch["text"]) == 3
    assert all("pixel_values" in s["prompt"] or "frame_uint8" in s["prompt"] for s in batch["paired"])
    assert all(set(s["prompt"]) <= {"input_ids", "attention_mask"} for s in batch["text"])
    # Text-only steps (e.g. transcripts without frames) cannot feed the paired stages.
    frameless = [type(e)(**{**e.__dict__, "steps": [type(s)(**{**s.__dict__, "frame": None}) for s in e.steps]})
                 for e in episodes]  # fmt: skip
    with pytest.raises(ConfigError, match="needs episodes with frames"):
        warmup = LatentActionPretrain(POLICY, "idm_warmup", **TINY_LATENT)
        warmup.configure_model()
        warmup.build_train_data(frameless)


def test_each_ddp_rank_serves_its_own_share_of_the_paired_examples(store):
    """Two ranks: equally many batches each, together every paired example (an epoch is one pass, not two)."""
    from types import SimpleNamespace

    from selu_lightning.data.store import TrajectoryStore

    module = LatentActionPretrain(POLICY, "idm_warmup", minibatch_size=1000, **TINY_LATENT)
    module.configure_model()
    episodes = list(TrajectoryStore(store).iter_trajectories())
    steps = sum(len(e.steps) for e in episodes)
    shares = []
    for rank in (0, 1):
        module._trainer = SimpleNamespace(global_rank=rank, world_size=2)
        shares.append(next(iter(module.build_train_data(episodes)))["paired"])
    module._trainer = None
    assert len(shares[0]) == len(shares[1]) == -(-steps // 2)
    ids = [{tuple(s["prompt"]["input_ids"].tolist()) for s in share} for share in shares]
    whole = {tuple(s["prompt"]["input_ids"].tolist()) for s in next(iter(module.build_train_data(episodes)))["paired"]}
    assert ids[0] | ids[1] == whole


def test_the_cycle_weight_is_a_real_knob(store):
    from selu_lightning.data.store import TrajectoryStore

    episodes = list(TrajectoryStore(store).iter_trajectories())
    terms = {}
    for coef in (0.0, 1e-5):
        torch.manual_seed(0)
        module = LatentActionPretrain(POLICY, "joint", minibatch_size=4, cycle_coef=coef, **TINY_LATENT)
        module.configure_model()
        losses, stats = module.stage_losses(next(iter(module.build_train_data(episodes))))
        terms[coef] = (losses, stats)
    assert "loss_cycle" not in terms[0.0][0] and "cycle_nll" in terms[0.0][1]
    assert terms[1e-5][0]["loss_cycle"].item() == pytest.approx(1e-5 * terms[1e-5][1]["cycle_nll"].item(), rel=1e-5)


def test_the_ablations_without_text_only_data_and_without_the_projector(store):
    from selu_lightning.data.store import TrajectoryStore

    episodes = list(TrajectoryStore(store).iter_trajectories())
    torch.manual_seed(0)
    no_text = LatentActionPretrain(POLICY, "joint", minibatch_size=4, text_data=False, **TINY_LATENT)
    no_text.configure_model()
    batch = next(iter(no_text.build_train_data(episodes)))
    assert batch["text"] == [] and len(batch["paired"]) == 4  # paired batches only
    losses, stats = no_text.stage_losses(batch)
    assert "loss_recon_text" not in losses and "cycle_nll" not in stats and "loss_nll_text_to_mm" in losses
    raw = LatentActionPretrain(POLICY, "joint", minibatch_size=4, text_states="raw", **TINY_LATENT)
    raw.configure_model()
    losses, stats = raw.stage_losses(next(iter(raw.build_train_data(episodes))))
    assert "loss_recon_text" in losses  # text-only data still trains the space, read raw
    assert not any("nll" in k or "cycle" in k for k in (*losses, *stats))
    h = torch.randn(1, 3, raw.latent.projector.text_to_mm.mean[0].in_features)
    assert torch.equal(raw.latent.to_text_space(h), h)
    assert not torch.equal(no_text.latent.to_text_space(h), h)


def test_scoring_only_the_response_reads_codes_where_the_response_is_predicted(store):
    from selu_lightning.data.store import TrajectoryStore

    episodes = list(TrajectoryStore(store).iter_trajectories())
    module = LatentActionPretrain(POLICY, "idm_warmup", minibatch_size=4, scored="response", **TINY_LATENT)
    module.configure_model()
    batch = next(iter(module.build_train_data(episodes)))
    view = module._views(batch["paired"], with_image=True)
    scored = module._scored(view)
    for i, sample in enumerate(batch["paired"]):
        start, n = sample["prompt"]["input_ids"].numel() - 1, sample["response"].numel()
        assert scored[i].nonzero().flatten().tolist() == list(range(start, start + n))
        assert view.targets[i, start : start + n].tolist() == sample["response"].tolist()
    module.stage_losses(batch)
    assert int(module._code_counts.sum()) == sum(s["response"].numel() for s in batch["paired"])


def test_bad_stage_and_mismatched_checkpoints_fail_in_one_line(tmp_path, store):
    with pytest.raises(ConfigError, match="model.stage must be one of"):
        LatentActionPretrain(POLICY, "warmup")
    _, _, ckpt, _ = fit_stage(tmp_path, store, "idm_warmup")
    other = dict(TINY_LATENT, num_codes=16)
    module = LatentActionPretrain(POLICY, "projector_init", latent_init=str(ckpt), **other)
    with pytest.raises(ConfigError, match="latent_init was built with"):
        module.configure_model()


def test_idm_warmup_learns_codes_that_carry_the_next_token(store):
    """On one fixed batch, 30 AdamW steps take the world model's CE well below the frozen base LM's: the
    codes, read one token ahead, carry what the base model cannot predict."""
    from selu_lightning.data.store import TrajectoryStore

    torch.manual_seed(0)
    module = LatentActionPretrain(POLICY, "idm_warmup", minibatch_size=4, **(TINY_LATENT | {"num_codes": 32}))
    module.configure_model()
    batch = next(iter(module.build_train_data(list(TrajectoryStore(store).iter_trajectories()))))
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(30):
        losses, stats = module.stage_losses(batch)
        optimizer.zero_grad()
        torch.stack(list(losses.values())).sum().backward()
        optimizer.step()
    assert stats["recon_ce"] < stats["base_ce"] - 0.3


def test_the_space_report_counts_the_tokens_codes_can_reach(store):
    """tools/latent_space_report.py: a fresh additive space is the base LM whatever the code (one reachable
    token per position, the base LM's accuracy); once the merges move, codes reach other tokens."""
    import importlib.util
    from pathlib import Path

    from selu_lightning.data.store import TrajectoryStore

    spec = importlib.util.spec_from_file_location("latent_space_report", Path(__file__).parents[1] / "tools/latent_space_report.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    episodes = TrajectoryStore(store).read()
    torch.manual_seed(0)
    module = LatentActionPretrain(POLICY, "policy_bc", **TINY_LATENT)
    module.configure_model()
    fresh = tool.report(module, episodes, examples=4, show=3)
    assert fresh["tokens_reachable_per_position"] == 1.0 and fresh["choices"] == {}
    assert fresh["world_accuracy_idm_codes"] == fresh["world_accuracy_policy_codes"] == pytest.approx(fresh["base_lm_accuracy"])
    for block in module.latent.world.blocks:
        torch.nn.init.normal_(block.proj.weight, std=5.0)
    moved = tool.report(module, episodes, examples=4, show=3)
    assert moved["tokens_reachable_per_position"] > 1.0 and 0 < len(moved["choices"]) <= 3


class _EpisodeCatcher:
    """Test double for the module a DemonstrationDataModule feeds: keeps the episodes it is handed."""

    def build_train_data(self, episodes):
        self.episodes = list(episodes)
        return self.episodes


class _StreamChecker:
    """Test double for the module a DemonstrationDataModule feeds: takes the episodes one at a time, drops each,
    and records whether the one before it was freed by then (nothing upstream holds on to read frames)."""

    def build_train_data(self, episodes):
        import gc
        import weakref

        self.freed, previous = [], None
        for trajectory in episodes:
            gc.collect()
            if previous is not None:
                self.freed.append(previous() is None)
            previous = weakref.ref(trajectory.steps[0].frame)
            del trajectory
        return None


def test_demonstrations_stream_from_the_store_one_episode_at_a_time(store):
    """The store's frames are never all in memory at once: each episode is freed once the module is done with it."""
    from types import SimpleNamespace

    data = DemonstrationDataModule(str(store), env="numberline", num_envs=4, val_episodes=4)
    checker = _StreamChecker()
    data.trainer = SimpleNamespace(lightning_module=checker)
    data.train_dataloader()
    assert len(checker.freed) == 1 and all(checker.freed)  # the store's 2 episodes, the first freed before the second


def test_text_only_stores_join_as_transcripts_of_another_env(tmp_path, store):
    """``data.text_only``: another env's episodes join the training data without frames, so the joint stage
    reads them as text-only examples and never as paired ones."""
    from types import SimpleNamespace

    from selu_lightning.data.collect import collect_expert_episodes
    from selu_lightning.data.store import TrajectoryStore

    other = tmp_path / "blackjack"
    TrajectoryStore(other, env="blackjack").append(list(collect_expert_episodes("blackjack", 3, seed=1)))
    data = DemonstrationDataModule(str(store), env="numberline", text_only=[str(other)], num_envs=4, val_episodes=4)
    catcher = _EpisodeCatcher()
    data.trainer = SimpleNamespace(lightning_module=catcher)
    data.train_dataloader()
    own, extra = catcher.episodes[:2], catcher.episodes[2:]
    assert len(extra) == 3 and all(s.frame is not None for e in own for s in e.steps)
    assert all(s.frame is None for e in extra for s in e.steps) and all(e.final_frame is None for e in extra)
    assert TrajectoryStore(other).read()[0].steps[0].frame is not None  # the store itself is untouched
    module = LatentActionPretrain(POLICY, "joint", minibatch_size=64, **TINY_LATENT)
    module.configure_model()
    batch = next(iter(module.build_train_data(catcher.episodes)))
    own_steps = sum(len(e.steps) for e in own)
    assert len(batch["paired"]) == own_steps  # paired: only the env's own steps
    texts = {module.policy.tokenizer.decode(s["prompt"]["input_ids"]) for s in batch["text"]}
    assert any("blackjack" in t.lower() for t in texts)  # drawn from both stores (32 draws from 2 + 3 episodes)
    with pytest.raises(ConfigError, match="data.text_only: "):
        bad = DemonstrationDataModule(str(store), env="numberline", text_only=[str(tmp_path / "missing")])
        bad.trainer = SimpleNamespace(lightning_module=catcher)
        bad.train_dataloader()
    with pytest.raises(ConfigError, match="data.demonstrations: "):
        bad = DemonstrationDataModule(str(tmp_path / "missing"), env="numberline")
        bad.trainer = SimpleNamespace(lightning_module=catcher)
        bad.train_dataloader()
    with pytest.raises(ConfigError, match="must not list data.demonstrations"):
        DemonstrationDataModule(str(store), env="numberline", text_only=[str(store)])
    sft = ActorSFT(POLICY)  # its action space shows the frame: transcripts cannot teach it
    sft.configure_model()
    with pytest.raises(ConfigError, match="data.text_only stores are transcripts"):
        sft.build_train_data(extra)
