"""PCD2Vec: Poisson correction distance on aligned sequences, RBF kernel PCA by Nystrom, classifier.

Ali, Murad, Patterson, "PCD2Vec: A Poisson Correction Distance-Based Approach for Viral Host
Classification" (arXiv 2304.06731). For aligned sequences the p-distance is the fraction of
differing sites and the Poisson correction distance is ``d = -ln(1 - p)``. The RBF Gram matrix
``K = exp(-gamma d^2)`` is approximated at rank m by Nystrom (landmark columns), and the
embedding is the top-q kernel PCA of that low-rank approximation; a logistic regression
classifies the embeddings.

Data here: scikit-learn's bundled digits, each image read as a 64-site sequence over a 4-letter
alphabet (pixel intensity quartiles), the setting of the spec's CPU check.

Asserts: the p-distance is a metric on the sample (PCD is symmetric and non-negative, but being
a convex transform of p it can break the triangle inequality, contrary to the paper's claim: the
script reports the fraction of violating triples), the Nystrom Gram approximation is
accurate, and the classifier on the embedding is far above chance.
Run: python examples/pcd2vec.py [--fast]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def pcd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Poisson correction distance between all rows of ``a`` and ``b`` (aligned sequences)."""
    p = (a[:, None, :] != b[None, :, :]).mean(-1)
    return -np.log(np.clip(1.0 - p, 1e-12, None))


def nystrom_kpca(d_land: np.ndarray, d_ll: np.ndarray, gamma: float, q: int):
    """Embedding map from distances to m landmarks: rank-m Nystrom features, centred, top-q PCA.

    ``K ~ C W^+ C^T`` with ``C = k(X, L)`` and ``W = k(L, L)``; features ``phi = C W^{-1/2}``
    reproduce that approximation as ``phi phi^T``; kernel PCA is PCA of the centred features.
    """
    w = torch.tensor(np.exp(-gamma * d_ll ** 2))
    evals, evecs = torch.linalg.eigh(w)
    keep = evals > 1e-10 * evals.max()
    w_isqrt = (evecs[:, keep] / evals[keep].sqrt()).numpy()
    feats = np.exp(-gamma * d_land ** 2) @ w_isqrt
    mean = feats.mean(0)
    _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
    proj = vt[:q].T
    return (lambda d: (np.exp(-gamma * d ** 2) @ w_isqrt - mean) @ proj), w_isqrt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        default=os.environ.get("LOWRANK_FAST") == "1")
    args = parser.parse_args()
    n_land, q = (150, 20) if args.fast else (500, 30)

    x, y = load_digits(return_X_y=True)
    seq = np.digitize(x, [4, 8, 12])                       # 4-letter alphabet over 64 sites
    if args.fast:
        seq, y = seq[:800], y[:800]
    tr, te, ytr, yte = train_test_split(seq, y, test_size=0.25, random_state=0)

    # metric check: triangle inequality on a random sample of triples
    rng = np.random.default_rng(0)
    s = tr[rng.choice(len(tr), 60, replace=False)]
    d = pcd(s, s)
    assert np.all(d >= 0) and np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    # the p-distance (Hamming fraction) is a metric; its convex transform -ln(1 - p) need not be
    # (p_ij = p_jk = 0.3, p_ik = 0.6 gives 0.71 < 0.92): count violating triples honestly
    p = 1 - np.exp(-d)
    assert (p[:, None, :] - (p[:, :, None] + p[None, :, :])).max() <= 1e-12
    viol = float(((d[:, None, :] - (d[:, :, None] + d[None, :, :])) > 1e-12).mean())

    land = tr[rng.choice(len(tr), n_land, replace=False)]
    d_tr = pcd(tr, land)
    gamma = 1.0 / np.median(d_tr[d_tr > 0]) ** 2
    embed, w_isqrt = nystrom_kpca(d_tr, pcd(land, land), gamma, q)

    # the Nystrom approximation of the training Gram matrix
    sub = tr[:300]
    k_exact = np.exp(-gamma * pcd(sub, sub) ** 2)
    f = np.exp(-gamma * pcd(sub, land) ** 2) @ w_isqrt
    gram_err = np.linalg.norm(k_exact - f @ f.T) / np.linalg.norm(k_exact)

    clf = LogisticRegression(max_iter=2000).fit(embed(d_tr), ytr)
    acc = clf.score(embed(pcd(te, land)), yte)
    print(f"PCD2Vec on digits: {n_land} Nystrom landmarks, {q} kernel-PCA dims, "
          f"Gram rel. error {gram_err:.3f}, test accuracy {acc:.3f}; PCD triangle-inequality "
          f"violations in {viol:.2%} of sampled triples")
    assert gram_err < 0.35, gram_err
    assert acc > 0.8, acc


if __name__ == "__main__":
    main()
