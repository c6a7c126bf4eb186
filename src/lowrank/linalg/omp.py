"""Sparse coding and dictionary learning: batched OMP and K-SVD.

Orthogonal matching pursuit (Pati et al. 1993) in the batched form of Rubinstein, Zibulevsky and
Elad ("Efficient Implementation of the K-SVD Algorithm using Batch Orthogonal Matching Pursuit",
2008): every signal is coded at once, using only the dictionary Gram ``D^T D`` and the
correlations ``D^T Y``, with a Cholesky factor of the selected atoms' Gram grown by one row per
step. K-SVD (Aharon, Elad and Bruckstein, 2006) alternates that coding with a rank-1 update of
each atom and the coefficients that use it. These are the solvers of CoSpaDi
(arXiv 2509.22075), which learns the dictionary in the whitened space of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils.checks import check_int


@dataclass
class SparseCode:
    """Column-sparse coefficients: column ``j`` uses atoms ``support[j]`` with ``values[j]``."""

    support: torch.Tensor  # (m, s) long
    values: torch.Tensor  # (m, s)
    num_atoms: int

    def dense(self) -> torch.Tensor:
        """The coefficient matrix ``C`` (num_atoms x m)."""
        m = self.support.shape[0]
        out = torch.zeros(m, self.num_atoms, dtype=self.values.dtype, device=self.values.device)
        out.scatter_add_(1, self.support, self.values)
        return out.T


def omp(dictionary: torch.Tensor, signals: torch.Tensor, sparsity: int) -> SparseCode:
    """Code every column of ``signals`` (n x m) with ``sparsity`` atoms of ``dictionary`` (n x k).

    Greedy: each step picks the atom most correlated with the residual and re-solves least
    squares on all atoms picked so far (so the residual stays orthogonal to them). Atoms need
    not be normalised (correlations are taken with normalised atoms, values returned for the
    atoms as given). Zero atoms are never chosen. ``sparsity`` must be in ``[1, k]``.
    """
    if dictionary.ndim != 2 or signals.ndim != 2 or dictionary.shape[0] != signals.shape[0]:
        raise ValueError(f"omp needs a dictionary (n x k) and signals (n x m) with the same n, "
                         f"got {tuple(dictionary.shape)} and {tuple(signals.shape)}")
    k = dictionary.shape[1]
    check_int("sparsity", sparsity, 1, k)  # atoms per signal
    dtype = dictionary.dtype
    dev = dictionary.device
    norms = dictionary.norm(dim=0)
    alive = norms > 0
    unit = dictionary / torch.where(alive, norms, torch.ones_like(norms))
    gram = unit.T @ unit  # (k, k)
    corr = signals.T.to(dtype) @ unit  # (m, k): correlations of the residual with each atom
    m = corr.shape[0]
    chosen = torch.zeros(m, k, dtype=torch.bool, device=dev)
    chosen[:, ~alive] = True
    support = torch.zeros(m, sparsity, dtype=torch.long, device=dev)
    ginv = torch.zeros(m, sparsity, sparsity, dtype=dtype, device=dev)  # (D_S^T D_S)^-1
    gamma = torch.zeros(m, sparsity, dtype=dtype, device=dev)
    rows = torch.arange(m, device=dev)
    tiny = torch.finfo(dtype).eps * 16
    used = 0
    for t in range(min(sparsity, int(alive.sum()))):
        j = corr.abs().masked_fill(chosen, -1.0).argmax(dim=1)
        chosen[rows, j] = True
        # bordering: the inverse Gram of the support grows by one row and column
        b = gram[support[:, :t], j[:, None]]  # (m, t)
        u = torch.bmm(ginv[:, :t, :t], b.unsqueeze(-1)).squeeze(-1)  # (m, t)
        delta = (1.0 - (b * u).sum(1)).clamp_min(tiny)
        cj = corr[rows, j] / delta  # the new atom's coefficient
        ginv[:, :t, :t] += torch.einsum("mi,mj->mij", u, u) / delta[:, None, None]
        ginv[:, :t, t] = -u / delta[:, None]
        ginv[:, t, :t] = -u / delta[:, None]
        ginv[:, t, t] = 1.0 / delta
        support[:, t] = j
        step = torch.zeros(m, k, dtype=dtype, device=dev)
        step.scatter_(1, support[:, :t], -u * cj[:, None])
        step[rows, j] = cj
        gamma[:, :t] -= u * cj[:, None]
        gamma[:, t] = cj
        corr = corr - step @ gram
        used = t + 1
    gamma = gamma[:, :used]
    used = gamma.shape[1]
    values = torch.zeros(m, sparsity, dtype=dtype, device=dictionary.device)
    values[:, :used] = gamma / norms[support[:, :used]]
    if used < sparsity:  # fewer live atoms than the sparsity: pad with unused atoms, value 0
        free = (~chosen).float().argsort(dim=1, descending=True, stable=True)
        support[:, used:] = free[:, :sparsity - used]
    return SparseCode(support, values, k)


def refit_values(dictionary: torch.Tensor, signals: torch.Tensor, code: SparseCode) -> SparseCode:
    """Least-squares values on a fixed support: never a larger residual than ``code``'s."""
    atoms = dictionary.T[code.support]  # (m, s, n)
    gram = atoms @ atoms.transpose(1, 2)
    rhs = atoms @ signals.T.unsqueeze(-1)
    ridge = torch.finfo(dictionary.dtype).eps * gram.diagonal(dim1=1, dim2=2).amax(1)
    eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
    values = torch.linalg.solve(gram + ridge[:, None, None] * eye, rhs).squeeze(-1)
    old = (signals - dictionary @ code.dense()).norm(dim=0)
    new_code = SparseCode(code.support, values, code.num_atoms)
    new = (signals - dictionary @ new_code.dense()).norm(dim=0)
    keep_old = ~(new <= old)  # also replaces non-finite solves
    values = torch.where(keep_old[:, None], code.values, values)
    return SparseCode(code.support, values, code.num_atoms)


@dataclass
class DictionaryFit:
    """A learned dictionary ``D`` (n x k), its sparse code and the relative residual."""

    dictionary: torch.Tensor
    code: SparseCode
    rel_error: float
    history: list[float]


def ksvd(signals: torch.Tensor, num_atoms: int, sparsity: int, iters: int = 5,
         seed: int = 0) -> DictionaryFit:
    """K-SVD: ``signals (n x m) ~ D C`` with ``D`` (n x k) and ``sparsity`` nonzeros per column.

    The dictionary starts from the top left singular vectors of ``signals`` (random signals fill
    atoms past the rank). Each iteration codes all signals with :func:`omp`, then updates
    every atom and its coefficients by one alternating step towards the rank-1 SVD of the
    residual restricted to the signals that use it. The best iterate is returned after a
    least-squares refit of its values, so with ``sparsity == num_atoms <= rank`` the result is
    at least as good as the rank-``num_atoms`` truncated SVD.
    """
    n, m = signals.shape
    check_int("num_atoms", num_atoms)
    check_int("sparsity", sparsity, 1, num_atoms)
    check_int("iters", iters, 0)
    check_int("seed", seed, 0)
    y = signals
    total = float(y.norm()) or 1.0
    u, sv, _ = torch.linalg.svd(y, full_matrices=False)
    r = int((sv > sv.max() * torch.finfo(y.dtype).eps * max(n, m)).sum()) if sv.numel() else 0
    take = min(num_atoms, r)
    parts = [u[:, :take]]
    if take < num_atoms:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        extra = torch.randn(n, num_atoms - take, generator=gen, dtype=y.dtype).to(y.device)
        parts.append(extra / extra.norm(dim=0).clamp_min(1e-30))
    d = torch.cat(parts, dim=1)

    def error(dic: torch.Tensor, code: SparseCode) -> float:
        return float((y - dic @ code.dense()).norm()) / total

    code = omp(d, y, sparsity)
    best = (d.clone(), code, error(d, code))
    history = [best[2]]
    for _ in range(iters):
        c = code.dense()  # (k, m)
        resid = y - d @ c
        for a in range(num_atoms):
            users = c[a].nonzero().squeeze(1)
            if users.numel() == 0:  # dead atom: restart on the worst-coded signal
                worst = int(resid.norm(dim=0).argmax())
                v = resid[:, worst]
                if float(v.norm()) > 0:
                    d[:, a] = v / v.norm()
                continue
            e = resid[:, users] + torch.outer(d[:, a], c[a, users])
            coef = e.T @ d[:, a]
            atom = e @ coef
            norm = atom.norm()
            if float(norm) == 0:
                continue
            atom = atom / norm
            coef = e.T @ atom
            d[:, a] = atom
            c[a, users] = coef
            resid[:, users] = e - torch.outer(atom, coef)
        err = float(resid.norm()) / total
        updated = SparseCode(code.support, c.T.gather(1, code.support), num_atoms)
        if err < best[2]:
            best = (d.clone(), updated, err)
        history.append(err)
        code = omp(d, y, sparsity)
        err = error(d, code)
        if err < best[2]:
            best = (d.clone(), code, err)
        history.append(err)
    d, code, _ = best
    code = refit_values(d, y, code)
    return DictionaryFit(d, code, error(d, code), history)
