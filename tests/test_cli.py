"""The `selu` command: every shipped YAML parses, help documents options, bad input fails in one line early."""

from pathlib import Path

import lightning as L
import pytest

from selu_lightning.cli import main
from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.envs.cards.numberline import NumberLineEnv

ROOT = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
#: selu-round's configs (configs/selu/round_*.yaml) name two `selu fit` configs; the rest are `selu fit` configs.
ROUND_CONFIGS = [c for c in ALL_CONFIGS if Path(c).name.startswith("round_")]
CONFIGS = [c for c in ALL_CONFIGS if c not in ROUND_CONFIGS]


@register_env("test-stub-no-legal-actions")
class NoLegalActionsStubEnv(TextVisualEnv):
    """Test double: an env whose simulator lists no legal actions (like a free-text simulator)."""

    has_legal_actions = False


@register_env("test-stub-crashes")
class CrashingStubEnv(NumberLineEnv):
    """Test double: NumberLine whose simulator dies on the first step (a crash before any update)."""

    def step(self, action):
        raise RuntimeError("test stub: the simulator crashed")


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_configs_are_found():
    assert "configs/quickstart.yaml" in CONFIGS and len(CONFIGS) >= 5


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_yaml_parses(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = run_cli(["fit", "-c", config, "--print_config"], capsys)
    assert code == 0
    assert "model_name_or_path" in out and "env:" in out


@pytest.mark.parametrize("config", ROUND_CONFIGS)
def test_every_round_config_parses_and_names_fit_configs(config, monkeypatch):
    from selu_lightning.selu_round import parse_args

    monkeypatch.chdir(ROOT)
    cfg = parse_args(["-c", config])
    assert cfg.actor in CONFIGS and cfg.critic in CONFIGS and (cfg.ppo is None or cfg.ppo in CONFIGS)


def test_help_documents_every_option(capsys):
    """``selu fit --help`` names the swappable classes; ``--model.help`` / ``--data.help`` document each
    class's options from its docstrings."""
    code, out, _ = run_cli(["fit", "--help"], capsys)
    assert code == 0 and "--model.help" in out and "--data.help" in out
    # This project's options come before the Trainer's forty, in the usage line and in the option list.
    usage, options = out.split("\n\n", 1)
    for text in (usage, options):
        assert text.index("--model") < text.index("--data") < text.index("--trainer.accelerator")
    code, out, _ = run_cli(["fit", "--model.help", "ActorPPO"], capsys)
    assert code == 0
    for option in ("--model.policy.model_name_or_path", "--model.action_space", "--model.clip",
                   "--model.dropout_in_update", "--model.gamma", "--model.ppo_epochs", "--model.reward"):
        assert option in out
    assert "PPO ratio clip range epsilon" in out  # docstrings become help text
    # The policy's dataclass settings are described by their attribute docstrings.
    words = " ".join(out.split())
    assert "whose trained weights (LoRA adapters" in words and "Hidden widths of the value MLP" in words
    code, out, _ = run_cli(["fit", "--data.help", "RolloutDataModule"], capsys)
    assert code == 0 and "--data.num_envs" in out and "Env steps per rank per epoch" in out


def test_interpolation(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data:\n  class_path: selu_lightning.data.RolloutDataModule\n  init_args:\n    num_envs: 4\n"
        "    steps_per_epoch: ${data.init_args.num_envs}\n"
        "model:\n  class_path: selu_lightning.modules.ActorPPO\n  init_args:\n    policy:\n      model_name_or_path: tiny:llava\n"
    )
    code, out, _ = run_cli(["fit", "-c", str(cfg), "--print_config"], capsys)
    assert code == 0 and "steps_per_epoch: 4" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data.env", "numberlin"], "unknown env 'numberlin'"),
        (["--model.policy.model_name_or_path", "/does/not/exist"], "does not exist"),
        (["--model.action_space.class_path", "selu_lightning.action_spaces.NoSuchSpace"], "NoSuchSpace"),
        (["--data.env", "test-stub-no-legal-actions"], "needs an env that lists its legal actions"),
        (["--data.steps_per_epoch", "100", "--data.num_envs", "16"], "must be divisible by data.num_envs"),
        (["--data.num_env", "8"], "RolloutDataModule has no option 'num_env'; did you mean 'num_envs'?"),
        (["--model.action_space", "selu_lightning.action_spaces.TextActionSpac"], "did you mean 'TextActionSpace'?"),
        (["--trainer.accelerator", "gpu"], "add --trainer.accelerator=cpu"),
        (["--ckpt_path", "/no/such/run/last.ckpt"], "--ckpt_path /no/such/run/last.ckpt: no such checkpoint file"),
    ],
)
def test_bad_input_fails_in_one_line_before_weights_load(extra, message, capsys, monkeypatch, tmp_path):
    import selu_lightning.policy.vlm as vlm

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(vlm.VLMPolicy, "load", lambda self: pytest.fail("weights loaded before the error"))
    logs = f"--trainer.logger.init_args.save_dir={tmp_path}"  # nothing written into the checkout
    code, _, err = run_cli(["fit", "-c", "configs/quickstart.yaml", logs, *extra], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("selu: error:") and message in lines[0], err


#: What a CPU test machine must override to build a GPU recipe's objects (no hub, no GPU).
CPU_OVERRIDES = ["--trainer.accelerator=cpu", "--model.policy.model_name_or_path=tiny:llava_next", "--model.policy.dtype=float32"]


def test_a_critic_nested_in_the_reward_keeps_its_own_settings(monkeypatch, tmp_path):
    """LightningCLI gives every LightningModule it builds the top-level model's config as hparams: the critic
    inside ``model.reward`` must still read its own (it read the actor's, and judging failed mid-run)."""
    from selu_lightning.cli import SeluCLI

    monkeypatch.chdir(ROOT)
    cli = SeluCLI(args=["-c", "configs/selu/ppo_virtualhome.yaml", *CPU_OVERRIDES,
                        f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False)  # fmt: skip
    critic, actor = cli.model.reward.critic, cli.model
    assert critic.hparams.env == "virtualhome" and critic.hparams.chunk_size == 32
    assert critic.hparams.self_consistency == 0 and critic.hparams.with_image is False
    assert "reward" not in critic.hparams and "clip" not in critic.hparams
    assert actor.hparams.clip == 0.1 and actor.hparams["_class_path"] == "selu_lightning.modules.ActorPPO"


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_yaml_instantiates_its_classes(config, monkeypatch, tmp_path):
    """Invariant 10, beyond parsing: the module, the DataModule, the trainer and its callbacks are built, and
    the env's (and evaluation env's) kwargs bind to the env class; offline simulators are built and reset."""
    import inspect

    from selu_lightning.cli import SeluCLI
    from selu_lightning.critic.tasks import task_structure
    from selu_lightning.data import CriticDataModule
    from selu_lightning.envs.base import env_class

    monkeypatch.chdir(ROOT)
    cli = SeluCLI(args=["-c", config, *CPU_OVERRIDES, f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False)
    data = cli.datamodule
    assert isinstance(cli.model, L.LightningModule) and isinstance(data, L.LightningDataModule)
    if isinstance(data, CriticDataModule):  # a critic learns from stores: its env's task structure, no env runs
        assert data.env == cli.model.hparams.env and task_structure(data.env) is not None
        return
    cli.model.check_env(data.env_cls)
    cls = env_class(data.env)
    for kwargs in (data.env_kwargs, data.eval_env_kwargs):
        inspect.signature(cls).bind(**kwargs)  # a misspelled env kwarg fails here
        if data.env != "ai2thor":  # THOR needs its Unity player and a GPU display (tested with a stub player)
            if "tasks_dir" in kwargs and not Path(kwargs["tasks_dir"]).exists():
                # a recipe's ALFWorld games are generated by the command in its header; a small set stands in
                from selu_lightning.envs.alfworld_tasks import generate_tasks

                if not (tmp_path / "games").exists():
                    generate_tasks(tmp_path / "games", 1, 1, goal_types=["pick_and_place_simple"])
                kwargs = {**kwargs, "tasks_dir": str(tmp_path / "games")}
            env = cls(**kwargs)
            obs, info = env.reset(seed=0)
            assert "image" in obs and "legal_actions" in info
            env.close()


# ---------------------------------------------------------------------- checkpoints and resuming
TINY_RUN = ["--data.num_envs=4", "--data.steps_per_epoch=8", "--model.minibatch_size=8", "--model.ppo_epochs=1",
            "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]  # fmt: skip


def fit_quickstart(capsys, save_dir, *extra, config="configs/quickstart.yaml"):
    """``selu fit`` in this process; returns (exit code, stderr)."""
    try:
        main(["fit", "-c", config, f"--trainer.logger.init_args.save_dir={save_dir}", *TINY_RUN, *extra])
        return 0, capsys.readouterr().err
    except SystemExit as exit_info:
        return exit_info.code, capsys.readouterr().err


def test_a_recipe_without_a_checkpoint_callback_still_writes_last(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    config = tmp_path / "no_callbacks.yaml"
    text = (ROOT / "configs/quickstart.yaml").read_text()
    start = text.index("  callbacks:")
    end = text.index("  logger:")
    config.write_text(text[:start] + text[end:])
    assert fit_quickstart(capsys, tmp_path / "runs", "--trainer.max_epochs=1", config=str(config))[0] == 0
    assert (tmp_path / "runs/quickstart/version_0/checkpoints/last.ckpt").is_file()


def test_runs_keep_their_own_checkpoints_and_last_resumes_the_newest(capsys, monkeypatch, tmp_path):
    import torch

    monkeypatch.chdir(ROOT)
    runs = tmp_path / "runs"
    assert fit_quickstart(capsys, runs, "--trainer.max_epochs=1")[0] == 0
    assert fit_quickstart(capsys, runs, "--trainer.max_epochs=2")[0] == 0
    lasts = sorted(runs.glob("quickstart/version_*/checkpoints/last.ckpt"))
    assert [p.parent.parent.name for p in lasts] == ["version_0", "version_1"]  # one per run, no last-v1
    assert not list(runs.glob("quickstart/version_*/checkpoints/last-v*.ckpt"))
    # resuming picks version_1's last.ckpt (2 epochs done): a third epoch runs from there
    assert fit_quickstart(capsys, runs, "--trainer.max_epochs=3", "--ckpt_path=last")[0] == 0
    resumed = torch.load(runs / "quickstart/version_2/checkpoints/last.ckpt", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3


def test_a_run_that_fails_before_its_first_update_leaves_no_folder(capsys, monkeypatch, tmp_path):
    """No empty version_N, and no interrupted.ckpt of the starting weights for --ckpt_path last to pick up."""
    monkeypatch.chdir(ROOT)
    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="the simulator crashed"):
        fit_quickstart(capsys, runs, "--data.env=test-stub-crashes")
    assert not list(runs.rglob("version_*")) and not list(runs.rglob("*.ckpt"))
    assert fit_quickstart(capsys, runs, "--trainer.max_epochs=1")[0] == 0
    assert [p.name for p in (runs / "quickstart").iterdir()] == ["version_0"]  # numbering did not jump


def test_ckpt_path_last_with_nothing_to_resume_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    code, err = fit_quickstart(capsys, tmp_path / "empty", "--ckpt_path=last")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "of an earlier run" in lines[0], err


@pytest.mark.parametrize(
    "change, message",
    [("--data.env=blackjack", "another experiment"), ("--model.policy.value_head_widths=[8]", "value_head_widths")],
)
def test_resuming_another_experiments_checkpoint_is_refused(change, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    runs = tmp_path / "runs"
    assert fit_quickstart(capsys, runs, "--trainer.max_epochs=1")[0] == 0
    code, err = fit_quickstart(capsys, runs, "--trainer.max_epochs=2", "--ckpt_path=last", change)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and lines[-1].startswith("selu: error:") and message in lines[-1], err



def test_version(capsys):
    from selu_lightning import __version__

    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and __version__ in out


def test_predict_writes_one_record_per_episode(capsys, monkeypatch, tmp_path):
    import json

    monkeypatch.chdir(ROOT)
    with pytest.warns(UserWarning, match="without --ckpt_path"):
        main(["predict", "-c", "configs/quickstart.yaml", f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--data.test_episodes=6", "--data.eval_num_envs=4", "--trainer.enable_progress_bar=false"])  # fmt: skip
    (path,) = tmp_path.rglob("predictions.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 6 and {"seed", "return", "length", "success"} <= set(records[0])
    assert len({r["seed"] for r in records}) == 6


def test_a_run_without_a_logger_writes_no_config_into_the_working_directory(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine: true\n")
    main(["fit", "-c", str(ROOT / "configs/quickstart.yaml"), "--trainer.logger=false", *TINY_RUN,
          "--trainer.max_epochs=1"])  # fmt: skip
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"


def test_an_env_with_instructions_warns_when_the_template_hides_them():
    from selu_lightning.action_spaces import CandidateActionSpace
    from selu_lightning.envs.base import env_class

    with pytest.warns(UserWarning, match=r"no \{goal\} field"):
        CandidateActionSpace(template="{state} {actions}").check_env(env_class("virtualhome"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CandidateActionSpace(template="{goal} {state} {actions}").check_env(env_class("virtualhome"))
        CandidateActionSpace(template="{state} {actions}").check_env(env_class("numberline"))


def test_a_fresh_run_prints_no_noise(tmp_path):
    """What a new user sees on a fresh machine: no cloud adverts, no Lightning notice that a fresh run found no
    checkpoint to resume, no per-load weight bar (messages newer Lightning and transformers releases added)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "selu_lightning", "fit", "-c", "configs/rl4vlm_cpu/ppo_numberline.yaml",
           f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *TINY_RUN, "--trainer.max_epochs=1",
           "--model.action_space.init_args.max_new_tokens=8"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for noise in ("Tip:", "litmodels", "litlogger", "without a model", "no last checkpoint", "Loading weights",
                  "exists and is not empty", "LeafSpec"):  # fmt: skip
        assert noise not in console, noise
    assert "selu: logs" in console  # the run's own closing line still prints


def test_sigterm_leaves_a_checkpoint_that_resumes(tmp_path):
    """What a cluster scheduler sends: the run stops, leaves last.ckpt, and --ckpt_path last continues it."""
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "selu_lightning", "fit", "-c", "configs/quickstart.yaml",
           f"--trainer.logger.init_args.save_dir={runs}", *TINY_RUN, "--trainer.max_epochs=1000"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(runs.glob("quickstart/version_0/checkpoints/last.ckpt")):
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "stopped by SIGTERM" in err, err[-2000:]
    ckpt = runs / "quickstart/version_0/checkpoints/interrupted.ckpt"
    assert ckpt.is_file()
    import torch

    stopped_at = torch.load(ckpt, weights_only=False)["global_step"]
    resumed = subprocess.run(cmd[:-1] + [f"--trainer.max_epochs={stopped_at + 2}", "--ckpt_path=last"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(runs / "quickstart/version_1/checkpoints/last.ckpt", weights_only=False)["global_step"] > stopped_at


def test_a_swapped_action_space_gets_its_own_defaults(monkeypatch, tmp_path):
    """A YAML naming TextActionSpace gets TextActionSpace's template (asking for JSON), not a default
    instance's; a command-line swap from a configured template takes it back with template=null."""
    from selu_lightning.action_spaces.text import DEFAULT_TEMPLATE
    from selu_lightning.cli import SeluCLI

    monkeypatch.chdir(ROOT)
    logs = f"--trainer.logger.init_args.save_dir={tmp_path}"
    cli = SeluCLI(args=["-c", "configs/rl4vlm_cpu/ppo_numberline.yaml", logs], run=False)
    assert cli.model.action_space.template == DEFAULT_TEMPLATE
    swap = ["--model.action_space=selu_lightning.action_spaces.TextActionSpace", "--model.action_space.init_args.template=default"]
    cli = SeluCLI(args=["-c", "configs/quickstart.yaml", logs, *swap], run=False)
    assert type(cli.model.action_space).__name__ == "TextActionSpace"
    assert cli.model.action_space.template == DEFAULT_TEMPLATE
