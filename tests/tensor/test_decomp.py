"""Oracles for lowrank.tensor: planted exact low rank, agreement with tensorly, backend safety."""

import numpy as np
import pytest
import torch

tl = pytest.importorskip("tensorly")

from lowrank.errors import ConfigError, LowRankError  # noqa: E402
from lowrank.tensor import (  # noqa: E402
    CP,
    TT,
    CPTensor,
    TTMatrix,
    TTTensor,
    Tucker,
    TuckerTensor,
    complete_cp,
    complete_tucker,
    cp,
    relative_error,
    tt,
    tt_matrix,
    tucker,
)


def planted_tucker(shape=(20, 25, 15), ranks=(4, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    core = rng.standard_normal(ranks)
    factors = [np.linalg.qr(rng.standard_normal((s, r)))[0]
               for s, r in zip(shape, ranks, strict=True)]
    return TuckerTensor(core, factors).to_dense()


def planted_cp(shape=(20, 25, 15), rank=3, seed=0):
    rng = np.random.default_rng(seed)
    return CPTensor(np.ones(rank), [rng.standard_normal((s, rank)) for s in shape]).to_dense()


def test_tucker_recovers_planted_rank():
    x = planted_tucker()
    dec = tucker(x, (4, 5, 3))
    assert dec.rel_error < 1e-8
    assert relative_error(x, dec.to_dense()) < 1e-8
    assert dec.rank == (4, 5, 3) and dec.shape == x.shape
    for u in dec.factors:  # orthonormal factors
        np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-10)


def test_cp_recovers_planted_rank_svd_and_random_restarts():
    x = planted_cp()
    assert cp(x, 3, tol=1e-14, n_iter_max=500).rel_error < 1e-8
    dec = cp(x, 3, init="random", n_restarts=3, tol=1e-14, n_iter_max=500)
    assert dec.rel_error < 1e-8


def test_tt_recovers_planted_rank():
    rng = np.random.default_rng(1)
    cores = [rng.standard_normal((1, 6, 3)), rng.standard_normal((3, 7, 4)),
             rng.standard_normal((4, 5, 2)), rng.standard_normal((2, 4, 1))]
    x = TTTensor(cores).to_dense()
    dec = tt(x, [1, 3, 4, 2, 1])
    assert dec.rel_error < 1e-8 and dec.rank == (1, 3, 4, 2, 1)


def test_tt_matrix_roundtrip_and_matvec():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((12, 20))
    dec = tt_matrix(w, (3, 4), (4, 5), 100)
    np.testing.assert_allclose(dec.to_dense(), w, atol=1e-10)
    v = rng.standard_normal((20, 3))
    np.testing.assert_allclose(dec.matvec(v), w @ v, atol=1e-10)
    np.testing.assert_allclose(dec.matvec(v[:, 0]), w @ v[:, 0], atol=1e-10)


def test_wrappers_agree_with_tensorly_called_directly():
    rng = np.random.default_rng(3)
    x = planted_tucker() + 0.05 * rng.standard_normal((20, 25, 15))
    ours = tucker(x, (4, 5, 3), svd="truncated_svd")
    core, factors = tl.decomposition.tucker(x, [4, 5, 3], svd="truncated_svd")
    ref = tl.tucker_to_tensor((core, factors))
    np.testing.assert_allclose(ours.to_dense(), ref, atol=1e-10)
    ours_cp = cp(x, 3, init="svd", svd="truncated_svd", normalize=False)
    ref_cp = tl.cp_to_tensor(tl.decomposition.parafac(x, 3))
    np.testing.assert_allclose(ours_cp.to_dense(), ref_cp, atol=1e-8)
    ours_tt = tt(x, [1, 4, 3, 1], svd="truncated_svd")
    ref_tt = tl.tt_to_tensor(tl.decomposition.tensor_train(x, [1, 4, 3, 1]))
    np.testing.assert_allclose(ours_tt.to_dense(), ref_tt, atol=1e-10)
    # conversions both ways
    np.testing.assert_allclose(tl.tucker_to_tensor(ours.to_tensorly()), ours.to_dense())
    back = TuckerTensor.from_tensorly((core, factors))
    np.testing.assert_allclose(back.to_dense(), ref)
    np.testing.assert_allclose(tl.cp_to_tensor(ours_cp.to_tensorly()), ours_cp.to_dense())
    np.testing.assert_allclose(tl.tt_to_tensor(ours_tt.to_tensorly()), ours_tt.to_dense())
    m = tt_matrix(rng.standard_normal((12, 20)), (3, 4), (4, 5), 3)
    np.testing.assert_allclose(TTMatrix.from_tensorly(m.to_tensorly()).to_dense(), m.to_dense())


def test_global_backend_unchanged():
    tl.set_backend("numpy")
    try:
        with tl.backend.backend_context("pytorch"):  # a caller that uses torch globally
            before = tl.get_backend()
            tucker(planted_tucker(), 3)
            cp(planted_cp(), 3)
            tt(planted_tucker(), 3)
            assert tl.get_backend() == before == "pytorch"
        assert tl.get_backend() == "numpy"
    finally:
        tl.set_backend("numpy")


def test_torch_input_gives_torch_output():
    x = torch.as_tensor(planted_tucker())
    dec = tucker(x, (4, 5, 3))
    assert isinstance(dec.core, torch.Tensor) and isinstance(dec.to_dense(), torch.Tensor)
    assert relative_error(x, dec.to_dense()) < 1e-8


def test_masked_completion_recovers_from_30_percent():
    rng = np.random.default_rng(4)
    mask = rng.random((20, 25, 15)) < 0.3
    x = planted_tucker()
    dec = complete_tucker(x, mask, (4, 5, 3))
    assert relative_error(x, dec.to_dense()) < 1e-6
    xc = planted_cp()
    assert relative_error(xc, complete_cp(xc, mask, 3).to_dense()) < 1e-6
    assert dec.rel_error < 1e-8  # reported error is on the observed entries


def test_estimators_sklearn_style():
    x = planted_tucker()
    est = Tucker((4, 5, 3))
    rows = est.fit_transform(x)
    assert rows.shape == (20, 4) and est.rel_error_ < 1e-8
    np.testing.assert_allclose(est.transform(x), rows, atol=1e-8)
    np.testing.assert_allclose(est.inverse_transform(rows), x, atol=1e-8)
    xc = planted_cp()
    est = CP(3, tol=1e-14, n_iter_max=500).fit(xc)
    np.testing.assert_allclose(est.inverse_transform(est.transform(xc)), xc, atol=1e-6)
    est = TT([1, 4, 3, 1]).fit(x)
    np.testing.assert_allclose(est.inverse_transform(est.transform(x)), x, atol=1e-8)
    assert est.get_params()["rank"] == [1, 4, 3, 1]


def test_estimators_are_scikit_learn_estimators():
    from sklearn.base import BaseEstimator, clone

    est = CP(3, tol=1e-12, init="svd")
    assert isinstance(est, BaseEstimator) and "init='svd'" in repr(est)
    assert clone(est).get_params() == est.get_params()
    assert est.set_params(rank=2).rank == 2 and est.get_params()["rank"] == 2
    with pytest.raises(ValueError, match="Invalid parameter 'ranks'"):
        est.set_params(ranks=2)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="Tucker rank"):
        tucker(planted_tucker(), (4, 5))
    with pytest.raises(ConfigError, match="CP rank"):
        cp(planted_cp(), 0)
    with pytest.raises(LowRankError, match="NaN"):
        tucker(np.full((3, 3, 3), np.nan), 2)
    with pytest.raises(LowRankError, match="not fitted"):
        Tucker(2).transform(planted_tucker())
