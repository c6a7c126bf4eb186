"""Equiangular Basis Vectors: a fixed near-orthogonal class-embedding head instead of an FC layer.

Shen et al., "Equiangular Basis Vectors" (CVPR 2023). Generate ``N`` unit vectors in ``R^d``
once, by projected gradient descent on ``sum_{i != j} relu(|<e_i, e_j>| - alpha)`` with row
renormalisation each step, until ``max |cos| <= alpha``. Training then uses the frozen logits
``tau * cos(f(x), e_c)`` with cross-entropy; prediction is the nearest basis vector. For
``N <= d`` an exact orthonormal frame exists (QR), the reference the generator must approach.

Data: scikit-learn's bundled digits, an MLP with an EBV head against the same MLP with a
trainable FC head. Asserts the generated basis meets its angle threshold (also for N > d, where
no orthonormal frame exists) and that the EBV head reaches the FC head's accuracy (within 2%).
Run: python examples/equiangular_basis.py [--fast]
"""

from __future__ import annotations

import argparse
import os

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def equiangular_basis(n: int, d: int, alpha: float, steps: int = 20000, lr: float = 3e-3,
                      seed: int = 42) -> torch.Tensor:
    """``(n, d)`` unit rows with ``max_{i != j} |cos| <= alpha`` (if reachable in ``steps``)."""
    gen = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    e.requires_grad_(True)
    opt = torch.optim.SGD([e], lr=lr)
    mask = ~torch.eye(n, dtype=torch.bool)
    for _ in range(steps):
        cos = (e @ e.T)[mask].abs()
        if cos.max() <= alpha:
            break
        loss = torch.relu(cos - alpha).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            e /= e.norm(dim=1, keepdim=True)
    return e.detach()


def max_cos(e: torch.Tensor) -> float:
    g = (e @ e.T).abs()
    g.fill_diagonal_(0)
    return float(g.max())


class Net(torch.nn.Module):
    def __init__(self, d: int, head: torch.Tensor | None, tau: float = 16.0) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                        torch.nn.Linear(128, d))
        self.fc = torch.nn.Linear(d, 10) if head is None else None
        self.register_buffer("ebv", head.float() if head is not None else torch.zeros(0))
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        if self.fc is not None:
            return self.fc(torch.relu(f))
        return self.tau * torch.nn.functional.normalize(f, dim=1) @ self.ebv.T


def train(model: Net, xtr, ytr, xte, yte, epochs: int) -> float:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for b in range(0, len(xtr), 64):
            idx = perm[b:b + 64]
            loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((model(xte).argmax(1) == yte).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        default=os.environ.get("LOWRANK_FAST") == "1")
    args = parser.parse_args()
    epochs = 8 if args.fast else 30

    # the generator: N <= d approaches an orthonormal frame; N > d meets a looser threshold
    e10 = equiangular_basis(10, 64, alpha=0.01)
    q, _ = torch.linalg.qr(torch.randn(64, 10, dtype=torch.float64))
    assert max_cos(e10) <= 0.01 and max_cos(q.T) < 1e-10
    e100 = equiangular_basis(100, 32, alpha=0.2, steps=3000 if args.fast else 20000)
    print(f"EBV: 10 in R^64 max|cos| {max_cos(e10):.4f} (QR frame {max_cos(q.T):.1e}); "
          f"100 in R^32 max|cos| {max_cos(e100):.3f}")
    assert max_cos(e100) <= 0.2 + 1e-9

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    xtr, xte, ytr, yte = train_test_split(x, torch.tensor(y), test_size=0.25, random_state=0)
    torch.manual_seed(0)
    acc_fc = train(Net(64, None), xtr, ytr, xte, yte, epochs)
    torch.manual_seed(0)
    acc_ebv = train(Net(64, e10), xtr, ytr, xte, yte, epochs)
    n_fc = 64 * 10 + 10
    print(f"digits test accuracy: FC head {acc_fc:.3f} ({n_fc} trainable head parameters), "
          f"EBV head {acc_ebv:.3f} (0 trainable head parameters)")
    assert acc_ebv >= acc_fc - 0.02, (acc_ebv, acc_fc)


if __name__ == "__main__":
    main()
