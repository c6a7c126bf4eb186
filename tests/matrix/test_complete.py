"""Matrix completion by robust AltMin (Gu et al. 2024): planted low-rank oracles.

Oracle: a planted rank-r matrix is recovered on the *unobserved* entries to 1e-6 relative error
from a 30% sample (the information-theoretic minimum is ~2r/n = 3%), whatever the input form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matrix_helpers import planted, rel

from lowrank.errors import ConfigError, DataError
from lowrank.matrix import Recovery, complete

M_, N_, R_ = 300, 240, 5


@pytest.fixture(scope="module")
def problem():
    M = planted(M_, N_, R_, seed=1)
    mask = np.random.default_rng(2).random((M_, N_)) < 0.3
    return M, mask


@pytest.mark.parametrize("cg_steps", [3, None])
def test_planted_recovery_to_1e6(problem, cg_steps):
    M, mask = problem
    res = complete(M, mask, R_, cg_steps=cg_steps, return_factors=True)
    assert isinstance(res, Recovery) and res.converged
    assert rel(res.to_dense(), M, ~mask) < 1e-6
    assert res.left.shape == (M_, R_) and res.right.shape == (N_, R_)
    # the inexact (CG) path tracks the exact one: the residual falls geometrically
    assert res.history[-1] < 1e-9 and res.n_iter <= 40


def test_sparse_and_nan_inputs_agree(problem):
    import scipy.sparse as sp

    M, mask = problem
    dense = complete(M, mask, R_)
    rows, cols = np.nonzero(mask)
    coo = sp.coo_matrix((M[rows, cols], (rows, cols)), shape=M.shape)
    for sparse in (coo, coo.tocsr()):
        out = complete(sparse, None, R_)
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, dense, atol=1e-8)
    nan = np.where(mask, M, np.nan)
    np.testing.assert_allclose(complete(nan, None, R_), dense, atol=1e-8)


def test_touches_only_observed_entries(problem):
    M, mask = problem
    garbage = np.where(mask, M, 1e6 * np.random.default_rng(3).standard_normal(M.shape))
    np.testing.assert_array_equal(complete(garbage, mask, R_), complete(M, mask, R_))


def test_torch_in_torch_out(problem):
    M, mask = problem
    Mt = torch.tensor(M, dtype=torch.float32)
    out = complete(Mt, torch.tensor(mask), R_)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.device == Mt.device
    assert rel(out.double().numpy(), M, ~mask) < 1e-6
    sparse = torch.sparse_coo_tensor(np.stack(np.nonzero(mask)), Mt[torch.tensor(mask)],
                                     size=M.shape)
    assert rel(complete(sparse, None, R_).double().numpy(), M, ~mask) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stays_on_device(problem):  # pragma: no cover - GPU only
    M, mask = problem
    out = complete(torch.tensor(M, device="cuda"), torch.tensor(mask, device="cuda"), R_)
    assert out.device.type == "cuda"
    assert rel(out.cpu().numpy(), M, ~mask) < 1e-6


def test_bad_inputs_raise_clear_errors(problem):
    M, mask = problem
    with pytest.raises(DataError, match="mask has shape"):
        complete(M, mask[:-1], R_)
    with pytest.raises(DataError, match="boolean"):
        complete(M, mask * 2.5, R_)
    with pytest.raises(DataError, match="no observed entries"):
        complete(M, np.zeros_like(mask), R_)
    with pytest.raises(ConfigError, match="exceeds the largest possible rank 240"):
        complete(M, mask, 241)
    with pytest.raises(ConfigError, match="positive int"):
        complete(M, mask, 0)
    bad = M.copy()
    bad[mask] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        complete(bad, mask, R_)
    with pytest.raises(DataError, match="2-D"):
        complete(M[0], None, 1)
    import scipy.sparse as sp

    with pytest.raises(DataError, match="mask=None"):
        complete(sp.csr_matrix(M), mask, R_)
