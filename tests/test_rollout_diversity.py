"""tools/rollout_diversity.py: distinct responses / actions per state when the policy samples as in training."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from selu_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def tool():
    spec = importlib.util.spec_from_file_location("rollout_diversity", ROOT / "tools/rollout_diversity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counts_what_a_sampling_policy_writes_for_copies_of_one_state(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    diversity = tool()
    out = tmp_path / "d.json"
    diversity.main(["-c", "configs/quickstart.yaml", "--states", "3", "--samples", "6", f"--out={out}"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert 0 <= result["distinct_actions_per_state"] <= result["distinct_responses_per_state"] <= 6
    assert result["distinct_responses_per_state"] > 1  # random weights sample different candidates

    # A checkpoint's trained weights are what is measured; one lacking some fails instead of measuring fresh ones.
    module, _ = diversity.build("configs/quickstart.yaml", None, [])
    trained = {k: v + 1.0 for k, v in module.state_dict().items() if k.startswith("policy.value_head")}
    torch.save({"state_dict": trained}, tmp_path / "heads.ckpt")
    with pytest.raises(ConfigError, match="lacks"):
        diversity.build("configs/quickstart.yaml", str(tmp_path / "heads.ckpt"), [])
    full = {k: v + 1.0 for k, v in module.state_dict().items() if v.is_floating_point()}
    torch.save({"state_dict": full}, tmp_path / "full.ckpt")
    loaded, _ = diversity.build("configs/quickstart.yaml", str(tmp_path / "full.ckpt"), [])
    name = next(iter(full))
    assert torch.equal(loaded.state_dict()[name], full[name])


def test_the_tools_split_their_own_options_from_config_options(tmp_path, capsys):
    tool()  # the tool puts tools/ on the import path
    from config_tool import emit, split_argv

    assert split_argv(["-c", "x.yaml", "--states", "3"]) == (["-c", "x.yaml", "--states", "3"], [])
    assert split_argv(["-c", "x.yaml", "--", "--model.a=1", "--", "b"]) == (["-c", "x.yaml"], ["--model.a=1", "--", "b"])
    assert split_argv(["--"]) == ([], [])
    out = tmp_path / "deep" / "r.json"
    emit({"a": 1.5}, out)
    assert json.loads(capsys.readouterr().out) == json.loads(out.read_text()) == {"a": 1.5}
