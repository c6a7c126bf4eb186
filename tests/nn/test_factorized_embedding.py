"""FactorizedEmbedding: exactness at full rank, Eckart–Young of the centred table at rank k,
frequency weighting, padding, accounting, dense export and manifest entries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank.nn import FactorizedEmbedding, count_parameters
from lowrank.nn.kinds import entry_of, is_serialisable, module_kind

V, D = 50, 12


@pytest.fixture
def table(rng) -> nn.Embedding:
    emb = nn.Embedding(V, D, padding_idx=1, dtype=torch.float64)
    with torch.no_grad():
        low = torch.randn(V, 4, generator=rng, dtype=torch.float64) @ torch.randn(
            4, D, generator=rng, dtype=torch.float64)
        emb.weight.copy_(3.0 + low + 0.3 * torch.randn(V, D, generator=rng, dtype=torch.float64))
    return emb


def test_full_rank_reproduces_the_table(table):
    fe = FactorizedEmbedding.from_embedding(table, rank=D)
    ids = torch.arange(V).reshape(5, 10)
    torch.testing.assert_close(fe(ids), table(ids), rtol=0, atol=1e-12)
    torch.testing.assert_close(fe.dense_weight(), table.weight, rtol=0, atol=1e-12)
    f32 = FactorizedEmbedding.from_embedding(table.float(), rank=D)
    torch.testing.assert_close(f32(ids), table.float()(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_rank_k_is_eckart_young_of_the_centred_table(table, rank):
    """With uniform weights the error is the tail of the singular values of ``E - 1 mu^T``."""
    fe = FactorizedEmbedding.from_embedding(table, rank=rank)
    E = table.weight.detach()
    centred = E - E.mean(0)
    s = torch.linalg.svdvals(centred)
    err = float((E - fe.dense_weight().detach()).norm())
    assert err == pytest.approx(float((s[rank:] ** 2).sum().sqrt()), rel=1e-9)
    torch.testing.assert_close(fe.bias.detach(), E.mean(0), rtol=1e-12, atol=1e-12)
    basis = fe.basis.detach()
    torch.testing.assert_close(basis.T @ basis, torch.eye(rank, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_weights_act_as_token_frequencies(table, rng):
    """Integer weights give the PCA of the table with each row repeated that many times."""
    counts = torch.randint(0, 5, (V,), generator=rng)
    rank = 3
    fe = FactorizedEmbedding.from_embedding(table, rank, weights=counts.double())
    E = table.weight.detach()
    rows = E.repeat_interleave(counts, dim=0)
    centred = rows - rows.mean(0)
    s = torch.linalg.svdvals(centred)
    approx = fe.dense_weight().detach().repeat_interleave(counts, dim=0)
    err = float((rows - approx).norm())
    assert err == pytest.approx(float((s[rank:] ** 2).sum().sqrt()), rel=1e-9)


def test_padding_row_gets_no_gradient_and_is_exported(table):
    fe = FactorizedEmbedding.from_embedding(table, rank=4)
    assert fe.padding_idx == 1
    fe(torch.tensor([[0, 1, 2, 1]])).sum().backward()
    assert fe.table.grad[1].abs().max() == 0
    assert fe.table.grad[0].abs().max() > 0 and fe.table.grad[2].abs().max() > 0
    dense = fe.to_dense_module()
    assert isinstance(dense, nn.Embedding) and dense.padding_idx == 1
    ids = torch.arange(V)
    torch.testing.assert_close(dense(ids), fe(ids), rtol=0, atol=1e-12)
    fresh = FactorizedEmbedding(V, D, 4, padding_idx=-1)
    assert fresh.padding_idx == V - 1 and fresh.table[V - 1].abs().max() == 0


def test_accounting_and_shapes(table):
    fe = FactorizedEmbedding.from_embedding(table, rank=5)
    assert fe.num_parameters() == count_parameters(fe) == 5 * (V + D) + D
    assert fe.flops_per_token() == 2 * 5 * D
    assert fe(torch.zeros(2, 3, dtype=torch.long)).shape == (2, 3, D)
    assert "rank=5" in repr(fe) and "padding_idx=1" in repr(fe)


def test_manifest_entry_round_trip(table):
    fe = FactorizedEmbedding.from_embedding(table.float(), rank=5)
    assert is_serialisable(fe) and module_kind("FactorizedEmbedding") is FactorizedEmbedding
    entry = entry_of(fe)
    assert entry == {"kind": "FactorizedEmbedding", "rank": 5, "num_embeddings": V,
                     "embedding_dim": D, "padding_idx": 1, "dtype": "float32"}
    empty = FactorizedEmbedding.from_manifest_entry(entry)
    empty.load_state_dict(fe.state_dict())
    ids = torch.arange(V)
    assert torch.equal(empty(ids), fe(ids))
    for bad in ({**entry, "rank": 0}, {**entry, "num_embeddings": "50"},
                {**entry, "padding_idx": "1"}, {**entry, "dtype": "int8"},
                {**entry, "rank": D + 1}):
        with pytest.raises(ValueError):
            FactorizedEmbedding.from_manifest_entry(bad)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="positive sizes"):
        FactorizedEmbedding(0, 4, 1)
    with pytest.raises(ValueError, match="rank"):
        FactorizedEmbedding(10, 4, 5)
    with pytest.raises(ValueError, match="padding_idx"):
        FactorizedEmbedding(10, 4, 2, padding_idx=10)
    with pytest.raises(ValueError, match="chain"):
        FactorizedEmbedding.from_factors(torch.zeros(10, 2), torch.zeros(4, 3), torch.zeros(4))
