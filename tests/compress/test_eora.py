"""EoRA: whitened low-rank compensation of a compression error, checked against oracles."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import lowrank
from lowrank import EoRA
from lowrank.calib.stats import CalibrationStats, SiteStats
from lowrank.compress.eora import BASES
from lowrank.compress.prune import prune_mask
from lowrank.compress.quant import dequantize, quantize
from lowrank.errors import ConfigError, DataError
from lowrank.linalg import whitened_lowrank
from lowrank.nn import QuantizedLinear, ResidualLowRankLinear
from lowrank.surgery import select_linears

SEQ_LEN = 32


def _forward(model: nn.Module, tokens) -> torch.Tensor:
    batch = next(tokens.batches(8))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _synthetic(rng, out_features=24, in_features=40, tokens=400, gram_scale=1.0):
    """A float64 layer and the exact Gram of anisotropic, correlated inputs ``X`` (in x N)."""
    mix = torch.linalg.qr(torch.randn(in_features, in_features, generator=rng,
                                      dtype=torch.float64))[0]
    spread = torch.logspace(0, -2, in_features, dtype=torch.float64)
    X = mix @ (spread[:, None] * torch.randn(in_features, tokens, generator=rng,
                                             dtype=torch.float64))
    lin = nn.Linear(in_features, out_features, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.normal_(generator=rng)
    model = nn.ModuleDict({"lin": lin})
    gram = gram_scale * (X @ X.T)
    stats = CalibrationStats(sites={"lin": SiteStats(gram, X.abs().sum(1), tokens)},
                             module_site={"lin": "lin"})
    return model, stats, X


def _compressed_weight(layer: ResidualLowRankLinear) -> torch.Tensor:
    base = layer.base
    return (base.dense_weight() if isinstance(base, QuantizedLinear) else base.weight).detach()


@pytest.fixture(scope="module")
def bert_stats(tiny_bert, calib_tokens):
    return lowrank.calibrate(tiny_bert, EoRA(), calib_tokens)


@pytest.fixture(scope="module")
def llama_stats(tiny_llama, calib_tokens):
    return lowrank.calibrate(tiny_llama, EoRA(), calib_tokens)


# ------------------------------------------------------------------- oracles (synthetic)


@pytest.mark.parametrize("base", ["quant-int4", "prune-2:4", "prune-unstructured"])
@pytest.mark.parametrize("rank", [1, 5, 12])
def test_error_is_the_whitened_optimum(base, rank, rng):
    """``||(dW - B A) X|| / ||W X||`` equals the rank-``rank`` tail of the singular values of
    ``dW X`` (Eckart–Young in output space), and is no larger than plain SVD of ``dW``."""
    model, stats, X = _synthetic(rng)
    W = model["lin"].weight.detach().clone()
    result = lowrank.compress(model, EoRA(rank=rank, base=base, group_size=8), stats=stats)
    layer = model["lin"]
    assert isinstance(layer, ResidualLowRankLinear) and layer.rank == rank
    delta = W - _compressed_weight(layer)
    s = torch.linalg.svdvals(delta @ X)
    optimum = float((s[rank:] ** 2).sum().sqrt() / (W @ X).norm())
    report = result.modules[0]
    assert report.rel_output_error == pytest.approx(optimum, rel=1e-8)
    assert float(((W - layer.dense_weight().detach()) @ X).norm() / (W @ X).norm()) == \
        pytest.approx(optimum, rel=1e-8)
    base_error = float((delta @ X).norm() / (W @ X).norm())
    assert report.notes["base_rel_output_error"] == pytest.approx(base_error, rel=1e-10)
    assert report.rel_output_error < base_error
    # the whitened spectrum in the report is that of dW X: its tail is the error
    torch.testing.assert_close(torch.tensor(report.spectrum, dtype=torch.float64), s,
                               rtol=1e-8, atol=1e-12)
    # plain (unweighted) SVD of dW at the same rank does no better in output space
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    plain = (U[:, :rank] * S[:rank]) @ Vh[:rank]
    assert optimum <= float(((delta - plain) @ X).norm() / (W @ X).norm()) * (1 + 1e-10)
    # and it is the whitened primitive applied to dW
    B, A, _ = whitened_lowrank(delta, stats.gram_root("lin", 1e-6), rank)
    torch.testing.assert_close(layer.correction().detach(), B @ A, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("base", ["quant-int4", "quant-int8", "prune-2:4"])
def test_full_rank_reproduces_the_weight(base, rng):
    model, stats, X = _synthetic(rng)
    W = model["lin"].weight.detach().clone()
    result = lowrank.compress(model, EoRA(rank=1.0, base=base, group_size=8), stats=stats)
    assert result.modules[0].rank == 24
    assert result.modules[0].rel_output_error < 1e-10
    torch.testing.assert_close(model["lin"].dense_weight().detach(), W, rtol=0,
                               atol=1e-10 * float(W.abs().max()))


def test_invariant_to_the_scale_of_the_gram(rng):
    weights = []
    for scale in (1.0, 1e-3, 1e4):
        model, stats, _ = _synthetic(torch.Generator().manual_seed(7), gram_scale=scale)
        lowrank.compress(model, EoRA(rank=6, base="quant-int4", group_size=8), stats=stats)
        weights.append(model["lin"].dense_weight().detach())
    for other in weights[1:]:
        torch.testing.assert_close(other, weights[0], rtol=1e-9, atol=1e-12)


def test_base_none_is_an_exact_zero_correction(rng):
    model, stats, _ = _synthetic(rng)
    W = model["lin"].weight.detach().clone()
    result = lowrank.compress(model, EoRA(rank=4, base="none"), stats=stats)
    layer = model["lin"]
    assert torch.equal(layer.correction().detach(), torch.zeros_like(W))
    assert torch.equal(layer.dense_weight().detach(), W)
    assert result.modules[0].rel_output_error == 0.0


# ------------------------------------------------------------------------ tiny models


@pytest.mark.parametrize("which", ["bert", "llama"])
@pytest.mark.parametrize("base", BASES)
def test_compensation_never_increases_the_error(which, base, request):
    original = request.getfixturevalue(f"tiny_{which}")
    stats = request.getfixturevalue(f"{which}_stats")
    model = copy.deepcopy(original)
    targets = select_linears(model)
    weights = {n: m.weight.detach().clone() for n, m in targets.items()}
    rank = 8
    result = lowrank.compress(model, EoRA(rank=rank, base=base), stats=stats)
    assert result.method["method"] == "eora" and result.keep_target is None
    assert [m.name for m in result.modules] == list(targets)
    correction = exact = 0
    for report in result.modules:
        layer = model.get_submodule(report.name)
        assert isinstance(layer, ResidualLowRankLinear) and layer.rank == report.rank == rank
        W = weights[report.name]
        compressed = _compressed_weight(layer)
        if base.startswith("quant"):
            bits = int(base[-1])
            assert isinstance(layer.base, QuantizedLinear) and layer.base.bits == bits
            codes, scales = quantize(W, bits, 128)
            assert torch.equal(compressed, dequantize(codes, scales, 128))
            assert report.notes["weight_bits"] == bits
        elif base.startswith("prune"):
            pattern = "2:4" if base == "prune-2:4" else "unstructured"
            assert type(layer.base) is nn.Linear
            assert torch.equal(compressed, W * prune_mask(W, pattern, 0.5))
            assert report.notes["nonzeros"] == W.numel() // 2
        else:
            assert torch.equal(compressed, W)
        base_error = report.notes["base_rel_output_error"]
        assert report.rel_output_error <= base_error * (1 + 1e-6) + 1e-9
        if base != "none":
            assert report.rel_output_error < base_error
            # the error is the tail of the whitened spectrum of dW; where the Gram's
            # eigenvalues were floored (a larger Gram), that tail is an upper bound
            gram = stats.site(report.name).gram
            norm = float(torch.einsum("ij,jk,ik->", W.double(), gram, W.double()).sqrt())
            tail = math.sqrt(sum(s * s for s in report.spectrum[rank:]))
            assert report.rel_output_error <= tail / norm * (1 + 1e-5)
            if report.notes["gram_eigenvalues_floored"] == 0:
                assert report.rel_output_error == pytest.approx(tail / norm, rel=1e-5)
                exact += 1
            assert 0 < report.energy_kept < 1
        assert report.params_after == report.params_before + rank * (
            report.in_features + report.out_features)
        assert report.notes["compensation_params"] == layer.correction_parameters()
        assert report.notes["bytes_after"] == layer.num_bytes()
        correction += layer.correction_parameters()
    assert exact > 0 or base == "none"
    assert result.targeted_params_after - result.targeted_params_before == correction
    assert result.params_after - result.params_before == correction
    assert result.allocation["compensation_params"] == correction
    if base == "quant-int4":
        assert result.bytes_after < result.bytes_before


def test_rank_is_capped_per_matrix(tiny_llama, llama_stats):
    result = lowrank.compress(copy.deepcopy(tiny_llama), EoRA(rank=48), stats=llama_stats)
    ranks = {m.name.rsplit(".", 1)[-1]: m.rank for m in result.modules}
    assert ranks["k_proj"] == 32 and ranks["q_proj"] == 48  # k_proj is 32 x 64 (GQA)
    capped = [m for m in result.modules if "rank_capped_at" in m.notes]
    assert {m.name.rsplit(".", 1)[-1] for m in capped} == {"k_proj", "v_proj"}


def test_more_rank_less_error(tiny_bert, bert_stats):
    errors = {}
    for rank in (4, 16):
        result = lowrank.compress(copy.deepcopy(tiny_bert), EoRA(rank=rank), stats=bert_stats)
        errors[rank] = [m.rel_output_error for m in result.modules]
    assert all(e16 <= e4 for e4, e16 in zip(errors[4], errors[16], strict=True))


def test_full_rank_on_a_float32_model(tiny_bert, bert_stats):
    model = copy.deepcopy(tiny_bert)
    W = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
    lowrank.compress(model, EoRA(rank=1.0, base="quant-int4"), stats=bert_stats)
    for name, weight in W.items():
        rebuilt = model.get_submodule(name).dense_weight().detach()
        assert float((rebuilt - weight).norm() / weight.norm()) < 1e-5


@pytest.mark.parametrize("which", ["bert", "llama"])
@pytest.mark.parametrize("base", ["quant-int4", "prune-2:4"])
def test_save_load_is_bit_identical(which, base, request, calib_tokens, tmp_path):
    original = request.getfixturevalue(f"tiny_{which}")
    model = copy.deepcopy(original)
    lowrank.compress(model, EoRA(rank=8, base=base),
                     stats=request.getfixturevalue(f"{which}_stats"))
    expected = _forward(model, calib_tokens)
    ref = _forward(original, calib_tokens)
    assert float((expected - ref).norm() / ref.norm()) < 0.5
    lowrank.save(model, tmp_path / "eora")
    manifest = json.loads((tmp_path / "eora" / "lowrank.json").read_text())
    residual = [n for n, m in model.named_modules() if isinstance(m, ResidualLowRankLinear)]
    assert sorted(manifest["modules"]) == sorted(residual)  # bases described inside
    kind = "QuantizedLinear" if base.startswith("quant") else "Linear"
    assert {e["base"]["kind"] for e in manifest["modules"].values()} == {kind}
    assert manifest["method"]["method"] == "eora" and manifest["method"]["base"] == base
    loaded = lowrank.load(tmp_path / "eora")
    for name in residual:
        a, b = model.get_submodule(name), loaded.get_submodule(name)
        assert type(b) is ResidualLowRankLinear and type(b.base) is type(a.base)
        for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items(),
                                      strict=True):
            assert ka == kb and ta.dtype == tb.dtype and torch.equal(ta, tb)
    assert torch.equal(_forward(loaded, calib_tokens), expected)
    # dense export: every compensated layer as one nn.Linear with W_c + B A
    for name in residual:
        parent, _, child = name.rpartition(".")
        setattr(loaded.get_submodule(parent), child, loaded.get_submodule(name).to_dense_module())
    assert not any(isinstance(m, ResidualLowRankLinear) for m in loaded.modules())
    torch.testing.assert_close(_forward(loaded, calib_tokens), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ config, errors


def test_needs_data(tiny_bert):
    with pytest.raises(DataError, match="needs calibration data"):
        lowrank.compress(copy.deepcopy(tiny_bert), EoRA())


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "rank"), ({"rank": -3}, "rank"), ({"rank": 1.5}, "rank"),
    ({"rank": True}, "rank"), ({"rank": "8"}, "rank"),
    ({"base": "quant-int3"}, "base"), ({"floor": 0.0}, "floor"),
    ({"group_size": 0}, "group_size"), ({"sparsity": 1.0}, "sparsity"),
    ({"base": "prune-2:4", "sparsity": 0.6}, "sparsity"),
])
def test_bad_fields_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EoRA(**kwargs)


def test_two_four_base_needs_divisible_inputs():
    model = nn.ModuleDict({"a": nn.Linear(6, 4)})
    stats = CalibrationStats(sites={"a": SiteStats(torch.eye(6, dtype=torch.float64),
                                                   torch.ones(6, dtype=torch.float64), 6)},
                             module_site={"a": "a"})
    with pytest.raises(ConfigError, match="divisible by 4"):
        lowrank.compress(model, EoRA(rank=2, base="prune-2:4"), stats=stats)
    assert type(model["a"]) is nn.Linear


def test_registry_round_trip():
    config = EoRA(rank=16, base="prune-unstructured", sparsity=0.3, targets=["q_proj"])
    assert lowrank.METHODS.get("eora") is EoRA
    back = lowrank.CompressionConfig.from_dict(config.to_dict())
    assert back == config and type(back) is EoRA
    assert set(EoRA.help()) >= {"rank", "base", "floor", "group_size", "sparsity"}
    assert EoRA.statistics == frozenset({"gram"}) and config.needs == {"gram"}
