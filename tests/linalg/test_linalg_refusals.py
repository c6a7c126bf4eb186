"""No silent nonsense in lowrank.linalg: complex and non-finite matrices, ranks, parameters.

Oracle for complex matrices: an exactly rank-5 complex matrix is reconstructed to round-off
by both SVDs, and their singular values agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowrank.errors import ConfigError, DataError
from lowrank.linalg import randomized_svd, split_singular_values, truncated_svd
from lowrank.linalg.nystrom import nystrom_correct, ridge_leverage_scores, select_columns
from lowrank.linalg.omp import ksvd, omp
from lowrank.linalg.output_pca import output_pca
from lowrank.linalg.whiten import sqrt_gram


def _complex_rank5(rng):
    a = torch.randn(40, 5, generator=rng, dtype=torch.complex128)
    return a @ torch.randn(5, 30, generator=rng, dtype=torch.complex128)


def test_complex_matrices_are_decomposed_correctly(rng):
    M = _complex_rank5(rng)
    exact = truncated_svd(M, 5)
    fast = randomized_svd(M, 5)  # before: transposes instead of adjoints, error 1.2
    for svd in (exact, fast):
        assert float((svd.to_dense() - M).norm() / M.norm()) < 1e-12
    torch.testing.assert_close(fast.S, exact.S, rtol=1e-12, atol=0)
    assert fast.error_bound < 1e-10 * float(M.norm())
    B, A = split_singular_values(fast, 5)
    torch.testing.assert_close(B @ A, M, rtol=0, atol=1e-12)


def test_non_finite_matrices_are_refused_with_a_count(rng):
    M = torch.randn(30, 20, generator=rng, dtype=torch.float64)
    M[0, :3] = math.nan
    M[1, 0] = math.inf
    for fn in (lambda m: truncated_svd(m, 2), lambda m: randomized_svd(m, 2)):
        # before: torch's "linalg.svd: The algorithm failed to converge"
        with pytest.raises(DataError, match=r"^matrix holds 4 NaN or infinite entries \(of 600\)"):
            fn(M)


def test_ranks_and_counts_are_ints_in_range(rng):
    M = torch.randn(30, 20, generator=rng, dtype=torch.float64)
    with pytest.raises(ConfigError, match="^rank 21 exceeds the largest possible rank 20 of a "
                                          "30x20 matrix"):
        randomized_svd(M, 21)
    assert randomized_svd(M, np.int64(3)).rank == 3  # before: refused numpy ints
    assert truncated_svd(M, 0).rank == 0  # the zero approximation (Eckart-Young at k = 0)
    with pytest.raises(ConfigError, match=r"^rank 4 exceeds the largest possible rank 3"):
        split_singular_values(truncated_svd(M, 3), 4)
    with pytest.raises(ConfigError, match=r"^k must be an int in \[1, 4\], got 2.5"):
        select_columns(torch.rand(4), 2.5)  # before: TypeError from slicing
    with pytest.raises(ConfigError, match=r"^k must be an int in \[0, 20\], got True"):
        output_pca(M.T @ M, True)
    with pytest.raises(ConfigError, match=r"^sparsity must be an int in \[1, 20\], got True"):
        omp(M, M[:, :3], True)  # before: True taken as 1


@pytest.mark.parametrize("call, message", [
    (lambda M: randomized_svd(M, 3, oversample=-5), "oversample must be a non-negative int"),
    (lambda M: randomized_svd(M, 3, power_iters=1.5), "power_iters must be a non-negative int"),
    (lambda M: randomized_svd(M, 3, error_probes=0), "error_probes must be a positive int"),
    (lambda M: ridge_leverage_scores(M.T @ M, math.nan), r"ridge must be a finite number in \("),
    (lambda M: nystrom_correct(M.T @ M, torch.arange(3), M.T, rcond=math.inf),
     r"rcond must be a finite number in \[0, inf\)"),
    (lambda M: sqrt_gram(M.T @ M, floor=math.nan), r"floor must be a finite number in \(0, 1\)"),
    (lambda M: ksvd(M, 4, 2, iters=1.5), "iters must be a non-negative int, got 1.5"),
    (lambda M: ksvd(M, 4.0, 2), "num_atoms must be a positive int, got 4.0"),
])
def test_parameters_must_be_finite_and_in_range(rng, call, message):
    M = torch.randn(30, 20, generator=rng, dtype=torch.float64)
    with pytest.raises(ConfigError, match=message):  # before: nan accepted or a TypeError
        call(M)
