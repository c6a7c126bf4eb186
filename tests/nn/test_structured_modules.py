"""Tiled sparse kernel, IndexedLinear, Linformer attention and the LRT conversion."""

from __future__ import annotations

import copy

import pytest
import torch

from lowrank.compress.lrt import low_rank_transformer
from lowrank.nn import LowRankLinear
from lowrank.nn.indexed_linear import IndexedLinear
from lowrank.nn.linformer import LinformerSelfAttention, linformer_attention
from lowrank.nn.sparse_kernel import TiledSparseMatrix


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("tile,panel", [((64, 64), 4), ((16, 48), 1), ((7, 5), 3)])
def test_tiled_sparse_matmul_equals_dense(sparsity, tile, panel, rng):
    w = torch.randn(150, 130, generator=rng, dtype=torch.float64)
    w[torch.rand(w.shape, generator=rng) < sparsity] = 0
    t = TiledSparseMatrix.from_dense(w, tile)
    assert t.nnz == int((w != 0).sum())
    assert torch.equal(t.to_dense(), w)  # format round trip is exact
    x = torch.randn(2, 9, 130, generator=rng, dtype=torch.float64)
    assert torch.allclose(t.linear(x, panel=panel), x @ w.T, rtol=0, atol=1e-12)


def test_tiled_sparse_stores_less_than_dense_when_sparse(rng):
    w = torch.randn(256, 256, generator=rng)
    w[torch.rand(w.shape, generator=rng) < 0.8] = 0
    t = TiledSparseMatrix.from_dense(w)
    assert t.num_bytes() < 0.35 * w.numel() * 4  # 4 + 2 bytes per nonzero at 20% density
    with pytest.raises(ValueError):
        t.linear(torch.randn(3, 100))
    with pytest.raises(ValueError):
        TiledSparseMatrix.from_dense(w, (256, 256))  # positions would overflow int16


def test_indexed_linear_matches_its_dense_export(rng):
    w = torch.randn(3, 4, generator=rng)
    layer = IndexedLinear.from_parts(w, torch.randn(3, generator=rng), 6, 5,
                                     in_index=torch.tensor([0, 2, 3, 5]),
                                     out_index=torch.tensor([1, 2, 4]))
    x = torch.randn(7, 6, generator=rng)
    dense = layer.to_dense_module()
    assert torch.allclose(layer(x), dense(x), atol=1e-6)
    assert torch.equal(layer(x)[:, [0, 3]], torch.zeros(7, 2))
    with pytest.raises(ValueError, match="in_index"):
        IndexedLinear.from_parts(w, None, 6, 3)


def test_linformer_with_identity_projection_is_standard_attention(tiny_bert):
    attn = tiny_bert.encoder.layer[0].attention.self
    n = 20
    lin = LinformerSelfAttention.from_attention(attn, max_seq_len=n, proj_dim=n)
    with torch.no_grad():
        lin.E.copy_(torch.eye(n))
        lin.F.copy_(torch.eye(n))
    x = torch.randn(2, n, attn.key.in_features)
    with torch.no_grad():
        ref = attn(x)[0]
        out = lin(x)[0]
    assert torch.allclose(out, ref, atol=1e-5)


def test_linformer_inside_bert_runs_and_cost_is_linear(tiny_bert, calib_tokens):
    model = copy.deepcopy(tiny_bert)
    names = linformer_attention(model, proj_dim=8)
    assert len(names) == tiny_bert.config.num_hidden_layers
    batch = next(calib_tokens.batches(4))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert torch.isfinite(out.last_hidden_state).all()
    # padding cannot leak into real tokens: appending pad positions changes nothing
    ids, mask = batch.input_ids[:1, :10], batch.attention_mask[:1, :10]
    pad_ids = torch.cat([ids, torch.zeros(1, 6, dtype=ids.dtype)], 1)
    pad_mask = torch.cat([mask, torch.zeros(1, 6, dtype=mask.dtype)], 1)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=pad_ids, attention_mask=pad_mask).last_hidden_state[:, :10]
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.encoder.layer[0].attention.self(torch.randn(1, 65, 64))


def test_linformer_refuses_causal_attention(tiny_llama):
    with pytest.raises(ValueError):
        linformer_attention(copy.deepcopy(tiny_llama), proj_dim=8)


def test_lrt_full_rank_is_exact_and_low_rank_saves(tiny_bert, calib_tokens):
    batch = next(calib_tokens.batches(4))

    def run(m):
        with torch.no_grad():
            return m(input_ids=batch.input_ids,
                     attention_mask=batch.attention_mask).last_hidden_state

    full = copy.deepcopy(tiny_bert)
    ranks = low_rank_transformer(full, 1.0)
    assert all(isinstance(full.get_submodule(n), LowRankLinear) for n in ranks)
    assert torch.allclose(run(full), run(tiny_bert), atol=1e-4)
    small = copy.deepcopy(tiny_bert)
    ranks = low_rank_transformer(small, 8)
    assert set(ranks.values()) == {8}
    before = sum(p.numel() for p in tiny_bert.encoder.parameters())
    after = sum(p.numel() for p in small.encoder.parameters())
    assert after < 0.4 * before
    dense = copy.deepcopy(tiny_bert)
    assert set(low_rank_transformer(dense, 60).values()) == {None}  # no saving: left dense
    assert not any(isinstance(m, LowRankLinear) for m in dense.modules())
    with pytest.raises(ValueError):
        low_rank_transformer(dense, 0)
