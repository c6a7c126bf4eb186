"""Round-to-nearest quantization (RTN) and magnitude pruning: oracles and the method configs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lowrank
from lowrank import RTN, MagnitudePrune
from lowrank.compress.prune import magnitude_mask, semi_structured_mask
from lowrank.compress.quant import dequantize, quantize, quantize_linear
from lowrank.errors import ConfigError
from lowrank.nn import QuantizedLinear, count_bytes
from lowrank.surgery import select_linears


def _forward(model: nn.Module, tokens) -> torch.Tensor:
    batch = next(tokens.batches(8))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _weight(rng, out_features=12, in_features=70):
    w = torch.randn(out_features, in_features, generator=rng, dtype=torch.float64)
    w[0, 5] = 40.0  # an outlier: its group gets a coarse step
    w[1, :32] = 0.0  # an all-zero group
    return w


# -------------------------------------------------------------------------------- RTN maths


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 7, 128])  # divides, remainder, wider than a row
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rtn_error_is_at_most_half_a_step(bits, group_size, dtype, rng):
    w = _weight(rng).to(dtype)
    codes, scales = quantize(w, bits, group_size)
    q_max = 2 ** (bits - 1) - 1
    groups = math.ceil(w.shape[1] / group_size)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    assert scales.dtype == dtype and scales.shape == (w.shape[0], groups)
    assert int(codes.abs().max()) == q_max  # each group's largest |w| maps to +-q_max
    # oracle: scale = max |w| of the group / q_max
    for g in range(groups):
        block = w[:, g * group_size:(g + 1) * group_size].double()
        torch.testing.assert_close(scales[:, g].double(), block.abs().amax(1) / q_max,
                                   rtol=1e-6, atol=0)
    step = scales.double().repeat_interleave(group_size, dim=1)[:, :w.shape[1]]
    error = (w.double() - dequantize(codes, scales, group_size).double()).abs()
    eps = torch.finfo(dtype).eps * w.double().abs()
    assert bool((error <= step / 2 + eps).all())
    if group_size < w.shape[1]:
        assert torch.equal(dequantize(codes, scales, group_size)[1, :32],
                           torch.zeros(32, dtype=dtype))  # the zero group stays exactly zero


def test_rtn_rounds_to_nearest_code():
    w = torch.tensor([[0.7, -0.26, 0.04, 0.06, 0.0, -0.7]], dtype=torch.float64)
    codes, scales = quantize(w, 4, 6)
    assert scales.item() == pytest.approx(0.1)
    assert codes.tolist() == [[7, -3, 0, 1, 0, -7]]


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="bits"):
        quantize(torch.ones(2, 2), bits=2)
    with pytest.raises(ValueError, match="group_size"):
        quantize(torch.ones(2, 2), group_size=0)
    with pytest.raises(ValueError, match="non-finite"):
        quantize(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="floating matrix"):
        quantize(torch.ones(3))


def test_quantize_linear_keeps_bias_and_dtype(rng):
    lin = nn.Linear(70, 12, dtype=torch.float64)
    layer = quantize_linear(lin, 4, 32)
    assert layer.scales.dtype == torch.float64 and torch.equal(layer.bias, lin.bias)
    codes, scales = quantize(lin.weight.detach(), 4, 32)
    assert torch.equal(layer.dense_weight(), dequantize(codes, scales, 32))


# ------------------------------------------------------------------------------ pruning maths


def test_two_four_keeps_the_two_largest_of_every_four(rng):
    w = torch.randn(16, 64, generator=rng)
    w[0, :4] = torch.tensor([0.1, -0.5, 0.5, 0.2])  # a tie in |w|: earlier input kept
    mask = semi_structured_mask(w)
    groups = mask.reshape(16, 16, 4)
    assert bool((groups.sum(-1) == 2).all())
    mags = w.abs().reshape(16, 16, 4)
    kept_min = torch.where(groups, mags, torch.inf).amin(-1)
    dropped_max = torch.where(~groups, mags, -torch.inf).amax(-1)
    assert bool((kept_min >= dropped_max).all())
    assert mask[0, :4].tolist() == [False, True, True, False]
    with pytest.raises(ConfigError, match="divisible by 4"):
        semi_structured_mask(torch.randn(3, 6))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_unstructured_sparsity_is_exact(sparsity, rng):
    w = torch.randn(24, 40, generator=rng)
    mask = magnitude_mask(w, sparsity)
    assert int((~mask).sum()) == round(sparsity * w.numel())
    if 0 < sparsity:
        assert float(w.abs()[mask].min()) >= float(w.abs()[~mask].max())
    with pytest.raises(ConfigError, match="sparsity"):
        magnitude_mask(w, 1.0)


# ---------------------------------------------------------------------- methods on models


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_rtn_method(which, request, tokenizer, calib_texts, calib_tokens, tmp_path):
    original = request.getfixturevalue(f"tiny_{which}")
    model = copy.deepcopy(original)
    targets = select_linears(model)
    weights = {n: m.weight.detach().clone() for n, m in targets.items()}
    result = lowrank.compress(model, RTN(bits=4, group_size=32), data=calib_texts,
                              tokenizer=tokenizer, seq_len=32)
    assert result.method["method"] == "rtn" and result.keep_target is None
    assert [m.name for m in result.modules] == list(targets)
    assert result.targeted_params_after == result.targeted_params_before
    assert result.params_after == result.params_before  # codes count as the weights they hold
    saved = sum(4 * w.numel() for w in weights.values()) - sum(
        count_bytes(model.get_submodule(n)) - (4 * model.get_submodule(n).bias.numel()
                                               if model.get_submodule(n).bias is not None
                                               else 0)
        for n in weights)
    assert result.bytes_before - result.bytes_after == saved > 0
    for report in result.modules:
        layer = model.get_submodule(report.name)
        assert isinstance(layer, QuantizedLinear) and layer.bits == 4
        codes, scales = quantize(weights[report.name], 4, 32)
        assert torch.equal(layer.codes(), codes) and torch.equal(layer.scales, scales)
        assert report.notes["bytes_after"] == layer.num_bytes() < report.notes["bytes_before"]
        assert report.notes["bits"] == 4 and report.notes["bits_per_weight"] < 6
        assert 0 < report.rel_output_error < 0.5 and 0 < report.rel_weight_error < 0.5
    out = _forward(model, calib_tokens)
    ref = _forward(original, calib_tokens)
    assert torch.isfinite(out).all()
    assert float((out - ref).norm() / ref.norm()) < 0.5
    # save -> load is bit-identical; dense export reproduces the outputs
    lowrank.save(model, tmp_path / "rtn")
    loaded = lowrank.load(tmp_path / "rtn")
    assert torch.equal(_forward(loaded, calib_tokens), out)
    for name in targets:
        layer = loaded.get_submodule(name)
        assert isinstance(layer, QuantizedLinear)
        parent, _, child = name.rpartition(".")
        setattr(loaded.get_submodule(parent), child, layer.to_dense_module())
    torch.testing.assert_close(_forward(loaded, calib_tokens), out, rtol=1e-5, atol=1e-5)


def test_rtn_int8_is_closer_than_int4(tiny_llama):
    errors = {}
    for bits in (4, 8):
        result = lowrank.compress(copy.deepcopy(tiny_llama), RTN(bits=bits))  # data-free
        assert all(m.rel_output_error is None for m in result.modules)
        errors[bits] = [m.rel_weight_error for m in result.modules]
    assert all(e8 < e4 / 8 for e4, e8 in zip(errors[4], errors[8], strict=True))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_magnitude_prune_method(pattern, tiny_bert, calib_tokens):
    model = copy.deepcopy(tiny_bert)
    targets = list(select_linears(model))
    config = MagnitudePrune(sparsity=0.5, pattern=pattern)
    result = lowrank.compress(model, config)
    assert result.method["method"] == "magnitude"
    assert result.params_after == result.params_before  # zeros are stored densely
    assert result.bytes_after == result.bytes_before
    total = 0
    for report in result.modules:
        layer = model.get_submodule(report.name)
        assert type(layer) is nn.Linear
        nonzeros = int(torch.count_nonzero(layer.weight))
        assert report.notes["nonzeros"] == nonzeros == layer.weight.numel() // 2
        assert report.notes["sparsity"] == 0.5
        if pattern == "2:4":
            groups = layer.weight.reshape(layer.out_features, -1, 4)
            assert bool(((groups != 0).sum(-1) == 2).all())
        total += nonzeros
    assert result.allocation["nonzeros"] == total
    assert [m.name for m in result.modules] == targets
    assert torch.isfinite(_forward(model, calib_tokens)).all()


def test_two_four_needs_divisible_inputs():
    model = nn.ModuleDict({"a": nn.Linear(8, 4), "b": nn.Linear(6, 4)})
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="divisible by 4"):
        lowrank.compress(model, MagnitudePrune(pattern="2:4"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was pruned


@pytest.mark.parametrize("cls,kwargs,match", [
    (RTN, {"bits": 3}, "bits"), (RTN, {"bits": True}, "bits"),
    (RTN, {"group_size": 0}, "group_size"), (RTN, {"group_size": 2.5}, "group_size"),
    (MagnitudePrune, {"sparsity": 1.0}, "sparsity"),
    (MagnitudePrune, {"sparsity": -0.1}, "sparsity"),
    (MagnitudePrune, {"pattern": "4:8"}, "pattern"),
    (MagnitudePrune, {"pattern": "2:4", "sparsity": 0.7}, "sparsity"),
])
def test_bad_fields_raise(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_registry_round_trip():
    for name, config in {"rtn": RTN(bits=8, group_size=64, targets="q_proj"),
                         "magnitude": MagnitudePrune(sparsity=0.25)}.items():
        assert lowrank.METHODS.get(name) is type(config)
        back = lowrank.CompressionConfig.from_dict(config.to_dict())
        assert back == config and type(back) is type(config)
    assert set(RTN.help()) >= {"bits", "group_size", "targets"}
    assert set(MagnitudePrune.help()) >= {"sparsity", "pattern"}
