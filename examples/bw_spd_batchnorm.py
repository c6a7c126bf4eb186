"""Bures-Wasserstein batch normalisation of SPD matrices (covariance descriptors of digits).

Wang et al., "Learning to Normalize on the SPD Manifold under Bures-Wasserstein Geometry"
(CVPR 2025). SPD matrix functions come from one eigendecomposition (``S^{1/2}``, ``S^{-1/2}``,
``log S``). The BW distance is ``d^2(A, B) = tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2}`` and
the BW barycenter is the fixed point
``M <- M^{-1/2} ((1/n) sum_i (M^{1/2} S_i M^{1/2})^{1/2})^2 M^{-1/2}``. The batch-norm layer
computes the batch barycenter ``M``, transports every sample to the identity along the BW
optimal map from ``M`` to ``I`` (the congruence ``M^{-1/2} S M^{-1/2}``), and re-biases by a
learnable SPD ``G`` (``G^{1/2} S G^{1/2}``, ``G = exp(sym(P))``; a Euclidean parameterisation in
place of the paper's Riemannian SGD). Running statistics move along the BW geodesic.

Asserts: the fixed point matches the closed form for commuting matrices, the BW distance is
finite and correct at condition number 1e9, normalisation pulls the batch barycenter towards
the identity (not exactly onto it: BW is not congruence-invariant), and an SPD network
(BiMap -> BWBN -> LogEig -> linear) on 8x8 covariance descriptors of the digits trains stably
to a useful accuracy.
Run: python examples/bw_spd_batchnorm.py [--fast]
"""

from __future__ import annotations

import argparse
import math
import os

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def sym_fn(s: torch.Tensor, fn, floor: float = 1e-10) -> torch.Tensor:
    """``U fn(max(lambda, floor)) U^T`` for symmetric ``s`` (batched)."""
    lam, u = torch.linalg.eigh((s + s.transpose(-1, -2)) / 2)
    return (u * fn(lam.clamp_min(floor)).unsqueeze(-2)) @ u.transpose(-1, -2)


def sqrtm(s):
    return sym_fn(s, torch.sqrt)


def isqrtm(s):
    return sym_fn(s, torch.rsqrt)


def bw_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ra = sqrtm(a)
    cross = sym_fn(ra @ b @ ra, torch.sqrt, floor=0.0)
    d2 = a.diagonal(0, -2, -1).sum(-1) + b.diagonal(0, -2, -1).sum(-1) \
        - 2 * cross.diagonal(0, -2, -1).sum(-1)
    return d2.clamp_min(0).sqrt()


def bw_barycenter(s: torch.Tensor, iters: int = 30) -> torch.Tensor:
    m = s.mean(0)
    for _ in range(iters):
        rm, irm = sqrtm(m), isqrtm(m)
        avg = sqrtm(rm @ s @ rm).mean(0)
        m = irm @ avg @ avg @ irm
    return (m + m.T) / 2


def bw_geodesic(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """``((1-t) I + t T) A ((1-t) I + t T)`` with ``T`` the BW optimal map from A to B."""
    ra, ira = sqrtm(a), isqrtm(a)
    tmap = ira @ sqrtm(ra @ b @ ra) @ ira
    g = (1 - t) * torch.eye(len(a), dtype=a.dtype) + t * tmap
    return g @ a @ g.T


class BWBatchNormSPD(torch.nn.Module):
    def __init__(self, dim: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.bias_log = torch.nn.Parameter(torch.zeros(dim, dim))
        self.register_buffer("running_mean", torch.eye(dim))
        self.momentum = momentum

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.training:
            m = bw_barycenter(s, iters=10)
            with torch.no_grad():
                self.running_mean.copy_(bw_geodesic(self.running_mean, m.detach(),
                                                    self.momentum))
        else:
            m = self.running_mean
        centred = isqrtm(m) @ s @ isqrtm(m)
        g_half = torch.linalg.matrix_exp((self.bias_log + self.bias_log.T) / 4)
        return g_half @ centred @ g_half


class SPDNet(torch.nn.Module):
    def __init__(self, dim: int = 8, out: int = 6, bn: bool = True) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linalg.qr(torch.randn(dim, out))[0].T.contiguous())
        self.bn = BWBatchNormSPD(out) if bn else torch.nn.Identity()
        self.fc = torch.nn.Linear(out * (out + 1) // 2, 10)
        self.iu = torch.triu_indices(out, out)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        z = self.w @ s @ self.w.T + 1e-4 * torch.eye(self.w.shape[0])      # BiMap
        z = self.bn(z)
        logz = sym_fn(z, torch.log, floor=1e-6)                             # LogEig
        return self.fc(logz[:, self.iu[0], self.iu[1]])


def covariance_descriptors(x) -> torch.Tensor:
    img = torch.tensor(x.reshape(-1, 8, 8) / 16.0, dtype=torch.float64)
    c = img - img.mean(1, keepdim=True)                  # the 8 rows are samples, columns features
    return c.transpose(1, 2) @ c / 7 + 1e-3 * torch.eye(8, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        default=os.environ.get("LOWRANK_FAST") == "1")
    args = parser.parse_args()
    torch.manual_seed(0)

    # oracle: commuting matrices have the BW mean (mean sqrt(lambda))^2
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    lam = torch.rand(7, 5, dtype=torch.float64) * 10 + 0.1
    s = q @ torch.diag_embed(lam) @ q.T
    closed = q @ torch.diag(lam.sqrt().mean(0) ** 2) @ q.T
    err_mean = float((bw_barycenter(s, 50) - closed).abs().max())
    d_ill = float(bw_distance(torch.diag(torch.tensor([1e-6, 1.0, 1e3], dtype=torch.float64)),
                              torch.diag(torch.tensor([2e-6, 2.0, 5e2], dtype=torch.float64))))
    d_ref = math.sqrt((1e-3 - math.sqrt(2e-6)) ** 2 + (1 - math.sqrt(2)) ** 2
                      + (math.sqrt(1e3) - math.sqrt(5e2)) ** 2)
    print(f"BW mean vs closed form: {err_mean:.1e}; BW distance at cond 1e9: {d_ill:.4f} "
          f"(exact {d_ref:.4f})")
    assert err_mean < 1e-10 and abs(d_ill - d_ref) < 1e-9

    x, y = load_digits(return_X_y=True)
    cov = covariance_descriptors(x)
    # normalisation pulls the batch barycenter to the identity
    batch = cov[:128]
    bn = BWBatchNormSPD(8).double()
    before = float(bw_distance(bw_barycenter(batch), torch.eye(8, dtype=torch.float64)))
    with torch.no_grad():
        after = float(bw_distance(bw_barycenter(bn(batch)), torch.eye(8, dtype=torch.float64)))
    print(f"BW distance of the batch barycenter to I: {before:.3f} -> {after:.3f}")
    # BW is not congruence-invariant, so the transported batch's barycenter is near, not at, I
    assert after < 0.5 * before

    n = 600 if args.fast else len(y)
    xtr, xte, ytr, yte = train_test_split(cov[:n].float(), torch.tensor(y[:n]), test_size=0.25,
                                          random_state=0)
    epochs = 6 if args.fast else 30
    results = {}
    for bn_on in (True, False):
        torch.manual_seed(0)
        net = SPDNet(bn=bn_on)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        losses = []
        for _ in range(epochs):
            perm = torch.randperm(len(xtr))
            for b in range(0, len(xtr), 64):
                idx = perm[b:b + 64]
                loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        net.eval()
        with torch.no_grad():
            acc = float((net(xte).argmax(1) == yte).float().mean())
        results[bn_on] = (acc, losses)
        assert all(math.isfinite(v) for v in losses)
    print(f"SPDNet on digit covariance descriptors ({epochs} epochs): test accuracy with BWBN "
          f"{results[True][0]:.3f}, without {results[False][0]:.3f}")
    assert results[True][0] > 0.6


if __name__ == "__main__":
    main()
