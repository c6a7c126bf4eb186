"""CoSpaDi and MoDeGPT: oracles on synthetic matrices and tiny BERT / Llama models."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import lowrank
from lowrank.compress.cospadi import CoSpaDi, dictionary_cost, dictionary_shape
from lowrank.compress.modegpt import MoDeGPT, allocate_blocks, find_blocks
from lowrank.errors import ConfigError, DataError
from lowrank.linalg import sqrt_gram
from lowrank.nn.indexed_linear import IndexedLinear
from lowrank.nn.sparse_dict import SparseDictLinear

SEQ_LEN = 32


@pytest.fixture(scope="module")
def bert_stats(tiny_bert, calib_tokens):
    return lowrank.calibrate(tiny_bert, CoSpaDi(), calib_tokens)


@pytest.fixture(scope="module")
def llama_stats(tiny_llama, calib_tokens):
    return lowrank.calibrate(tiny_llama, CoSpaDi(), calib_tokens)


def _out(model, tokens):
    batch = next(tokens.batches(8))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


# ------------------------------------------------------------------------------ CoSpaDi


def test_cospadi_dense_code_reproduces_whitened_optimum(rng):
    """s = k: the coefficients are dense and the fit equals (or beats) whitened rank-k SVD."""
    w = torch.randn(24, 40, generator=rng, dtype=torch.float64)
    x = torch.randn(40, 300, generator=rng, dtype=torch.float64) * torch.linspace(0.1, 3, 40)[:,
                                                                                               None]
    root = sqrt_gram(x @ x.T)
    ws = root.apply(w)
    sv = torch.linalg.svdvals(ws)
    for k in (4, 10):
        optimum = float(sv[k:].pow(2).sum().sqrt() / sv.pow(2).sum().sqrt())
        d, idx, val, err = CoSpaDi(ratio=1, iters=2).fit(w, root, k, k)
        layer = SparseDictLinear.from_parts(d, idx, val)
        approx = layer.dense_weight().double()
        out_err = float(((w - approx.detach()) @ x).norm() / (w @ x).norm())
        assert err <= optimum + 1e-9
        assert out_err == pytest.approx(err, abs=1e-8)  # whitened error = output error


def test_cospadi_budget_counts_indices():
    assert dictionary_cost(100, 50, 10, 5, 32) == 10 * 50 + 100 * 5 + math.ceil(500 * 8 / 32)
    assert dictionary_cost(100, 50, 300, 5, 32) == 300 * 50 + 500 + math.ceil(500 * 16 / 32)
    k, s = dictionary_shape(64, 64, 0.5, 2.0)
    assert s == math.ceil(k / 2) and dictionary_cost(64, 64, k, s) <= 0.5 * 64 * 64
    assert dictionary_cost(64, 64, k + 1, math.ceil((k + 1) / 2)) > 0.5 * 64 * 64


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_cospadi_through_compress(which, request, calib_tokens, tmp_path):
    original = request.getfixturevalue(f"tiny_{which}")
    stats = request.getfixturevalue(f"{which}_stats")
    model = copy.deepcopy(original)
    result = lowrank.compress(model, CoSpaDi(keep=0.6, iters=0), stats=stats)
    assert result.keep_actual <= 0.6 + 1e-9 and result.keep_actual > 0.55
    svd = lowrank.compress(copy.deepcopy(original), lowrank.SVDLLM(keep=0.6), stats=stats)
    for rep, ref in zip(result.modules, svd.modules, strict=True):
        layer = model.get_submodule(rep.name)
        assert isinstance(layer, SparseDictLinear)
        assert rep.params_after == layer.budget_parameters()
        assert rep.notes["whitened_rel_error"] == pytest.approx(rep.rel_output_error, abs=1e-3)
        assert math.isfinite(rep.rel_output_error) and math.isfinite(ref.rel_output_error)
    assert result.bytes_after < result.bytes_before
    out = _out(model, calib_tokens)
    lowrank.save(model, tmp_path / "m")
    assert torch.equal(_out(lowrank.load(tmp_path / "m"), calib_tokens), out)
    dense = lowrank.to_dense(copy.deepcopy(model))
    assert torch.allclose(_out(dense, calib_tokens), out, atol=1e-4, rtol=1e-4)


def test_sparse_dict_forward_is_its_dense_weight(rng):
    d = torch.randn(6, 10, generator=rng)
    idx = torch.tensor([[0, 5], [1, 2], [3, 4]])
    val = torch.randn(3, 2, generator=rng)
    layer = SparseDictLinear.from_parts(d, idx, val, torch.randn(3, generator=rng))
    c = torch.zeros(3, 6)
    c.scatter_(1, idx, val)
    x = torch.randn(4, 10, generator=rng)
    assert torch.allclose(layer(x), x @ (c @ d).T + layer.bias, atol=1e-6)
    assert layer.indices.dtype == torch.uint8 and layer.index_bits() == 8
    with pytest.raises(ValueError, match="indices"):
        SparseDictLinear.from_parts(d, idx + 6, val)


def test_cospadi_rejects_bad_fields():
    for kw in ({"keep": 0}, {"ratio": 0.5}, {"iters": -1}, {"max_atoms": 0}):
        with pytest.raises(ConfigError):
            CoSpaDi(**kw)
    with pytest.raises(DataError):
        lowrank.compress(torch.nn.Sequential(torch.nn.Linear(4, 4)), CoSpaDi())


# ------------------------------------------------------------------------------ MoDeGPT


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_modegpt_value_output_is_the_whitened_optimum(which, request):
    """Type III: per key/value head the stacked products W_O,h W_V,g reach Eckart-Young in the
    whitened norm (GQA: the heads sharing a value head are fitted jointly)."""
    original = request.getfixturevalue(f"tiny_{which}")
    stats = request.getfixturevalue(f"{which}_stats")
    model = copy.deepcopy(original)
    config = MoDeGPT(keep=0.5, block_budget="uniform")
    lowrank.compress(model, config, stats=stats)
    cfg = original.config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or \
        cfg.num_attention_heads
    hd, group = cfg.hidden_size // heads, heads // kv
    blocks = find_blocks([n for n, _ in original.named_modules()])
    for roles in blocks.values():
        if "v" not in roles:
            continue
        v0, o0 = original.get_submodule(roles["v"]), original.get_submodule(roles["o"])
        v1, o1 = model.get_submodule(roles["v"]), model.get_submodule(roles["o"])
        assert isinstance(v1, IndexedLinear) and isinstance(o1, IndexedLinear)
        root = stats.gram_root(roles["v"], config.floor)
        wv0, wo0 = v0.weight.double(), o0.weight.double()
        wv1, wo1 = v1.dense_weight().double(), o1.dense_weight().double()
        r = v1.weight.shape[0] // kv
        assert r == round(0.5 * hd)
        for g in range(kv):
            hs = range(g * group, (g + 1) * group)
            sl = slice(g * hd, (g + 1) * hd)
            before = torch.cat([wo0[:, h * hd:(h + 1) * hd] @ wv0[sl] for h in hs])
            after = torch.cat([wo1[:, h * hd:(h + 1) * hd] @ wv1[sl] for h in hs])
            sv = torch.linalg.svdvals(root.apply(before))
            optimum = float(sv[r:].detach().pow(2).sum().sqrt())
            achieved = float(root.apply(before - after).norm())
            assert achieved == pytest.approx(optimum, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_modegpt_through_compress(which, request, calib_tokens, tmp_path):
    original = request.getfixturevalue(f"tiny_{which}")
    model = copy.deepcopy(original)
    result = lowrank.compress(model, MoDeGPT(keep=0.7), data=calib_tokens)
    assert abs(result.keep_actual - 0.7) < 0.03
    keeps = result.allocation["block_keep"]
    assert sum(keeps.values()) / len(keeps) == pytest.approx(0.7, abs=1e-9)
    assert result.allocation["block_importance"] is not None
    out = _out(model, calib_tokens)
    assert torch.isfinite(out).all() and out.shape == _out(original, calib_tokens).shape
    lowrank.save(model, tmp_path / "m")
    assert torch.equal(_out(lowrank.load(tmp_path / "m"), calib_tokens), out)
    if which == "llama":  # rotary pairs (j, j + d/2) kept together in query and key
        hd = original.config.hidden_size // original.config.num_attention_heads
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"):
            rows = model.get_submodule(name).out_index.long()
            local = set((rows % hd).tolist())
            assert all((j + hd // 2) % hd in local for j in local)


def test_modegpt_mlp_refit_beats_selection_alone(tiny_bert, bert_stats):
    model = copy.deepcopy(tiny_bert)
    result = lowrank.compress(model, MoDeGPT(keep=0.5, block_budget="uniform"), stats=bert_stats)
    rep = next(r for r in result.modules if r.name.endswith("layer.0.output.dense"))
    down0 = tiny_bert.get_submodule(rep.name).weight.double()
    up1 = model.get_submodule(rep.name.replace("output.dense", "intermediate.dense"))
    up0 = tiny_bert.get_submodule(rep.name.replace("output.dense", "intermediate.dense"))
    # the kept neurons are rows of the original up projection
    rows = [int((up0.weight == row).all(1).nonzero()) for row in up1.weight]
    gram = bert_stats.site(rep.name).gram
    plain = torch.zeros_like(down0)
    plain[:, rows] = down0[:, rows]
    from lowrank.compress.base import output_error

    assert rep.rel_output_error < output_error(down0, plain, gram)


def test_modegpt_default_ridge_keeps_one_of_a_redundant_loud_pair():
    """Two nearly collinear loud neurons feed the down projection through large weights.
    With a tiny ridge every leverage is about ``1 - lam [C^-1]_jj``, lowest for exactly these
    two (each predicts the other), so both are dropped and their shared signal is lost; with
    the default ridge (the mean eigenvalue) the pair's direction keeps a high leverage, one
    of them is kept and the Nystrom refit rebuilds the other."""
    from lowrank.compress.base import output_error
    from lowrank.linalg.nystrom import nystrom_correct, ridge_leverage_scores, select_columns

    g = torch.Generator().manual_seed(5)
    n, d, k = 4000, 32, 24
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = torch.randn(n, generator=g, dtype=torch.float64)
    h[:, 0] = 20 * z + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
    h[:, 1] = 20 * z + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.randn(16, d, generator=g, dtype=torch.float64)
    w[:, :2] *= 10
    corr = h.T @ h

    def error(ridge):
        keep = select_columns(ridge_leverage_scores(corr, ridge), k)
        approx = torch.zeros_like(w)
        approx[:, keep] = nystrom_correct(corr, keep, w.T).T
        return keep, output_error(w, approx, corr)

    keep, err = error(MoDeGPT().ridge)
    assert bool(((keep == 0) | (keep == 1)).any()) and err < 0.3
    keep, tiny = error(1e-4)
    assert not bool(((keep == 0) | (keep == 1)).any()) and tiny > 0.9


def test_allocate_blocks_softmax_and_clip():
    keeps = allocate_blocks([0.1, 0.2, 0.3], 0.7, 0.1, 0.1)
    assert sum(keeps) / 3 == pytest.approx(0.7)
    assert keeps[0] < keeps[1] < keeps[2]  # more important (larger s) keeps more
    keeps = allocate_blocks([0.0, 5.0, 5.0], 0.5, 0.01, 0.2)  # first block capped at 0.2
    assert keeps[0] == pytest.approx(0.2) and sum(keeps) / 3 == pytest.approx(0.5)


def test_modegpt_needs_data_for_block_influence(tiny_bert, bert_stats):
    assert MoDeGPT(keep=0.6).needs == {"gram", "text"}
    assert MoDeGPT(keep=0.6, block_budget="uniform").needs == {"gram"}
    assert MoDeGPT(keep=0.6, importance=[0.1, 0.2]).needs == {"gram"}
    with pytest.raises(DataError, match="calibration text"):  # influence measures the blocks
        lowrank.compress(copy.deepcopy(tiny_bert), MoDeGPT(keep=0.6), stats=bert_stats)
    with pytest.raises(ConfigError, match="block_budget"):
        MoDeGPT(block_budget="energy")
    with pytest.raises(ConfigError, match="no field alloc"):  # alloc: registered allocators
        lowrank.CompressionConfig.from_dict({"method": "modegpt", "alloc": "uniform"})


def test_modegpt_version_1_manifests_still_load():
    old = {**MoDeGPT(keep=0.6).to_dict(), "version": 1}
    del old["block_budget"]
    for alloc, budget in (("block-influence", "influence"), ("uniform", "uniform")):
        config = lowrank.CompressionConfig.from_dict({**old, "alloc": alloc})
        assert config == MoDeGPT(keep=0.6, block_budget=budget)
