"""tools/export_adapter.py: the exported adapter loads with plain transformers + peft and computes the same logits."""

import subprocess
import sys
from pathlib import Path

import torch

from helpers import cpu_trainer, tiny_data, tiny_module

ROOT = Path(__file__).resolve().parents[1]


def test_exported_adapter_loads_without_this_package(tmp_path):
    torch.manual_seed(0)
    module = tiny_module()
    trainer = cpu_trainer(tmp_path)
    trainer.fit(module, tiny_data())
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "exported"
    subprocess.run([sys.executable, "tools/export_adapter.py", str(ckpt), "--out", str(out)], cwd=ROOT, check=True)
    assert (out / "adapter_config.json").is_file() and (out / "value_head.safetensors").is_file()

    # A fresh interpreter that never imports selu_lightning.
    base = module.policy.hf_model.config._name_or_path
    probe = f"""
import sys, torch
assert "selu_lightning" not in sys.modules
from transformers import AutoModelForImageTextToText, AutoTokenizer
from peft import PeftModel
model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained({str(base)!r}), {str(out)!r}).eval()
ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
torch.save(model(input_ids=ids).logits, {str(tmp_path / 'logits.pt')!r})
assert "selu_lightning" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True)
    theirs = torch.load(tmp_path / "logits.pt")
    module.policy.model.eval()
    with torch.no_grad():
        ours = module.policy.model(input_ids=torch.tensor([[1, 5, 9, 42, 7, 3]])).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # the adapter really carries training: with adapters off the logits differ
    with torch.no_grad(), module.policy.model.disable_adapter():
        base_logits = module.policy.model(input_ids=torch.tensor([[1, 5, 9, 42, 7, 3]])).logits
    assert not torch.allclose(base_logits, ours, atol=1e-6)
