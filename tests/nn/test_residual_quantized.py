"""QuantizedLinear (int8 / packed int4 codes + group scales) and ResidualLowRankLinear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank.nn import (
    QuantizedLinear,
    ResidualLowRankLinear,
    StructuredLinear,
    count_bytes,
    count_parameters,
    dense_weight_of,
)
from lowrank.nn.kinds import entry_of, module_kind
from lowrank.nn.quantized import dequantize, pack_int4, unpack_int4


def _rebuild(module: nn.Module) -> nn.Module:
    """What ``lowrank.load`` does: an empty module from the manifest entry, then the tensors."""
    entry = entry_of(module)
    empty = module_kind(entry["kind"]).from_manifest_entry(entry)
    empty.load_state_dict(module.state_dict(), strict=True)
    return empty


def _random_codes(out_features, in_features, bits, gen):
    limit = 2 ** (bits - 1) - 1
    return torch.randint(-limit, limit + 1, (out_features, in_features), generator=gen,
                         dtype=torch.int8)


# ---------------------------------------------------------------------------- int4 packing


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_int4_pack_round_trip_is_exact(n, rng):
    codes = torch.randint(-8, 8, (5, n), generator=rng, dtype=torch.int8)
    codes[0, : min(n, 16)] = torch.arange(-8, 8, dtype=torch.int8)[: min(n, 16)]
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (n + 1) // 2)
    assert torch.equal(unpack_int4(packed, n), codes)


def test_int4_pack_layout_low_nibble_first():
    packed = pack_int4(torch.tensor([[-8, 7, 0]], dtype=torch.int8))
    assert packed.tolist() == [[0x0 | (0xF << 4), 0x8 | (0x8 << 4)]]


def test_int4_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="-8, 7"):
        pack_int4(torch.tensor([[8]], dtype=torch.int16))
    with pytest.raises(ValueError, match="integer"):
        pack_int4(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="bytes"):
        unpack_int4(torch.zeros(2, 2, dtype=torch.uint8), 7)


def test_dequantize_groups_with_remainder():
    codes = torch.tensor([[1, 2, 3, 4, 5]], dtype=torch.int8)
    scales = torch.tensor([[10.0, 100.0]])
    torch.testing.assert_close(dequantize(codes, scales, 3),
                               torch.tensor([[10.0, 20.0, 30.0, 400.0, 500.0]]))
    with pytest.raises(ValueError, match="do not fit"):
        dequantize(codes, torch.ones(1, 3), 3)


# -------------------------------------------------------------------------- QuantizedLinear


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("in_features,group_size", [(48, 16), (45, 16), (20, 128)])
def test_quantized_linear(bits, in_features, group_size, rng):
    out_features = 6
    codes = _random_codes(out_features, in_features, bits, rng)
    groups = -(-in_features // group_size)
    scales = torch.rand(out_features, groups, generator=rng) + 0.1
    bias = torch.randn(out_features, generator=rng)
    layer = QuantizedLinear.from_codes(codes, scales, bits, group_size, bias)
    assert torch.equal(layer.codes(), codes)
    weight = dequantize(codes, scales, group_size)
    assert torch.equal(layer.dense_weight(), weight)
    x = torch.randn(3, 4, in_features, generator=rng)
    assert torch.equal(layer(x), nn.functional.linear(x, weight, bias))
    dense = layer.to_dense_module()
    assert type(dense) is nn.Linear
    assert torch.equal(dense.weight, weight) and torch.equal(dense.bias, bias)
    # storage: codes (int8, or two per byte) + float32 scales + float32 bias
    code_bytes = out_features * (in_features if bits == 8 else (in_features + 1) // 2)
    expected = code_bytes + 4 * out_features * groups + 4 * out_features
    assert layer.num_bytes() == expected == count_bytes(layer)
    assert layer.num_parameters() == out_features * in_features + out_features
    assert count_parameters(layer) == layer.num_parameters()
    assert layer.bits_per_weight() == pytest.approx(bits + 32 * groups / in_features)
    state = layer.state_dict()
    assert set(state) == {"qweight", "scales", "bias"}
    assert state["qweight"].dtype == (torch.int8 if bits == 8 else torch.uint8)
    back = _rebuild(layer)
    assert torch.equal(back(x), layer(x))


def test_quantized_linear_validation():
    with pytest.raises(ValueError, match="bits"):
        QuantizedLinear(4, 4, bits=3)
    with pytest.raises(ValueError, match="group_size"):
        QuantizedLinear(4, 4, group_size=0)
    with pytest.raises(ValueError, match=r"\[-7, 7\]"):
        QuantizedLinear.from_codes(torch.full((2, 2), 8, dtype=torch.int8), torch.ones(2, 1),
                                   4, 2)
    with pytest.raises(ValueError, match="integer"):
        QuantizedLinear.from_codes(torch.zeros(2, 2), torch.ones(2, 1), 8, 2)
    with pytest.raises(ValueError, match="do not fit"):
        QuantizedLinear.from_codes(torch.zeros(2, 4, dtype=torch.int8), torch.ones(2, 1), 8, 2)
    entry = entry_of(QuantizedLinear(4, 4, bits=4, group_size=2))
    with pytest.raises(ValueError, match="bits"):
        QuantizedLinear.from_manifest_entry({**entry, "bits": 5})
    with pytest.raises(ValueError, match="group_size"):
        QuantizedLinear.from_manifest_entry({**entry, "group_size": 0})


# -------------------------------------------------------------------- ResidualLowRankLinear


def _bases(rng):
    linear = nn.Linear(12, 10)
    quant = QuantizedLinear.from_codes(_random_codes(10, 12, 4, rng), torch.rand(10, 3) + 0.1,
                                       4, 4, torch.randn(10))
    no_bias = nn.Linear(12, 10, bias=False)
    return {"linear": linear, "quantized": quant, "no_bias": no_bias}


@pytest.mark.parametrize("which", ["linear", "quantized", "no_bias"])
def test_residual_forward_dense_and_serialisation(which, rng):
    base = _bases(rng)[which]
    A = torch.randn(3, 12, generator=rng)
    B = torch.randn(10, 3, generator=rng)
    layer = ResidualLowRankLinear.from_factors(base, B, A)
    x = torch.randn(5, 12, generator=rng)
    torch.testing.assert_close(layer(x), base(x) + x @ A.T @ B.T, rtol=0, atol=1e-6)
    base_weight = base.dense_weight() if which == "quantized" else base.weight
    torch.testing.assert_close(layer.dense_weight(), (base_weight + B @ A).detach(),
                               rtol=0, atol=1e-6)
    dense = layer.to_dense_module()
    assert type(dense) is nn.Linear
    torch.testing.assert_close(dense(x), layer(x), rtol=0, atol=1e-5)
    assert torch.equal(dense_weight_of(layer.base), base_weight)
    assert layer.bias is getattr(base, "bias", None)
    # accounting: the base's parameters (codes count as weights) + r (in + out)
    base_params = 120 + (0 if which == "no_bias" else 10)
    assert layer.num_parameters() == base_params + 3 * 22 == count_parameters(layer)
    assert layer.num_bytes() == count_bytes(layer)
    assert layer.flops_per_token() == 2 * 120 + 2 * 3 * 22
    entry = entry_of(layer)
    assert entry["kind"] == "ResidualLowRankLinear" and entry["rank"] == 3
    assert entry["base"]["kind"] == ("QuantizedLinear" if which == "quantized" else "Linear")
    back = _rebuild(layer)
    assert type(back.base) is type(base)
    assert torch.equal(back(x), layer(x))


def test_residual_validation(rng):
    base = nn.Linear(12, 10)
    with pytest.raises(ValueError, match="do not match"):
        ResidualLowRankLinear.from_factors(base, torch.zeros(9, 2), torch.zeros(2, 12))
    with pytest.raises(ValueError, match="chain"):
        ResidualLowRankLinear.from_factors(base, torch.zeros(10, 2), torch.zeros(3, 12))
    with pytest.raises(ValueError, match="rank"):
        ResidualLowRankLinear(base, 11)
    with pytest.raises(TypeError, match="in_features"):
        ResidualLowRankLinear(nn.ReLU(), 1)
    entry = entry_of(ResidualLowRankLinear(base, 2))
    with pytest.raises(ValueError, match="unknown kind"):
        ResidualLowRankLinear.from_manifest_entry({**entry, "base": {"kind": "Conv2d"}})
    with pytest.raises(ValueError, match="base is"):
        ResidualLowRankLinear.from_manifest_entry({**entry, "in_features": 13})
    with pytest.raises(TypeError, match="serialise"):
        entry_of(ResidualLowRankLinear(_Custom(), 1))


class _Custom(StructuredLinear):
    """A linear structured layer that is not a registered checkpoint kind."""

    in_features = 4
    out_features = 4
    bias = None

    def dense_weight(self):
        return torch.eye(4)

    def forward(self, x):
        return x
