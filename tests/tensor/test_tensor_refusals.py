"""No silent nonsense in lowrank.tensor: complex and non-finite data, ranks, hyper-parameters.

Oracles: complex TT-matrices are exact at full rank and obey the TT-SVD bound
``||W - W_tt||^2 <= sum_k tail_k^2`` (Oseledets 2011, Thm 2.2) at a truncated rank; the CP
rank of an ``I_1 x ... x I_N`` tensor is at most ``prod(I) / max(I)``.
"""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("tensorly")

from lowrank.errors import ConfigError, DataError  # noqa: E402
from lowrank.tensor import (  # noqa: E402
    ChebyshevTucker,
    FunctionalTucker,
    Tucker,
    complete_cp,
    complete_tucker,
    cp,
    tt,
    tt_matrix,
    tucker,
)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((6, 5, 4))


@pytest.fixture(scope="module")
def mask(x):
    return np.random.default_rng(1).random(x.shape) < 0.7


def test_complex_tensors_are_refused(x, mask):
    c = x + 1j * x
    for data in (c, torch.tensor(c)):
        for fn in (lambda d: tucker(d, 2), lambda d: cp(d, 2), lambda d: tt(d, 2),
                   lambda d: complete_cp(d, mask, 2), lambda d: complete_tucker(d, mask, 2),
                   lambda d: Tucker(2).fit(d)):
            with pytest.raises(DataError, match="^x has the complex dtype complex128; expected "
                                                "real values"):
                fn(data)
    est = Tucker(2).fit(x)
    with pytest.raises(DataError, match="^X has the complex dtype"):  # before: complex rows
        est.transform(c)
    with pytest.raises(DataError, match="^f's values has the complex dtype"):
        ChebyshevTucker(6).fit(lambda p: p.sum(1) + 1j, 2)  # before: imaginary part dropped
    pts = np.random.default_rng(2).random((40, 2))
    with pytest.raises(DataError, match="^y has the complex dtype"):
        FunctionalTucker(2, n_epochs=2).fit(pts, pts.sum(1) + 1j)


def test_tt_matrix_supports_complex_matrices():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, 20)) + 1j * rng.standard_normal((12, 20))
    rows, cols = (2, 3, 2), (2, 2, 5)
    full = tt_matrix(w, rows, cols, 100)
    assert full.to_dense().dtype == np.complex128
    np.testing.assert_allclose(full.to_dense(), w, atol=1e-12)
    dec = tt_matrix(w, rows, cols, 3)
    # the interleaved tensor (m1 n1, m2 n2, m3 n3) and its two unfoldings' tails at rank 3
    t = w.reshape(*rows, *cols).transpose(0, 3, 1, 4, 2, 5).reshape(4, 6, 10)
    tails = [np.linalg.svd(t.reshape(4, 60), compute_uv=False)[3:],
             np.linalg.svd(t.reshape(24, 10), compute_uv=False)[3:]]
    bound = math.sqrt(sum(float((s ** 2).sum()) for s in tails)) / np.linalg.norm(w)
    err = np.linalg.norm(dec.to_dense() - w) / np.linalg.norm(w)
    assert err == pytest.approx(dec.rel_error, rel=1e-10)
    assert 0.1 < err <= bound * (1 + 1e-12)
    as_torch = tt_matrix(torch.tensor(w), rows, cols, 100).to_dense()
    assert as_torch.dtype == torch.complex128
    torch.testing.assert_close(as_torch, torch.tensor(w))


def test_non_finite_data_names_the_input_and_count(x, mask):
    bad = x.copy()
    bad[0, 0, :2] = np.nan
    with pytest.raises(DataError, match=r"^x holds 2 NaN or infinite entries \(of 120\); .*mask"):
        tucker(bad, 2)
    with pytest.raises(DataError, match=r"^w holds 2 NaN or infinite entries"):
        tt_matrix(bad.reshape(6, 20), (2, 3), (4, 5), 2)
    observed = mask.copy()
    observed[0, 0, :2] = True
    with pytest.raises(DataError, match="^x holds 2 NaN or infinite observed entries"):
        complete_cp(bad, observed, 2)
    unobserved = mask.copy()
    unobserved[0, 0, :2] = False
    assert complete_cp(bad, unobserved, 2, n_iter=5).rel_error is not None  # NaN = missing
    with pytest.raises(DataError, match=r"^X holds 1 NaN or infinite entries"):
        FunctionalTucker(2, n_epochs=2).fit(np.array([[0.0, np.inf], [1.0, 1.0]]), [1.0, 2.0])


def test_ranks_are_positive_ints_within_their_bounds(x, mask):
    with pytest.raises(ConfigError, match=r"^Tucker rank\[1\] must be an int in \[1, 5\], got 7"):
        tucker(x, [2, 7, 2])
    for bad in ([2, 2.5, 3], [True, 2, 3]):  # before: 2.5 -> 2 and True -> 1 silently
        with pytest.raises(ConfigError, match=r"^Tucker rank\[\d\] must be an int in"):
            tucker(x, bad)
    with pytest.raises(ConfigError, match="^Tucker rank must be an int or 3 ints"):
        complete_tucker(x, mask, [2, 2])
    assert tucker(x, 10**6).rank == (6, 5, 4)  # an int is clipped to every mode (documented)
    # TT: r_k at most the k-th unfolding's rank (6 and 4 here); before: clipped silently
    with pytest.raises(ConfigError, match=r"^TT rank\[1\] must be an int in \[1, 6\], got 100"):
        tt(x, [1, 100, 2, 1])
    with pytest.raises(ConfigError, match=r"^TT rank\[2\] must be an int in \[1, 4\], got 2.7"):
        tt(x, [1, 2, 2.7, 1])
    assert tt(x, 100).rank == (1, 6, 4, 1)
    # CP: above every mode size is fine, above prod / max = 20 is not (before: any rank was
    # tried; 10**5 asked numpy for 74 GiB)
    assert cp(x, 8, n_restarts=1, n_iter_max=5).rank == 8
    msg = r"^CP rank 21 exceeds 20, the largest CP rank of a tensor of shape \(6, 5, 4\)"
    with pytest.raises(ConfigError, match=msg):
        cp(x, 21)
    with pytest.raises(ConfigError, match=msg):
        complete_cp(x, mask, 21)
    with pytest.raises(ConfigError, match="^CP rank must be a positive int, got True"):
        cp(x, True)
    with pytest.raises(ConfigError, match=r"^rank\[0\] must be an int in \[1, 6\], got 9"):
        ChebyshevTucker(6, rank=[9, 2]).fit(lambda p: p.sum(1), 2)
    with pytest.raises(ConfigError, match=r"^order\[1\] must be a positive int, got 2.5"):
        ChebyshevTucker([6, 2.5]).fit(lambda p: p.sum(1), 2)
    pts = np.random.default_rng(2).random((40, 2))
    pts[:, 1] = np.round(pts[:, 1] * 4)  # 5 distinct coordinates in mode 1
    with pytest.raises(ConfigError, match=r"^rank\[1\] must be an int in \[1, 5\], got 6"):
        FunctionalTucker([2, 6], n_epochs=1).fit(pts, pts.sum(1))
    assert FunctionalTucker(60, n_epochs=1).fit(pts, pts.sum(1)).ranks_ == [40, 5]


@pytest.mark.parametrize("call, message", [
    (lambda x, m: tucker(x, 2, tol=math.nan), r"tol must be a finite number in \[0, inf\)"),
    (lambda x, m: tucker(x, 2, n_iter_max=-3), "n_iter_max must be a positive int, got -3"),
    (lambda x, m: cp(x, 2, l2_reg=math.inf), "l2_reg must be a finite number"),
    (lambda x, m: cp(x, 2, n_iter_max=0), "n_iter_max must be a positive int, got 0"),
    (lambda x, m: complete_cp(x, m, 2, tol=math.nan), "tol must be a finite number"),
    (lambda x, m: complete_tucker(x, m, 2, reg=math.nan), "reg must be a finite number"),
    (lambda x, m: complete_cp(x, m, 2, n_iter=5.0), "n_iter must be a positive int, got 5.0"),
    (lambda x, m: ChebyshevTucker(6, tol=math.nan).fit(lambda p: p.sum(1), 2),
     r"tol must be a finite number in \(0, inf\)"),
    (lambda x, m: ChebyshevTucker(6, domain=[(0, math.inf)]).fit(lambda p: p.sum(1), 1),
     "domain must be 1 finite"),
    (lambda x, m: FunctionalTucker(lengthscale=math.nan), None),
    (lambda x, m: FunctionalTucker(variance=math.inf), "variance must be a finite number"),
    (lambda x, m: FunctionalTucker(tol=math.nan), "tol must be a finite number"),
    (lambda x, m: FunctionalTucker(damping=math.nan), r"damping must be a finite number in \[0"),
])
def test_hyper_parameters_must_be_finite_and_in_range(x, mask, call, message):
    if message is None:  # checked at fit, per mode
        est = call(x, mask)
        pts = np.random.default_rng(2).random((20, 2))
        with pytest.raises(ConfigError, match=r"^lengthscale\[0\] must be a finite number"):
            est.fit(pts, pts.sum(1))
        return
    with pytest.raises(ConfigError, match=message):
        call(x, mask)
