"""Structured layers and models on the toolkit's linear algebra (diagonalisation, Kronecker and
low-rank covariance, subspaces): S4D diagonal state spaces with the PTD initialiser, Kronecker
grid GPs and the GP-HM PDE solver, mixtures of low-rank Gaussians, PiVeM, and two reduced-order
models (a GIOROM-style point-cloud operator and the C-HiDeNN-TD space-time separated solver)."""

from .chidenn import CHiDeNNBasis1D, SeparatedSolution, TransientHeat2D, separated_solve
from .kronecker_gp import (
    KroneckerGP,
    SpectralMixtureKernel1D,
    finite_difference_poisson,
    fit_log_weights,
    learn_poisson_kernels,
    solve_poisson_gp,
    spectral_candidates,
)
from .molrg import MoLRG, k_subspaces, principal_angles, recovery_rate, subspace_recovery_error
from .pivem import KroneckerLowRankGaussian, PiVeM, planted_dynamic_network, roc_auc
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
