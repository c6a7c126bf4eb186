"""The structured-layer protocol, for every registered checkpoint kind.

Each kind is built small with non-trivial tensors and checked for: ``lowrank.to_dense`` swaps
in a plain ``nn.Linear`` / ``nn.Conv2d`` / ``nn.Embedding`` with equal outputs (float32 layers,
dense weight composed in float64: atol = rtol = 1e-5), ``dense_weight()`` is that module's
weight, ``lowrank.save`` / ``lowrank.load`` reproduce the outputs bit for bit, the manifest
entry is the pinned on-disk format, and parameter / byte accounting matches a direct count.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import lowrank
from lowrank.nn import (
    CPConv2d,
    FactorizedEmbedding,
    IndexedLinear,
    LOSTLinear,
    LowRankLinear,
    OrderedLowRankLinear,
    QuantizedLinear,
    ResidualLowRankLinear,
    SparseDictLinear,
    SparseLowRankLinear,
    StructuredLayer,
    Tucker2Conv2d,
    VQLinear,
    count_bytes,
    count_parameters,
)
from lowrank.nn.kinds import entry_of, module_kind, module_kinds


@dataclass
class Case:
    build: Callable[[torch.Generator], StructuredLayer]
    inputs: Callable[[torch.Generator], torch.Tensor]
    entry: dict  # the manifest entry, exactly as lowrank.json stores it
    encoded: int | None = None  # parameters when the layer encodes more weights than it stores


def _r(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _linear_in(g: torch.Generator) -> torch.Tensor:
    return _r(g, 3, 6)


def _quantized(g: torch.Generator) -> QuantizedLinear:
    codes = torch.randint(-7, 8, (5, 6), generator=g, dtype=torch.int8)
    return QuantizedLinear.from_codes(codes, torch.rand(5, 2, generator=g) + 0.1, 4, 3,
                                      _r(g, 5))


def _embedding(g: torch.Generator) -> FactorizedEmbedding:
    table = _r(g, 10, 3)
    table[0] = 0
    return FactorizedEmbedding.from_factors(table, _r(g, 6, 3), _r(g, 6), padding_idx=0)


def _tucker(g: torch.Generator) -> Tucker2Conv2d:
    layer = Tucker2Conv2d(3, 4, 3, 2, 2, stride=1, padding=1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return layer


def _cp(g: torch.Generator) -> CPConv2d:
    layer = CPConv2d(3, 4, (3, 2), 3, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    layer.set_factors(_r(g, 4, 3), _r(g, 3, 3), _r(g, 3, 3), _r(g, 2, 3))
    with torch.no_grad():
        layer.bias.copy_(_r(g, 4))
    return layer


def _sparse_lowrank(g: torch.Generator) -> SparseLowRankLinear:
    layer = SparseLowRankLinear(6, 5, 2, density=0.3, alpha=4.0, seed=1, name="x")
    with torch.no_grad():
        layer.B.copy_(_r(g, 5, 2))
    return layer


def _lost(g: torch.Generator) -> LOSTLinear:
    lin = nn.Linear(6, 5)
    with torch.no_grad():
        lin.weight.copy_(_r(g, 5, 6))
    return LOSTLinear.from_linear(lin, 2, num_channels=2, gamma=0.3)


def _image(g: torch.Generator) -> torch.Tensor:
    return _r(g, 2, 3, 7, 7)


F32 = "float32"
CASES = {
    "LowRankLinear": Case(
        lambda g: LowRankLinear.from_factors(_r(g, 5, 2), _r(g, 2, 6), _r(g, 5)), _linear_in,
        {"rank": 2, "in_features": 6, "out_features": 5, "bias": True, "dtype": F32}),
    "QuantizedLinear": Case(
        _quantized, _linear_in,
        {"in_features": 6, "out_features": 5, "bits": 4, "group_size": 3, "bias": True,
         "dtype": F32}, encoded=5 * 6 + 5),
    "ResidualLowRankLinear": Case(
        lambda g: ResidualLowRankLinear.from_factors(_quantized(g), _r(g, 5, 2), _r(g, 2, 6)),
        _linear_in,
        {"rank": 2, "in_features": 6, "out_features": 5, "dtype": F32,
         "base": {"kind": "QuantizedLinear", "in_features": 6, "out_features": 5, "bits": 4,
                  "group_size": 3, "bias": True, "dtype": F32}},
        encoded=5 * 6 + 5 + 2 * (6 + 5)),
    "FactorizedEmbedding": Case(
        _embedding, lambda g: torch.randint(0, 10, (2, 4), generator=g),
        {"rank": 3, "num_embeddings": 10, "embedding_dim": 6, "padding_idx": 0,
         "dtype": F32}),
    "Tucker2Conv2d": Case(
        _tucker, _image,
        {"in_channels": 3, "out_channels": 4, "kernel_size": [3, 3], "rank_in": 2,
         "rank_out": 2, "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "bias": True,
         "dtype": F32}),
    "CPConv2d": Case(
        _cp, _image,
        {"in_channels": 3, "out_channels": 4, "kernel_size": [3, 2], "rank": 3,
         "stride": [2, 1], "padding": [1, 0], "dilation": [1, 2], "bias": True, "dtype": F32}),
    "SparseDictLinear": Case(
        lambda g: SparseDictLinear.from_parts(_r(g, 4, 6), torch.randint(0, 4, (5, 2),
                                                                         generator=g),
                                              _r(g, 5, 2), _r(g, 5)), _linear_in,
        {"in_features": 6, "out_features": 5, "num_atoms": 4, "sparsity": 2, "bias": True,
         "dtype": F32}),
    "VQLinear": Case(
        lambda g: VQLinear.from_parts(torch.randint(0, 5, (15,), generator=g), _r(g, 5, 2),
                                      _r(g, 2, 2), _r(g, 2), 5, 6, _r(g, 5)), _linear_in,
        {"in_features": 6, "out_features": 5, "codebook": 5, "subvector": 2, "dim": 2,
         "bias": True, "dtype": F32, "packed": True}, encoded=5 * 6 + 5),
    "IndexedLinear": Case(
        lambda g: IndexedLinear.from_parts(_r(g, 3, 4), _r(g, 3), 6, 5,
                                           torch.tensor([0, 2, 3, 5]), torch.tensor([1, 2, 4])),
        _linear_in,
        {"in_features": 6, "out_features": 5, "n_in": 4, "n_out": 3, "bias": True,
         "dtype": F32}),
    "SparseLowRankLinear": Case(
        _sparse_lowrank, _linear_in,
        {"in_features": 6, "out_features": 5, "rank": 2, "density": 0.3, "alpha": 4.0,
         "seed": 1, "name": "x", "bias": True, "dtype": F32}),
    "LOSTLinear": Case(
        _lost, _linear_in,
        {"in_features": 6, "out_features": 5, "rank": 2, "num_channels": 2, "gamma": 0.3,
         "bias": True, "dtype": F32}),
    "OrderedLowRankLinear": Case(
        lambda g: OrderedLowRankLinear(6, 5, 3), _linear_in,
        {"in_features": 6, "out_features": 5, "rank": 3, "bias": True, "dtype": F32}),
}
DENSE = (nn.Linear, nn.Conv2d, nn.Embedding)


def test_every_registered_kind_is_covered():
    assert sorted(CASES) == sorted(k.__name__ for k in module_kinds())
    assert all(issubclass(k, StructuredLayer) for k in module_kinds())


def _model(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    case = CASES[kind]
    layer = case.build(g)
    assert type(layer) is module_kind(kind)
    return nn.Sequential(layer), case.inputs(g)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_to_dense_keeps_outputs(kind):
    model, x = _model(kind)
    layer = model[0]
    with torch.no_grad():
        expected = model(x)
        lowrank.to_dense(model)
        dense = model[0]
        assert type(dense) in DENSE and not any(
            isinstance(m, StructuredLayer) for m in model.modules())
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        weight = layer.dense_weight()
        assert weight.shape == dense.weight.shape and weight.dtype == dense.weight.dtype
        torch.testing.assert_close(weight, dense.weight, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_save_load_round_trip_and_pinned_entry(kind, tmp_path):
    model, x = _model(kind)
    assert entry_of(model[0]) == {"kind": kind, **CASES[kind].entry}
    assert list(entry_of(model[0])) == ["kind", *CASES[kind].entry]
    lowrank.save(model, tmp_path / "out")
    back = lowrank.load(tmp_path / "out", model=nn.Sequential(nn.Identity()))
    assert type(back[0]) is type(model[0])
    with torch.no_grad():
        assert torch.equal(back(x), model.eval()(x))


@pytest.mark.parametrize("kind", sorted(CASES))
def test_accounting_matches_a_direct_count(kind):
    model, _ = _model(kind)
    layer = model[0]
    stored = sum(p.numel() for p in layer.parameters())
    expected = CASES[kind].encoded or stored
    assert layer.num_parameters() == count_parameters(model) == expected
    tensors = layer.state_dict().values()
    assert layer.num_bytes() == count_bytes(model) == sum(
        t.numel() * t.element_size() for t in tensors)


def test_to_dense_replaces_the_outermost_layer_and_spares_dense_models():
    model, x = _model("ResidualLowRankLinear")
    plain = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    before = copy.deepcopy(plain)
    assert lowrank.to_dense(plain) is plain
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 before.state_dict().values(), strict=True))
    lowrank.to_dense(model)
    assert [type(m) for m in model.modules()] == [nn.Sequential, nn.Linear]


def test_accounting_of_a_mixed_model():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(_quantized(g), nn.ReLU(), nn.Linear(5, 4), _tucker(g))
    assert count_parameters(model) == 5 * 6 + 5 + 5 * 4 + 4 + sum(
        p.numel() for p in model[3].parameters())
    assert count_bytes(model) == sum(t.numel() * t.element_size()
                                     for t in model.state_dict().values())
