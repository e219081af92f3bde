"""tools/rollout_diversity.py: distinct responses / actions per state when the policy samples as in training."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

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
    assert 1 <= result["distinct_actions_per_state"] <= result["distinct_responses_per_state"] <= 6
    assert result["distinct_responses_per_state"] > 1  # random weights sample different candidates

    # The checkpoint is loaded whole: one that lacks part of the module fails instead of measuring fresh weights.
    module, _ = diversity.build("configs/quickstart.yaml", None, [])
    bad = {k: v for k, v in module.state_dict().items() if "value_head" not in k}
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(RuntimeError, match="value_head"):
        diversity.build("configs/quickstart.yaml", str(tmp_path / "bad.ckpt"), [])
