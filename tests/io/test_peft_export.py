"""EoRA compensations exported as a PEFT LoRA adapter reproduce the EoRA model under real PEFT."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lowrank
from lowrank import EoRA
from lowrank.errors import ModelFileError
from lowrank.io.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, save_eora_adapter
from lowrank.nn import ResidualLowRankLinear, dense_weight_of


def _forward(model: nn.Module, tokens) -> torch.Tensor:
    batch = next(tokens.batches(8))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _compressed_base(original: nn.Module, eora: nn.Module) -> nn.Module:
    """The original model with each compensated layer's weight set to ``W_c``."""
    base = copy.deepcopy(original)
    for name, layer in eora.named_modules():
        if isinstance(layer, ResidualLowRankLinear):
            with torch.no_grad():
                base.get_submodule(name).weight.copy_(dense_weight_of(layer.base))
    return base


@pytest.mark.parametrize("which,base,rank", [
    ("bert", "quant-int4", 8), ("llama", "quant-int4", 48), ("llama", "prune-2:4", 8),
])
def test_peft_round_trip(which, base, rank, request, calib_tokens, tmp_path):
    original = request.getfixturevalue(f"tiny_{which}")
    model = copy.deepcopy(original)
    lowrank.compress(model, EoRA(rank=rank, base=base), data=calib_tokens)
    expected = _forward(model, calib_tokens)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ResidualLowRankLinear)}

    path = save_eora_adapter(model, tmp_path / "adapter", base_model_name_or_path="tiny")
    # the two PEFT files, and the marker that lets a later export replace the directory
    assert {p.name for p in path.iterdir()} == {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "lowrank.json"}
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["bias"] == "none"
    assert config["fan_in_fan_out"] is False and config["base_model_name_or_path"] == "tiny"
    assert config["lora_alpha"] == config["r"]
    assert config["task_type"] == ("CAUSAL_LM" if which == "llama" else None)
    assert config["target_modules"] == list(layers)
    if rank == 48:  # k/v projections are 32 x 64 (GQA): their rank is capped at 32
        assert config["r"] == 48
        assert set(config["rank_pattern"]) == {n for n in layers if n.endswith(("k_proj",
                                                                                 "v_proj"))}
        assert set(config["rank_pattern"].values()) == {32}
        assert config["alpha_pattern"] == config["rank_pattern"]
    else:
        assert config["rank_pattern"] == {}
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    assert set(tensors) == {f"base_model.model.{n}.lora_{ab}.weight" for n in layers
                            for ab in "AB"}
    for name, layer in layers.items():
        assert torch.equal(tensors[f"base_model.model.{name}.lora_A.weight"], layer.A)
        assert torch.equal(tensors[f"base_model.model.{name}.lora_B.weight"], layer.B)

    peft_model = peft.PeftModel.from_pretrained(_compressed_base(original, model), str(path))
    peft_model.eval()
    lora_layers = [m for m in peft_model.modules() if isinstance(m, peft.tuners.lora.Linear)]
    assert len(lora_layers) == len(layers)
    got = _forward(peft_model, calib_tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # without the adapter the compressed base alone is further from the EoRA model
    with peft_model.disable_adapter():
        plain = _forward(peft_model, calib_tokens)
    assert float((plain - expected).norm()) > 10 * float((got - expected).norm())


def test_adapter_after_save_load(tiny_bert, calib_tokens, tmp_path):
    """A reloaded EoRA checkpoint exports the same adapter."""
    model = copy.deepcopy(tiny_bert)
    lowrank.compress(model, EoRA(rank=4), data=calib_tokens)
    lowrank.save(model, tmp_path / "ckpt")
    first = load_file(str(save_eora_adapter(model, tmp_path / "a") / ADAPTER_WEIGHTS))
    again = load_file(str(save_eora_adapter(lowrank.load(tmp_path / "ckpt"), tmp_path / "b")
                          / ADAPTER_WEIGHTS))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_no_compensation_raises_and_writes_nothing(tiny_bert, tmp_path):
    with pytest.raises(ModelFileError, match="no EoRA compensation"):
        save_eora_adapter(tiny_bert, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
