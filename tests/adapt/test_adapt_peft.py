"""PEFT interop: our save_peft loads in peft.PeftModel.from_pretrained with the same outputs;
a PEFT-made LoRA loads with load_peft with the same outputs; NOLA's basis is the same in a
fresh process."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import lowrank.adapt as la

peft = pytest.importorskip("peft")

TARGETS = ["query", "value"]
ATOL = 1e-5  # fp32 logits, same maths in a different order


def _perturb(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in la.trainable_parameters(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _ids() -> torch.Tensor:
    return torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(1))


def _out(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("config", [
    la.LoRA(rank=4, alpha=8, targets=TARGETS),
    la.LoRA(rank=4, use_rslora=True, alpha=3, targets=TARGETS),
    la.LoRA(rank=2, init="pissa", alpha=4, targets=TARGETS),
    la.NOLA(rank=2, num_basis=16, targets=TARGETS),
    la.SVFit(rank=4, targets=TARGETS),
    la.FLoRA(rank=3, scale=2.0, targets=TARGETS),
], ids=["lora", "rslora", "pissa", "nola", "svfit", "flora"])
def test_save_peft_loads_in_peft_with_same_outputs(tiny_bert, tmp_path, config):
    model = copy.deepcopy(tiny_bert)
    la.apply(model, config)
    _perturb(model)
    la.save_peft(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_bert), str(tmp_path / "ad"))
    ids = _ids()
    torch.testing.assert_close(_out(peft_model, ids), _out(model, ids), rtol=0, atol=ATOL)
    # And back: our load_peft of the same file gives the same outputs.
    back = copy.deepcopy(tiny_bert)
    la.load_peft(back, tmp_path / "ad")
    torch.testing.assert_close(_out(back, ids), _out(model, ids), rtol=0, atol=ATOL)


def test_flora_conv_exports_as_peft_conv_lora(tmp_path):
    torch.manual_seed(0)

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4))

    model = net()
    la.apply(model, la.FLoRA(rank=2, kernel_rank=2, targets=["0", "2"]))
    _perturb(model)
    la.save_peft(model, tmp_path / "conv")
    peft_model = peft.PeftModel.from_pretrained(net(), str(tmp_path / "conv"))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), model(x), rtol=0, atol=ATOL)


def test_peft_made_lora_loads_with_same_outputs(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(tiny_llama)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                     rank_pattern={"down_proj": 2}, alpha_pattern={"down_proj": 3},
                     init_lora_weights=False)
    pm = get_peft_model(base, cfg)
    pm.save_pretrained(str(tmp_path / "p"))
    ids = _ids()
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
    ours = copy.deepcopy(tiny_llama)
    names = la.load_peft(ours, tmp_path / "p")
    assert len(names) == 6
    with torch.no_grad():
        got = ours(input_ids=ids).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=ATOL)
    with torch.no_grad():
        base_logits = tiny_llama(input_ids=ids).logits
    assert (got - base_logits).abs().max() > 1e-3  # the adapter is not a no-op


_SNIPPET = """
import sys, lowrank.adapt as la
from lowrank.adapt.base import checksum
torch = __import__("torch")
torch.manual_seed(int(sys.argv[1]))   # the global RNG must not matter
b, a0 = la.nola_basis(11, "encoder.layer.0.attention.self.query", "A", 8, 2, 16)
print(checksum(b, a0))
"""


def test_nola_basis_identical_in_fresh_processes():
    from lowrank.adapt.base import checksum

    torch.manual_seed(123)
    b, a0 = la.nola_basis(11, "encoder.layer.0.attention.self.query", "A", 8, 2, 16)
    here = checksum(b, a0)
    outs = {subprocess.run([sys.executable, "-c", _SNIPPET, str(s)], capture_output=True,
                           text=True, check=True).stdout.strip() for s in (99,)}
    assert outs == {here}
    other, _ = la.nola_basis(11, "encoder.layer.1.attention.self.query", "A", 8, 2, 16)
    assert not torch.equal(other, b)  # a different module gets a different basis
