"""Structured layers and models for scientific machine learning, built on the toolkit's linear
algebra (diagonalisation, Kronecker and low-rank covariances, subspaces).

* ``ssm``: S4D diagonal state-space layers with the PTD initialiser;
* ``kronecker_gp``: exact grid Gaussian processes with product (spectral-mixture) kernels;
* ``poisson_gp``: the GP-HM solver for high-frequency / multi-scale Poisson problems;
* ``molrg``: mixtures of low-rank Gaussians (subspace clustering, denoising);
* ``pivem``: PiVeM, dynamic network embedding with a Kronecker low-rank prior;
* ``rom``: a GIOROM-style reduced-order point-cloud operator;
* ``chidenn``: the C-HiDeNN-TD space-time separated solver.

Some functions import scipy when called (``pip install 'lowrank[science]'``).
"""

from .chidenn import CHiDeNNBasis1D, SeparatedSolution, TransientHeat2D, separated_solve
from .kronecker_gp import KroneckerGP, SpectralMixtureKernel1D, fit_log_weights, spectral_candidates
from .molrg import MoLRG, k_subspaces, principal_angles, recovery_rate, subspace_recovery_error
from .pivem import KroneckerLowRankGaussian, PiVeM, planted_dynamic_network, roc_auc
from .poisson_gp import finite_difference_poisson, learn_poisson_kernels, solve_poisson_gp
from .rom import (
    InteractionNetwork,
    LearnedInterpolation,
    ReducedOrderOperator,
    elastic_plate_trajectories,
    farthest_point_sample,
)
from .ssm import (
    DiagonalSSM,
    PTDResult,
    conjugate_half,
    hippo_diagonal_system,
    hippo_legs,
    ptd_init,
    s4d_eigenvalues,
    ssm_param_groups,
)

__all__ = [
    "DiagonalSSM", "PTDResult", "conjugate_half", "hippo_diagonal_system", "hippo_legs",
    "ptd_init", "s4d_eigenvalues", "ssm_param_groups", "KroneckerGP", "SpectralMixtureKernel1D",
    "finite_difference_poisson", "fit_log_weights", "learn_poisson_kernels", "solve_poisson_gp",
    "spectral_candidates", "MoLRG", "k_subspaces", "principal_angles", "recovery_rate",
    "subspace_recovery_error", "KroneckerLowRankGaussian", "PiVeM", "planted_dynamic_network",
    "roc_auc", "ReducedOrderOperator", "LearnedInterpolation", "InteractionNetwork",
    "elastic_plate_trajectories", "farthest_point_sample", "CHiDeNNBasis1D", "SeparatedSolution",
    "TransientHeat2D", "separated_solve",
]
