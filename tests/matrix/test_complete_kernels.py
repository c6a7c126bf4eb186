"""The kernels behind ``complete``: CSR (CPU) and gather/scatter (other devices) agree.

On CPU the observed entries are held as a CSR matrix and applied through torch's sparse
kernels (time linear in |Omega|); elsewhere the same products run as gathers and
``index_add_``. Oracles: each kernel equals its dense definition (``S @ B`` and
``(Y F^T)[rows, cols]``) to 1e-12 on either path, and the whole solver gives the same
factors on both paths up to float rounding (1e-10 relative), for CG and exact row solves.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from matrix_helpers import planted, rel

from lowrank.matrix import complete
from lowrank.matrix._data import observe

# the package re-exports the function ``complete``, which shadows the module of that name
C = importlib.import_module("lowrank.matrix.complete")


@pytest.fixture(params=["csr", "gather"])
def path(request, monkeypatch):
    if request.param == "gather":
        monkeypatch.setattr(C, "_CSR_DEVICES", ())
    return request.param


def _entries(seed=0, t=37, s=23, nnz=300):
    """Unsorted entries of a ``t x s`` matrix, no duplicates, some empty rows."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(t * s, generator=g)[:nnz]
    target, other = flat // s, flat % s
    keep = target % 5 != 3  # rows 3, 8, ... observe nothing
    return target[keep], other[keep], (t, s)


def test_kernels_match_dense_definitions(path):
    target, other, (t, s) = _entries()
    E = C._Entries.sort(target, other, (t, s))
    assert (E.crow is None) == (path == "gather")
    g = torch.Generator().manual_seed(1)
    vals = torch.randn(target.numel(), dtype=torch.float64, generator=g)
    B = torch.randn(s, 4, dtype=torch.float64, generator=g)
    Y = torch.randn(t, 4, dtype=torch.float64, generator=g)
    dense = torch.zeros(t, s, dtype=torch.float64)
    dense[target, other] = vals
    torch.testing.assert_close(E.spmm(vals[E.order], B), dense @ B, rtol=0, atol=1e-12)
    # sorted order, and the sampled product read back at the caller's entries
    key = E.target * s + E.other
    assert torch.all(key[1:] > key[:-1])
    inverse = torch.empty_like(E.order)
    inverse[E.order] = torch.arange(E.order.numel())
    torch.testing.assert_close(E.sddmm(Y, B)[inverse], (Y @ B.T)[target, other],
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("cg_steps", [3, None])
def test_csr_and_gather_paths_agree(monkeypatch, cg_steps):
    M = planted(90, 70, 4, seed=5)
    mask = np.random.default_rng(6).random(M.shape) < 0.35
    mask[7] = False  # a row with no observations
    fast = complete(M, mask, 4, cg_steps=cg_steps, max_iter=8, tol=0.0, return_factors=True)
    monkeypatch.setattr(C, "_CSR_DEVICES", ())
    ref = complete(M, mask, 4, cg_steps=cg_steps, max_iter=8, tol=0.0, return_factors=True)
    assert fast.n_iter == ref.n_iter == 8
    np.testing.assert_allclose(fast.history, ref.history, rtol=1e-9, atol=1e-14)
    assert rel(fast.to_dense(), ref.to_dense()) < 1e-10
    assert rel(fast.left, ref.left) < 1e-10 and rel(fast.right, ref.right) < 1e-10


def test_sparse_input_sums_duplicates_and_keeps_explicit_zeros():
    rows = np.array([2, 0, 2, 2, 1])
    cols = np.array([1, 3, 0, 1, 2])
    vals = np.array([1.0, 2.0, 0.0, 3.0, -1.0])
    coo = sp.coo_matrix((vals, (rows, cols)), shape=(3, 4))
    for M in (coo, coo.tocsr(), coo.tocsc()):
        before = M.copy()
        obs = observe(M)
        assert obs.rows.tolist() == [0, 1, 2, 2] and obs.cols.tolist() == [3, 2, 0, 1]
        assert obs.vals.tolist() == [2.0, -1.0, 0.0, 4.0]
        assert (M != before).nnz == 0 and M.nnz == before.nnz  # the input is left alone
