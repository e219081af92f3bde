"""The README's commands, checked as written. Each is run by a test (named in ``RUN_BY``), run here, or, where it
needs a GPU, a hub checkpoint, a long run or a path from an earlier run, parsed and built exactly as written with
only CPU overrides and a stand-in file for the earlier run's checkpoint. A command added to the README that no
rule covers fails ``test_every_readme_command_is_covered``."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: README commands that other tests run in full, by their first words.
RUN_BY = {
    "pip install torch==2.13.0 && pip install -e . && selu fit -c configs/quickstart.yaml": "tests/test_quickstart.py",
    "python -c": "tests/test_spine.py::test_last_value_skips_newer_runs_that_did_not_log_the_tag",
    "python tools/export_adapter.py": "tests/test_export.py",
}
#: Placeholders the README uses for a path an earlier run writes.
PLACEHOLDER = re.compile(r"<[^>]+>/checkpoints/last\.ckpt|runs/[\w-]+/version_0/checkpoints/last\.ckpt")


def readme_commands() -> list[str]:
    """Every command in the README's bash blocks as written, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def test_the_readme_test_command_is_what_ci_runs():
    tests = [c for c in readme_commands() if c.endswith("python -m pytest")]
    assert len(tests) == 1 and tests[0] in (ROOT / ".ci" / "run").read_text()


def _selu_args(command: str, tmp_path: Path) -> list[str] | None:
    """The ``selu`` arguments of a README command (None for other commands), its placeholders replaced."""
    stand_in = tmp_path / "last.ckpt"
    stand_in.write_bytes(b"")
    words = shlex.split(PLACEHOLDER.sub(str(stand_in), command))
    if words[0] == "selu":
        args = words[1:]
    elif words[:3] == ["python", "-m", "selu_lightning"]:
        args = words[3:]
    else:
        return None
    return args


def _without_ckpt_path(args: list[str]) -> tuple[list[str], str | None]:
    """``--ckpt_path`` belongs to the subcommand's run, not to the objects built here: taken out and returned."""
    for k, a in enumerate(args):
        if a == "--ckpt_path":
            return args[:k] + args[k + 2 :], args[k + 1]
        if a.startswith("--ckpt_path="):
            return args[:k] + args[k + 1 :], a.split("=", 1)[1]
    return args, None


def test_the_tests_named_for_readme_commands_exist():
    for test in RUN_BY.values():
        path, _, name = test.partition("::")
        text = (ROOT / path).read_text()
        assert f"def {name or 'test_'}" in text, test


def test_every_readme_command_is_covered(tmp_path):
    uncovered = []
    for command in readme_commands():
        words = command.split()
        covered = (
            any(command.startswith(k) for k in RUN_BY)
            or command.endswith("python -m pytest")
            or words[0] in ("tensorboard", "torchrun", "pip")
            or words[:3] == ["python", "-m", "selu_lightning.data.collect"]
            or words[0] == "selu-round"
            or words[:2] == ["python", "tools/rl4vlm_cpu_results.py"]
            or _selu_args(command, tmp_path) is not None
        )
        if not covered:
            uncovered.append(command)
    assert not uncovered, f"README commands no test checks: {uncovered}"
    assert shutil.which("tensorboard"), "the README's `tensorboard --logdir runs` needs the tensorboard script"


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith(("selu ", "python -m selu_lightning "))])
def test_readme_selu_commands_build(command, monkeypatch, tmp_path, capsys):
    """Each ``selu`` command parses and builds its model, data and trainer (``--help`` ones print and exit 0);
    GPU recipes get only the CPU overrides a test machine needs, and nothing is trained."""
    from selu_lightning.cli import SeluCLI

    from test_cli import CPU_OVERRIDES

    monkeypatch.chdir(ROOT)
    args = _selu_args(command, tmp_path)
    if any("help" in a.split("=")[0] for a in args if a.startswith("--")):
        with pytest.raises(SystemExit) as done:
            SeluCLI(args=args)
        assert done.value.code == 0 and capsys.readouterr().out.strip()
        return
    rest, ckpt = _without_ckpt_path(args[1:])
    assert ckpt in (None, "last", "...", str(tmp_path / "last.ckpt")), ckpt  # a path shape an earlier run writes
    config = rest[rest.index("-c") + 1]
    gpu = "accelerator: gpu" in (ROOT / config).read_text()
    overrides = [*CPU_OVERRIDES, "--trainer.devices=1", "--trainer.strategy=auto"] if gpu else []
    SeluCLI(args=[*rest, *overrides, f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False)  # raises if not


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("python -m selu_lightning.data.collect")])
def test_readme_collect_commands_run(command, monkeypatch, tmp_path):
    """As written, with the store written under tmp and the episode count cut to 3."""
    from selu_lightning.data.collect import main
    from selu_lightning.data.store import TrajectoryStore

    monkeypatch.chdir(ROOT)
    args = shlex.split(command)[3:]
    args[args.index("--out") + 1] = str(tmp_path / "demos")
    args[args.index("--episodes") + 1] = "3"
    main(args)
    assert len(TrajectoryStore(tmp_path / "demos")) == 3


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("selu-round ")])
def test_readme_round_commands_parse(command, monkeypatch):
    """Each ``selu-round`` command parses as written into a round whose two ``selu fit`` configs exist (a whole
    round on shrunk settings runs in tests/test_selu_round.py)."""
    from selu_lightning.selu_round import parse_args

    monkeypatch.chdir(ROOT)
    cfg = parse_args(shlex.split(command)[1:])
    assert (ROOT / cfg.actor).is_file() and (ROOT / cfg.critic).is_file()
    if "--variant" in command:
        assert cfg.variant == shlex.split(command)[shlex.split(command).index("--variant") + 1]


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("python tools/rl4vlm_cpu_results.py")])
def test_readme_results_tool_commands_parse(command, monkeypatch, tmp_path):
    """The results tool's README commands parse as written (envs, algorithms); ``--report`` on an empty output
    folder then runs nothing."""
    import importlib.util

    monkeypatch.chdir(ROOT)
    spec = importlib.util.spec_from_file_location("rl4vlm_cpu_results", ROOT / "tools/rl4vlm_cpu_results.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = shlex.split(command)[2:]
    tool.main([*args, "--report", f"--out={tmp_path / 'out'}", f"--docs={tmp_path / 'docs'}"])
