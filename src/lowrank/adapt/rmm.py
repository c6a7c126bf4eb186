"""Reversible Model Merging for low-rank weights (RMM; "Towards Reversible Model Merging For
Low-rank Weights").

For one layer and T task updates ``delta_t`` (LoRA products ``B_t A_t`` or dense), find k
basis matrices ``M_j`` and coefficients ``C`` (k x T) minimising
``sum_t ||delta_t - sum_j C_jt M_j||_F^2``. Closed form, data-free:

    K_st = <delta_s, delta_t>_F = tr((B_s^T B_t)(A_t A_s^T))     (factored, no dense product)
    K = E diag(lambda) E^T,  M_j = sum_t E_tj delta_t / sqrt(lambda_j),  C = diag(sqrt lambda) E^T

keeping the top-k eigenpairs. ``M_j`` are orthonormal; task t is recovered as
``sum_j C_jt M_j`` with squared error ``sum_{j > k} lambda_j E_tj^2`` (total
``sum_{j>k} lambda_j``, the Eckart-Young optimum of the stacked, vectorised updates). With
k = T (or k = rank of K) recovery is exact, and each task's error is non-increasing in k.

Storage budget (``basis_rank=rho``): each ``M_j`` is replaced by its best rank-rho
approximation ``P_j Q_j^T`` (from the factored form: QR of the stacked ``B_t`` and ``A_t^T``,
then an SVD of the small core), stored as factors, and the coefficients are refitted by least
squares against the original updates (``C = G^+ b`` with ``G_ij = <M_i, M_j>``,
``b_jt = <M_j, delta_t>``). Storage is then ``k rho (out + in) + k T`` numbers per layer, so
RMM can be compared with a merged LoRA adapter at the same number of stored numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, LowRankError
from .api import adapter_layers

Delta = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def lora_factors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (B', A)}`` with ``B' A`` the update of each adapter (scaling folded into B).

    Works for our adapters with an exact LoRA form and for PEFT ``LoraLayer`` modules (the
    active adapter ``"default"``).
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in adapter_layers(model).items():
        e = layer.to_lora()
        out[name] = ((e.alpha / e.r) * e.B.detach().float(), e.A.detach().float())
    if out:
        return out
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and hasattr(m, "scaling") and isinstance(m.lora_A, nn.ModuleDict):
            key = "default" if "default" in m.lora_A else next(iter(m.lora_A))
            a = m.lora_A[key].weight.detach().float()
            b = m.lora_B[key].weight.detach().float() * m.scaling[key]
            out[name.removeprefix("base_model.model.")] = (b, a)
    if not out:
        raise LowRankError("the model has no LoRA-form adapter to take factors from")
    return out


def _gram(deltas: list[Delta]) -> torch.Tensor:
    t = len(deltas)
    k = torch.zeros(t, t, dtype=torch.float64)
    for s in range(t):
        for u in range(s, t):
            ds, du = deltas[s], deltas[u]
            if isinstance(ds, tuple) and isinstance(du, tuple):
                (bs, as_), (bu, au) = ds, du
                v = torch.trace((bs.double().t() @ bu.double()) @ (au.double() @ as_.double().t()))
            else:
                v = (_dense(ds) * _dense(du)).sum()
            k[s, u] = k[u, s] = v
    return k


def _dense(d: Delta) -> torch.Tensor:
    if isinstance(d, tuple):
        b, a = d
        return b.double() @ a.double()
    return d.double()


@dataclass
class ReversibleMerge:
    """Per layer: k orthonormal basis matrices and a k x T coefficient matrix.

    ``task_delta(t)`` recovers task t's updates; ``recovery_error[t]`` is its relative
    Frobenius error over all layers; ``storage`` counts the stored numbers (basis + coefficients).
    """

    basis: dict[str, torch.Tensor]          # name -> [k, out, in] (empty when factored)
    coefficients: dict[str, torch.Tensor]   # name -> [k, T]
    eigenvalues: dict[str, torch.Tensor]    # name -> [T], descending
    recovery_error: list[float] = field(default_factory=list)
    num_tasks: int = 0
    basis_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # name -> (P [k, out, rho], Q [k, in, rho]) with M_j = P_j Q_j^T (``basis_rank`` given)

    @property
    def storage(self) -> int:
        """Stored numbers: basis (dense or factors) plus coefficients."""
        dense = sum(b.numel() for b in self.basis.values())
        factored = sum(p.numel() + q.numel() for p, q in self.basis_factors.values())
        return dense + factored + sum(c.numel() for c in self.coefficients.values())

    def task_delta(self, task: int) -> dict[str, torch.Tensor]:
        """Recovered ``delta_t`` of every layer (float32)."""
        if not 0 <= task < self.num_tasks:
            raise ConfigError(f"task must be in [0, {self.num_tasks}), got {task!r}")
        out = {n: torch.einsum("k,koi->oi", self.coefficients[n][:, task], b)
               for n, b in self.basis.items()}
        for n, (p, q) in self.basis_factors.items():
            out[n] = torch.einsum("k,kor,kir->oi", self.coefficients[n][:, task], p, q)
        return out

    @torch.no_grad()
    def apply(self, model: nn.Module, task: int) -> None:
        """Set each layer's weight to ``W0 + recovered delta_t`` (``W0`` kept on first call)."""
        stash = model.__dict__.setdefault("_rmm_base_weights", {})
        named = dict(model.named_modules())
        for name, delta in self.task_delta(task).items():
            module = named[name]
            module = getattr(module, "base_layer", module)
            if name not in stash:
                stash[name] = module.weight.detach().clone()
            w0 = stash[name]
            module.weight.copy_((w0.float() + delta.to(w0.device)).to(w0.dtype))

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put back the base weights saved by :meth:`apply`."""
        stash = model.__dict__.pop("_rmm_base_weights", {})
        named = dict(model.named_modules())
        for name, w0 in stash.items():
            module = named[name]
            getattr(module, "base_layer", module).weight.copy_(w0)


def _truncate(mix: torch.Tensor, deltas: list[Delta], rho: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rho`` factors ``(P [k, out, rho], Q [k, in, rho])`` of ``M_j``, float64.

    ``M_j = sum_t mix[t, j] delta_t``; factored deltas never form a dense ``out x in`` matrix.
    """
    k = mix.shape[1]
    if all(isinstance(d, tuple) for d in deltas):
        bs = [d[0].double() for d in deltas]  # type: ignore[index]
        as_ = [d[1].double() for d in deltas]  # type: ignore[index]
        qb, rb = torch.linalg.qr(torch.cat(bs, dim=1))          # [out, Tr], [Tr, Tr]
        qa, ra = torch.linalg.qr(torch.cat(as_, dim=0).t())     # [in, Tr], [Tr, Tr]
        ranks = [b.shape[1] for b in bs]
        ps, qs = [], []
        for j in range(k):
            scale = torch.cat([torch.full((r,), float(mix[t, j]), dtype=torch.float64)
                               for t, r in enumerate(ranks)])
            u, s, vh = torch.linalg.svd((rb * scale) @ ra.t())
            ps.append(qb @ (u[:, :rho] * s[:rho]))
            qs.append(qa @ vh[:rho].t())
    else:
        dense = torch.stack([_dense(d) for d in deltas])
        ps, qs = [], []
        for j in range(k):
            u, s, vh = torch.linalg.svd(torch.einsum("t,toi->oi", mix[:, j], dense),
                                        full_matrices=False)
            ps.append(u[:, :rho] * s[:rho])
            qs.append(vh[:rho].t())
    width = min(rho, min(p.shape[1] for p in ps))
    pad = [(p[:, :width], q[:, :width]) for p, q in zip(ps, qs, strict=True)]
    p_all = torch.stack([p for p, _ in pad])
    q_all = torch.stack([q for _, q in pad])
    if width < rho:  # the update has lower rank than the budget: pad with zero columns
        p_all = torch.nn.functional.pad(p_all, (0, rho - width))
        q_all = torch.nn.functional.pad(q_all, (0, rho - width))
    return p_all, q_all


def _inner(p: torch.Tensor, q: torch.Tensor, d: Delta) -> torch.Tensor:
    """``<P Q^T, delta>_F`` without forming a dense product when ``delta`` is factored."""
    if isinstance(d, tuple):
        b, a = d
        return torch.trace((p.t() @ b.double()) @ (a.double() @ q))
    return ((p @ q.t()) * d.double()).sum()


def reversible_merge(adapters: Sequence[Mapping[str, Delta]], basis_size: int,
                     basis_rank: int | None = None) -> ReversibleMerge:
    """Merge T task adapters into ``basis_size`` basis matrices per layer (RMM closed form).

    ``adapters[t]`` maps module names to ``(B, A)`` (update ``B @ A``, e.g. from
    :func:`lora_factors`) or a dense update. All adapters must cover the same modules.
    ``basis_rank`` (optional) stores each basis matrix as its best rank-``basis_rank``
    factors and refits the coefficients by least squares (a storage budget; see module doc).
    """
    t = len(adapters)
    if t < 1:
        raise ConfigError("reversible_merge needs at least one adapter")
    if isinstance(basis_size, bool) or not isinstance(basis_size, int) or not (
            1 <= basis_size <= t):
        raise ConfigError(f"basis_size must be an int in [1, {t}] (T = {t} adapters), "
                          f"got {basis_size!r}")
    if basis_rank is not None and (isinstance(basis_rank, bool) or not isinstance(
            basis_rank, int) or basis_rank < 1):
        raise ConfigError(f"basis_rank must be a positive int or None, got {basis_rank!r}")
    names = list(adapters[0])
    for i, a in enumerate(adapters):
        if sorted(a) != sorted(names):
            raise ConfigError(f"adapter {i} covers other modules than adapter 0: expected the "
                              f"same {len(names)} module names")
    basis, coefs, eigs, factors = {}, {}, {}, {}
    err_sq = torch.zeros(t, dtype=torch.float64)
    norm_sq = torch.zeros(t, dtype=torch.float64)
    for name in names:
        deltas = [a[name] for a in adapters]
        gram = _gram(deltas)
        lam, vec = torch.linalg.eigh(gram)
        lam, vec = lam.flip(0).clamp_min(0.0), vec.flip(1)
        floor = lam[0] * 1e-12 if lam[0] > 0 else 0.0
        k = basis_size
        keep = lam[:k] > floor
        inv_root = torch.where(keep, lam[:k].clamp_min(1e-300).rsqrt(), torch.zeros(k,
                               dtype=torch.float64))
        mix = vec[:, :k] * inv_root  # [T, k]
        eigs[name] = lam.float()
        norm_sq += gram.diagonal()
        if basis_rank is not None:
            p, q = _truncate(mix, deltas, basis_rank)
            g = torch.einsum("aor,bos,bxs,axr->ab", p, p, q, q)  # <M_a, M_b>
            b = torch.stack([torch.stack([_inner(p[j], q[j], d) for d in deltas])
                             for j in range(k)])  # [k, T]
            c = torch.linalg.pinv(g, hermitian=True) @ b
            err_sq += (gram.diagonal() - 2 * (c * b).sum(0)
                       + torch.einsum("it,ij,jt->t", c, g, c)).clamp_min(0)
            factors[name] = (p.float(), q.float())
            coefs[name] = c.float()
            continue
        dense = torch.stack([_dense(d) for d in deltas])  # [T, out, in]
        basis[name] = torch.einsum("tk,toi->koi", mix, dense).float()
        coefs[name] = (lam[:k].sqrt()[:, None] * vec[:, :k].t() * keep[:, None]).float()
        tail = (lam[k:, None] * vec[:, k:].t() ** 2).sum(0) if k < t else torch.zeros(t)
        err_sq += tail.double()
    rel = (err_sq.clamp_min(0) / norm_sq.clamp_min(1e-300)).sqrt()
    return ReversibleMerge(basis=basis, coefficients=coefs, eigenvalues=eigs,
                           recovery_error=[float(x) for x in rel], num_tasks=t,
                           basis_factors=factors)
