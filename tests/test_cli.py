"""The `selu` command: every shipped YAML parses, help documents options, bad input fails in one line early."""

from pathlib import Path

import pytest

from selu_lightning.cli import main
from selu_lightning.envs.base import TextVisualEnv, register_env

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))


@register_env("test-stub-no-legal-actions")
class NoLegalActionsStubEnv(TextVisualEnv):
    """Test double: an env whose simulator lists no legal actions (like a free-text simulator)."""

    has_legal_actions = False


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


def test_help_documents_every_option(capsys):
    code, out, _ = run_cli(["fit", "--help"], capsys)
    assert code == 0
    for option in ("--model.policy.model_name_or_path", "--model.action_space", "--data.env", "--data.num_envs",
                   "--data.steps_per_epoch", "--model.clip", "--model.dropout_in_update"):
        assert option in out
    assert "Env steps per rank per epoch" in out  # docstrings become help text


def test_interpolation(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  num_envs: 4\n  steps_per_epoch: ${data.num_envs}\nmodel:\n  policy:\n    model_name_or_path: tiny:llava\n")
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
