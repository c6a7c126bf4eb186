"""LR^2VQ: k-means oracles, the activation-aware weighting, the rate model and the byte budget
matched to SVD-LLM."""

from __future__ import annotations

import copy

import pytest
import torch

import lowrank
from lowrank.compress.lr2vq import LR2VQ, channel_importance, vq_fit
from lowrank.compress.lr2vq_rate import predicted_error, storage_bytes, subvector_spectrum
from lowrank.errors import ConfigError
from lowrank.linalg.kmeans import kmeans
from lowrank.nn.vq_linear import VQLinear

#: Lloyd-Max distortion of a unit Gaussian with 4 and 16 levels (Max, 1960).
LLOYD_MAX = {4: 0.1175, 16: 0.009497}


def _dequant(parts, out_f, in_f):
    codes, cent, basis, mean = parts
    return VQLinear.from_parts(codes, cent, basis, mean, out_f, in_f).dense_weight().detach()


def _diag_error(w, approx, importance):
    return float((((w - approx) ** 2) * importance).sum() / ((w ** 2) * importance).sum()) ** 0.5


def test_codebook_of_all_subvectors_is_lossless(rng):
    w = torch.randn(12, 16, generator=rng, dtype=torch.float64)
    imp = torch.rand(16, generator=rng, dtype=torch.float64) + 0.1
    for m, importance in ((4, None), (4, imp), (1, None), (1, imp), (2, imp)):
        n = w.numel() // m
        approx = _dequant(vq_fit(w, n, m, m, importance=importance), 12, 16)
        assert torch.allclose(approx, w, atol=1e-12), (m, importance is not None)
    # sub-vectors of rank 2: d = 2 suffices, weighted or not
    lowr = (torch.randn(48, 2, generator=rng, dtype=torch.float64)
            @ torch.randn(2, 4, generator=rng, dtype=torch.float64)).reshape(12, 16)
    for importance in (None, imp):
        approx = _dequant(vq_fit(lowr, 48, 4, 2, importance=importance), 12, 16)
        assert torch.allclose(approx, lowr, atol=1e-10)


def test_full_dimension_is_plain_product_quantization(rng):
    """d = m: the PCA map is a rotation, so the result is plain k-means of the sub-vectors."""
    w = torch.randn(32, 64, generator=rng, dtype=torch.float64)
    approx = _dequant(vq_fit(w, 32, 4, 4, seed=3), 32, 64)
    cent, labels = kmeans(w.reshape(-1, 4), 32, seed=3)
    plain = cent[labels].reshape(32, 64)
    assert float((w - approx).norm()) == pytest.approx(float((w - plain).norm()), rel=1e-9)


@pytest.mark.parametrize("levels", [4, 16])
def test_scalar_codes_reach_the_lloyd_max_quantizer(levels):
    """m = d = 1 on Gaussian weights: the exact 1-D Lloyd iteration from compander seeds
    reaches Max's optimal distortion (within the sampling error of 65536 weights)."""
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    approx = _dequant(vq_fit(w, levels, 1, 1, iters=50), 64, 1024)
    assert float((w - approx).pow(2).mean()) == pytest.approx(LLOYD_MAX[levels], rel=0.04)


@pytest.mark.parametrize("m", [1, 2])
def test_activation_aware_k_means_serves_the_loud_channels(m, rng):
    """Half the input channels carry large weights but almost no signal: the weighted
    k-means ignores them and cuts the output error (diagonal-Gram objective) by far."""
    w = torch.randn(32, 64, generator=rng, dtype=torch.float64)
    w[:, 32:] *= 10
    imp = torch.ones(64, dtype=torch.float64)
    imp[32:] = 1e-4
    plain = _dequant(vq_fit(w, 16, m, m), 32, 64)
    aware = _dequant(vq_fit(w, 16, m, m, importance=imp), 32, 64)
    assert _diag_error(w, aware, imp) < 0.5 * _diag_error(w, plain, imp)


def test_channel_importance_is_the_gram_diagonal():
    x = torch.randn(500, 8, dtype=torch.float64) * torch.arange(1, 9)
    g = x.T @ x
    imp = channel_importance(g)
    assert torch.allclose(imp, g.diagonal() / g.diagonal().mean())
    assert float(channel_importance(torch.zeros(3, 3)).min()) == 1.0


def test_rate_model_picks_the_full_dimension_for_isotropic_subvectors(rng):
    """Regression: the old default d = m/2 discarded half the variance of (nearly isotropic)
    weight sub-vectors, a relative error above 0.7 before any clustering."""
    w = torch.randn(64, 128, generator=rng, dtype=torch.float64)
    rate = LR2VQ().rate_for(w, bias=False, value_bytes=4)
    assert (rate.subvector, rate.codebook, rate.dim) == (4, 256, 4)
    chosen = float((w - _dequant(vq_fit(w, 256, 4, 4), 64, 128)).norm() / w.norm())
    halved = float((w - _dequant(vq_fit(w, 256, 4, 2), 64, 128)).norm() / w.norm())
    assert chosen < 0.45 < 0.65 < halved
    assert rate.predicted_rel_error == pytest.approx(chosen, rel=0.25)
    # rank-2 sub-vectors: the clustering dimension drops to their rank
    lowr = (torch.randn(2048, 2, generator=rng, dtype=torch.float64)
            @ torch.randn(2, 4, generator=rng, dtype=torch.float64)).reshape(64, 128)
    assert LR2VQ().rate_for(lowr, bias=False, value_bytes=4).dim == 2
    spectrum = subvector_spectrum(lowr, 4)
    assert predicted_error(spectrum, 2, 2048, 2048) < 1e-12  # k = N: lossless


@pytest.fixture(scope="module")
def bert_stats(tiny_bert, calib_tokens):
    return lowrank.calibrate(tiny_bert, lowrank.SVDLLM(), calib_tokens)


@pytest.mark.parametrize("keep", [0.8, 0.6, 0.4])
def test_bytes_fraction_matches_svdllm_storage(keep, tiny_bert, bert_stats):
    """bytes_fraction: the matrices store together (within 2%, never above) what uniform
    SVD-LLM stores for them at keep = bytes_fraction; each matrix its own share unless it took
    another's slack."""
    stats = bert_stats
    vq_model, svd_model = copy.deepcopy(tiny_bert), copy.deepcopy(tiny_bert)
    result = lowrank.compress(vq_model, LR2VQ(bytes_fraction=keep, iters=5), stats=stats)
    assert result.keep_target is None  # keep is a parameter fraction: LR2VQ keeps them all
    lowrank.compress(svd_model, lowrank.SVDLLM(keep=keep), stats=stats)
    vq_bytes = svd_bytes = 0
    for rep in result.modules:
        layer = vq_model.get_submodule(rep.name)
        assert isinstance(layer, VQLinear) and rep.notes["activation_aware"]
        assert layer.num_bytes() >= 0.9 * rep.notes["target_bytes"]
        vq_bytes += layer.num_bytes()
        svd_bytes += lowrank.nn.count_bytes(svd_model.get_submodule(rep.name))
        assert rep.rel_output_error < 0.05  # >= 12 bits per weight: nearly lossless
    target = result.allocation["target_bytes"]
    assert 0.98 * target <= vq_bytes <= target
    assert vq_bytes == pytest.approx(svd_bytes, rel=0.02)
    assert result.allocation["bytes_after"] == vq_bytes
    assert result.params_after == result.params_before


def test_bits_budget_fixed_rate_and_round_trip(tiny_bert, calib_tokens, tmp_path):
    lin = torch.nn.Linear(128, 64)
    model = torch.nn.Sequential(lin)
    result = lowrank.compress(model, LR2VQ(bits=3.0, iters=5))  # no data: plain k-means
    rep = result.modules[0]
    layer = model[0]
    assert not rep.notes["activation_aware"]
    # 3 bits per weight cannot be filled to 2% on 8192 weights (k = 2**b steps the code
    # bits); the budget is an upper bound that the best configuration stays under
    assert 2.5 < layer.bits_per_weight() <= 3.0
    assert layer.num_bytes() == storage_bytes(64, 128, layer.subvector, layer.dim,
                                              layer.codebook, 4) + 4 * 64
    # a fixed rate: codes of 6 bits per 4 weights, the codebook in 2 dimensions
    model = copy.deepcopy(tiny_bert)
    config = LR2VQ(codebook=64, subvector=4, dim=2, iters=5)
    result = lowrank.compress(model, config)
    rep = result.modules[0]
    layer = model.get_submodule(rep.name)
    n = rep.out_features * rep.in_features
    expected = (n // 4 * 6 + 32 * (64 * 2 + 4 * 2 + 4)) / n
    assert layer.bits_per_weight() == pytest.approx(expected)
    assert rep.notes["bits_per_weight"] == pytest.approx(expected)
    assert layer.num_bytes() < 0.15 * 4 * n  # vs 32 bits per dense weight
    batch = next(calib_tokens.batches(8))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    lowrank.save(model, tmp_path / "m")
    with torch.no_grad():
        again = lowrank.load(tmp_path / "m")(input_ids=batch.input_ids,
                                            attention_mask=batch.attention_mask)
    assert torch.equal(again.last_hidden_state, out.last_hidden_state)


def test_lr2vq_rejects_bad_fields():
    for kw in ({"codebook": 0}, {"subvector": 4, "dim": 5}, {"bytes_fraction": 2.0},
               {"bits": 0}, {"bytes_fraction": 0.5, "bits": 2.0}, {"dim": 9},
               {"activation_aware": 1}):
        with pytest.raises(ConfigError):
            LR2VQ(**kw)
    with pytest.raises(ConfigError, match="no field keep"):
        lowrank.CompressionConfig.from_dict({"method": "lr2vq", "keep": 0.8})


def test_version_1_keep_loads_as_bytes_fraction():
    """A manifest written when LR2VQ's byte budget was called keep loads with the same budget."""
    old = {**LR2VQ(bytes_fraction=0.6).to_dict(), "version": 1}
    old["keep"] = old.pop("bytes_fraction")
    assert lowrank.CompressionConfig.from_dict(old) == LR2VQ(bytes_fraction=0.6)
