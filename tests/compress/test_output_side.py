"""Output-side methods: LoRD (uncentred output PCA) and AFM (centred, bias-corrected), the
latter also on the input-embedding table (spec §10, §11(g), §14 row 4).

Oracles: the whitened optimum of SVD-LLM, eigenvalues of output moments computed directly
from explicit inputs, and error measurements on the calibration tokens themselves.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import lowrank
from lowrank import AFM, SVDLLM, LoRD
from lowrank.calib import CalibrationStats, SiteStats
from lowrank.compress import Calibration
from lowrank.compress.embedding import AffineBudgetItem, rank_for_keep
from lowrank.errors import ConfigError, DataError
from lowrank.io.checkpoint import MANIFEST
from lowrank.nn import FactorizedEmbedding, LowRankLinear
from lowrank.surgery import select_linears

SEQ_LEN = 32
KEEP = 0.6
M_OUT, N_IN, TOKENS = 24, 32, 400


# ------------------------------------------------------------------- one synthetic linear


def _inputs(rng: torch.Generator) -> torch.Tensor:
    """Spec §14 style inputs (n x N): loud channels, mixing, and a non-zero mean."""
    scale = torch.ones(N_IN, dtype=torch.float64)
    scale[:2], scale[2:6] = 30.0, 5.0
    X = torch.randn(N_IN, TOKENS, generator=rng, dtype=torch.float64) * scale[:, None]
    mix = torch.eye(N_IN, dtype=torch.float64) + 0.1 * torch.randn(
        N_IN, N_IN, generator=rng, dtype=torch.float64)
    return mix @ X + 4.0 * torch.randn(N_IN, 1, generator=rng, dtype=torch.float64)


def _stats(X: torch.Tensor, name: str = "lin") -> CalibrationStats:
    site = SiteStats(X @ X.T, X.abs().sum(1), X.shape[1], X.sum(1))
    return CalibrationStats(sites={name: site}, module_site={name: name})


@pytest.fixture
def single(rng):
    W = torch.randn(M_OUT, N_IN, generator=rng, dtype=torch.float64)
    b = 2.0 * torch.randn(M_OUT, generator=rng, dtype=torch.float64)
    X = _inputs(rng)
    return W, b, X, _stats(X)


def _model(W: torch.Tensor, b: torch.Tensor | None) -> nn.Module:
    lin = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(W)
        if b is not None:
            lin.bias.copy_(b)
    return nn.ModuleDict({"lin": lin})


def test_lord_equals_svdllm_whitened_optimum(single):
    W, _, X, stats = single
    lord = LoRD().decompose(W, "lin", stats)
    svdllm = SVDLLM(floor=1e-12).decompose(W, "lin", stats)
    torch.testing.assert_close(lord.spectrum, svdllm.spectrum, rtol=1e-9, atol=0)
    for k in (1, 6, 13):
        B1, A1 = lord.factors(k)
        B2, A2 = svdllm.factors(k)
        assert float((B1 @ A1 - B2 @ A2).abs().max()) <= 1e-10 * float(W.abs().max())
        assert lord.tail_energy(k) == pytest.approx(svdllm.tail_energy(k), rel=1e-8)


def test_lord_output_error_is_the_eigenvalue_tail(single):
    W, b, X, stats = single
    model = _model(W, b)
    outcome = LoRD(keep=0.5).apply(model, dict(model.items()), Calibration(stats))
    report = outcome.reports[0]
    layer = model["lin"]
    assert isinstance(layer, LowRankLinear) and report.rank == layer.rank
    lam = torch.linalg.eigvalsh((W @ X) @ (W @ X).T).flip(0).clamp_min(0)
    expected = math.sqrt(float(lam[report.rank:].sum() / lam.sum()))
    assert report.rel_output_error == pytest.approx(expected, rel=1e-8)
    W2 = layer.dense_weight().detach()
    assert float(((W - W2) @ X).norm() / (W @ X).norm()) == pytest.approx(expected, rel=1e-8)
    assert torch.equal(layer.bias.detach(), b)  # LoRD keeps the bias
    assert 1 - report.energy_kept == pytest.approx(expected ** 2, rel=1e-8)


def _afm_outputs(W, b, X, k):
    dec = AFM().decompose(W, "lin", _stats(X))
    B, A = dec.factors(k)
    return B @ A @ X + dec.bias(k, b)[:, None]


def test_afm_full_rank_reproduces_the_layer(single):
    W, b, X, _ = single
    Y = W @ X + b[:, None]
    assert float((_afm_outputs(W, b, X, M_OUT) - Y).abs().max()) <= 1e-10 * float(Y.abs().max())
    Y0 = W @ X  # without a bias the corrected bias is zero at full rank
    assert float((_afm_outputs(W, None, X, M_OUT) - Y0).abs().max()) <= 1e-10 * float(
        Y0.abs().max())


@pytest.mark.parametrize("k", [1, 4, 10, 20])
def test_afm_centred_error_is_the_covariance_tail(single, k):
    W, b, X, _ = single
    Y = W @ X + b[:, None]
    Yc = Y - Y.mean(1, keepdim=True)
    lam = torch.linalg.eigvalsh(Yc @ Yc.T).flip(0).clamp_min(0)
    err = float((Y - _afm_outputs(W, b, X, k)).norm() / Yc.norm())
    assert err == pytest.approx(math.sqrt(float(lam[k:].sum() / lam.sum())), rel=1e-8)


def test_afm_error_never_exceeds_lord(single):
    """Measured on the calibration inputs including the bias, at every rank."""
    W, b, X, stats = single
    Y = W @ X + b[:, None]
    lord = LoRD().decompose(W, "lin", stats)
    strictly = 0
    for k in range(1, M_OUT):
        B, A = lord.factors(k)
        err_lord = float((Y - (B @ A @ X + b[:, None])).norm())
        err_afm = float((Y - _afm_outputs(W, b, X, k)).norm())
        assert err_afm <= err_lord * (1 + 1e-10)
        strictly += err_afm < 0.99 * err_lord
    assert strictly >= M_OUT // 2  # the inputs have a mean, so centring matters


@pytest.mark.parametrize("with_bias", [True, False])
def test_afm_report_error_is_the_affine_error(single, with_bias):
    W, b, X, stats = single
    bias = b if with_bias else None
    model = _model(W, bias)
    outcome = AFM(keep=0.5).apply(model, dict(model.items()), Calibration(stats))
    report, layer = outcome.reports[0], model["lin"]
    assert layer.bias is not None  # a bias-less layer gains the mean correction ...
    assert report.params_after == layer.num_parameters()  # ... and the budget counts it
    Y = W @ X + (b[:, None] if with_bias else 0.0)
    with torch.no_grad():
        Y2 = layer(X.T).T
    assert report.rel_output_error == pytest.approx(float((Y - Y2).norm() / (W @ X).norm()),
                                                    rel=1e-8)


def test_affine_budget_item_costs():
    item = AffineBudgetItem("x", 8, 12, True, torch.ones(8), dense_bias=False)
    assert item.dense_cost() == 96 and item.cost(3) == 3 * 20 + 8
    assert item.cost(item.max_rank) < item.dense_cost() <= item.cost(item.max_rank + 1)
    assert rank_for_keep(item, 0.5) == 2 and rank_for_keep(item, 1.0) is None
    assert rank_for_keep(item, 0.5, align=4) == 4  # at least one aligned step
    biased = AffineBudgetItem("y", 8, 12, True, torch.ones(8), dense_bias=True)
    assert biased.dense_cost() == 104 and biased.max_rank == 4


# ------------------------------------------------------------------------ tiny models


def _forward(model: nn.Module, tokens) -> torch.Tensor:
    batch = next(tokens.batches(8))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture(scope="module")
def bert_stats(tiny_bert, tokenizer, calib_texts):
    return lowrank.calibrate(tiny_bert, AFM(), calib_texts, tokenizer=tokenizer,
                             seq_len=SEQ_LEN)


@pytest.fixture(scope="module")
def llama_stats(tiny_llama, tokenizer, calib_texts):
    return lowrank.calibrate(tiny_llama, AFM(), calib_texts, tokenizer=tokenizer,
                             seq_len=SEQ_LEN)


def test_token_counts_are_the_real_token_ids(bert_stats, calib_tokens, tiny_bert, tmp_path):
    counts = bert_stats.token_counts
    vocab = tiny_bert.get_input_embeddings().num_embeddings
    assert counts.dtype == torch.float64 and counts.shape == (vocab,)
    ids = calib_tokens.input_ids[calib_tokens.attention_mask.bool()]
    assert torch.equal(counts, torch.bincount(ids, minlength=vocab).double())
    assert float(counts.sum()) == calib_tokens.num_tokens
    bert_stats.save(tmp_path / "s.safetensors")
    back = CalibrationStats.load(tmp_path / "s.safetensors")
    assert torch.equal(back.token_counts, counts)
    merged = CalibrationStats.load(tmp_path / "s.safetensors").merge(back)
    assert torch.equal(merged.token_counts, 2 * counts)
    short = CalibrationStats.load(tmp_path / "s.safetensors")
    short.token_counts = short.token_counts[:100].clone()  # shards may see fewer ids
    assert torch.equal(short.merge(back).token_counts, counts + torch.nn.functional.pad(
        counts[:100], (0, vocab - 100)))


@pytest.mark.parametrize("which", ["bert", "llama"])
@pytest.mark.parametrize("config", [
    LoRD(keep=KEEP), AFM(keep=KEEP), AFM(keep=KEEP, embeddings=True),
    AFM(keep=KEEP, alloc="energy", embeddings=True),
], ids=["lord", "afm", "afm-emb", "afm-emb-energy"])
def test_budget_and_accounting_through_compress(which, config, request, calib_tokens):
    original = request.getfixturevalue(f"tiny_{which}")
    stats = request.getfixturevalue(f"{which}_stats")
    model = copy.deepcopy(original)
    result = lowrank.compress(model, config, stats=stats)
    assert abs(result.keep_actual - KEEP) / KEEP <= 0.005
    names = list(select_linears(original))
    embedding = "embeddings.word_embeddings" if which == "bert" else "model.embed_tokens"
    if getattr(config, "embeddings", False):
        names = [embedding, *names]
        assert isinstance(model.get_input_embeddings(), FactorizedEmbedding)
        assert model.get_submodule(embedding) is model.get_input_embeddings()
        assert result.allocation["embedding"]["name"] == embedding
    assert [m.name for m in result.modules] == names
    for report in result.modules:
        module = model.get_submodule(report.name)
        if report.rank is None:  # the energy allocator may leave a matrix dense
            assert config.alloc == "energy" and type(module) is nn.Linear
            assert report.params_after == sum(p.numel() for p in module.parameters())
            continue
        assert module.rank == report.rank
        assert report.params_after == module.num_parameters()
        assert math.isfinite(report.rel_output_error) and 0 <= report.rel_output_error < 1
    assert result.targeted_params_after == sum(m.params_after for m in result.modules)
    assert result.targeted_params_before == sum(m.params_before for m in result.modules)
    assert result.params_before - result.params_after == (
        result.targeted_params_before - result.targeted_params_after)
    assert result.params_after == sum(p.numel() for p in model.parameters())
    assert torch.isfinite(_forward(model, calib_tokens)).all()


def test_afm_error_at_most_lord_on_bert(tiny_bert, bert_stats):
    """Same ranks (uniform allocation, BERT linears have biases); per-module affine error."""
    lord = lowrank.compress(copy.deepcopy(tiny_bert), LoRD(keep=KEEP), stats=bert_stats)
    afm = lowrank.compress(copy.deepcopy(tiny_bert), AFM(keep=KEEP), stats=bert_stats)
    assert lord.ranks == afm.ranks
    errors = {m.name: m.rel_output_error for m in lord.modules}
    for report in afm.modules:
        assert report.rel_output_error <= errors[report.name] * (1 + 1e-6) + 1e-9


def test_embedding_report_error_is_measured_on_calibration_tokens(tiny_bert, bert_stats,
                                                                  calib_tokens):
    model = copy.deepcopy(tiny_bert)
    result = lowrank.compress(model, AFM(keep=1.0, embeddings=True, embedding_keep=0.5),
                              stats=bert_stats)
    report = result.modules[0]
    ids = calib_tokens.input_ids[calib_tokens.attention_mask.bool()]
    with torch.no_grad():
        ref = tiny_bert.get_input_embeddings()(ids).double()
        got = model.get_input_embeddings()(ids).double()
    assert report.rel_output_error == pytest.approx(float((ref - got).norm() / ref.norm()),
                                                    rel=1e-4)
    assert report.notes["calibration_tokens"] == calib_tokens.num_tokens
    # keep=1 leaves every linear dense; the table alone meets its own fraction
    assert all(m.rank is None for m in result.modules[1:])
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    table = report.params_before
    assert report.params_after <= 0.5 * table < report.params_after + 30522 + 64
    linears = result.targeted_params_before - table
    assert result.keep_target == pytest.approx((linears + 0.5 * table)
                                               / result.targeted_params_before)


def test_embedding_floor_one_is_plain_pca_of_the_table(tiny_bert, bert_stats):
    model = copy.deepcopy(tiny_bert)
    lowrank.compress(model, AFM(keep=1.0, embeddings=True, embedding_keep=0.5,
                                embedding_floor=1.0), stats=bert_stats)
    got = model.get_input_embeddings()
    plain = FactorizedEmbedding.from_embedding(tiny_bert.get_input_embeddings(), got.rank)
    torch.testing.assert_close(got.dense_weight(), plain.dense_weight(), rtol=0,
                               atol=1e-5)


def test_save_load_bit_identical_with_factorized_embedding(tiny_bert, bert_stats,
                                                           calib_tokens, tmp_path):
    model = copy.deepcopy(tiny_bert)
    lowrank.compress(model, AFM(keep=KEEP, embeddings=True), stats=bert_stats)
    lowrank.save(model, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    entry = manifest["modules"]["embeddings.word_embeddings"]
    assert entry["kind"] == "FactorizedEmbedding"
    assert entry["rank"] == model.get_input_embeddings().rank
    assert manifest["method"]["method"] == "afm" and manifest["method"]["embeddings"] is True
    loaded = lowrank.load(tmp_path / "out")
    assert isinstance(loaded.get_input_embeddings(), FactorizedEmbedding)
    for name, module in model.named_modules():
        if isinstance(module, (LowRankLinear, FactorizedEmbedding)):
            other = loaded.get_submodule(name)
            assert type(other) is type(module)
            for (k1, t1), (k2, t2) in zip(module.state_dict().items(),
                                          other.state_dict().items(), strict=True):
                assert k1 == k2 and torch.equal(t1, t2)
    assert torch.equal(_forward(loaded, calib_tokens), _forward(model, calib_tokens))


# ---------------------------------------------------------------------------- errors


def test_tied_embeddings_are_refused(tiny_llama, llama_stats):
    model = copy.deepcopy(tiny_llama)
    model.lm_head.weight = model.model.embed_tokens.weight
    with pytest.raises(ConfigError, match="ties"):
        lowrank.compress(model, AFM(embeddings=True), stats=llama_stats)


def test_missing_statistics_raise(tiny_bert, bert_stats, single):
    with pytest.raises(DataError, match="needs calibration data"):
        lowrank.compress(copy.deepcopy(tiny_bert), LoRD())
    without = copy.copy(bert_stats)
    without.token_counts = None
    with pytest.raises(DataError, match="token counts"):
        lowrank.compress(copy.deepcopy(tiny_bert), AFM(embeddings=True), stats=without)
    W, b, X, stats = single
    stats.sites["lin"].sum = None  # statistics from before the input sum existed
    with pytest.raises(DataError, match="input sum"):
        AFM().decompose(W, "lin", stats)
    with pytest.raises(DataError, match="calibration statistics"):
        LoRD().decompose(W, "lin", None)


@pytest.mark.parametrize("kwargs", [
    {"embedding_keep": 0.0}, {"embedding_keep": 1.5}, {"embedding_keep": True},
    {"embedding_floor": -0.1}, {"embedding_floor": 2.0}, {"embeddings": "yes"},
])
def test_bad_afm_fields_raise(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        AFM(**kwargs)


def test_config_round_trip_and_registry():
    for name, cls in {"lord": LoRD, "afm": AFM}.items():
        assert lowrank.METHODS.get(name) is cls and name in lowrank.METHODS.names()
        config = cls(keep=0.7, alloc="energy", targets="query", seed=2)
        back = lowrank.CompressionConfig.from_dict(config.to_dict())
        assert back == config and type(back) is cls
        assert {"keep", "alloc"} <= set(cls.help())
    afm = AFM(embeddings=True, embedding_keep=0.5, embedding_floor=0.2)
    assert lowrank.CompressionConfig.from_dict(json.loads(json.dumps(afm.to_dict()))) == afm
    assert all(AFM.help()[f] for f in ("embeddings", "embedding_keep", "embedding_floor"))
