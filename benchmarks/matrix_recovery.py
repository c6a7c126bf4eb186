"""Benchmark: low-rank matrix recovery (completion, robust recovery, sensing), fixed seeds.

Usage:  python benchmarks/matrix_recovery.py [--threads 2] [--skip-large] [--iterative-imputer]
                                            [--parts scaling ...] [--repeats 3] [--out PATH]
A full run writes benchmarks/results/matrix_recovery.json and .md and prints the markdown
table; ``--parts`` runs only the named sections (completion, large, scaling, robust, sensing,
digits) and just prints them unless ``--out`` is given.

Sections:
  1. completion 500x500, rank 10, 30% observed: AltMin (CG and exact row solves) to 1e-6 vs
     SoftImpute / IterativeSVD with fancyimpute's defaults (and scikit-learn's IterativeImputer
     with --iterative-imputer, ~1 min); errors are relative, on the unobserved entries;
  2. completion 10^4 x 10^4, rank 10, 1% observed (10^6 entries, sparse COO input);
  3. time of 5 AltMin sweeps vs |Omega| (4000 x 4000, rank 10, 0.5% to 8% observed; best of
     --repeats runs, wall and CPU time, per sweep and per entry), least-squares line (intercept,
     seconds per 10^6 entries, R^2) and log-log slope;
  4. robust recovery: spec B2 sensing setting (d=20, r=2, fitted rank 6, 1200 symmetric
     Gaussian measurements, one-sided outliers of 100 ||X*||) for 10-40% outliers, l1
     sub-gradient vs least squares; and a 200x200 rank-5 matrix with random-sign outliers of
     size 100: sub-gradient (fitted rank 10), +refit, robust PCA, plain rank-5 SVD;
  5. sensing (spec B3 setting): iterations to 1e-6 vs initialisation scale, with and without
     the one-step fix;
  6. real data: inpainting scikit-learn's bundled digits (1797 x 64) with 50% pixels missing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

from lowrank.matrix import complete, iterative_svd, robust, robust_pca, sense, soft_impute
from lowrank.matrix._ops import DenseOperator
from lowrank.matrix.sense import factored_gd


def rel(a, b, where=None) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if where is not None:
        a, b = a[where], b[where]
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def completion_500(args) -> list[dict]:
    rng = np.random.default_rng(0)
    m = n = 500
    r = 10
    M = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    mask = rng.random((m, n)) < 0.3
    miss = ~mask
    rows = []
    complete(M[:50, :50], mask[:50, :50], 2)  # warm up torch
    for name, kw in (("AltMin, 3 warm-started CG steps/row (ours)", {"cg_steps": 3}),
                     ("AltMin, exact row solves (ours)", {"cg_steps": None})):
        out, dt = timed(lambda kw=kw: complete(M, mask, r, **kw))
        rows.append({"method": name, "time_s": dt, "error": rel(out, M, miss),
                     "time_to_1e-2_s": "n/a"})
    # SoftImpute: record when its error on the missing entries first drops below 1e-2
    # (error evaluation time excluded)
    for name, fn in (
        ("SoftImpute, fancyimpute defaults", lambda cb: soft_impute(M, mask, callback=cb)),
        ("SoftImpute, max_rank=10", lambda cb: soft_impute(M, mask, max_rank=10, callback=cb)),
        ("IterativeSVD, fancyimpute defaults (rank 10)",
         lambda cb: iterative_svd(M, mask, rank=10, callback=cb)),
    ):
        state = {"t0": time.perf_counter(), "paused": 0.0, "hit": None}

        def cb(it, X, state=state):
            p0 = time.perf_counter()
            if state["hit"] is None and rel(X.numpy(), M, miss) < 1e-2:
                state["hit"] = p0 - state["t0"] - state["paused"]
            state["paused"] += time.perf_counter() - p0

        out = fn(cb)
        dt = time.perf_counter() - state["t0"] - state["paused"]
        rows.append({"method": name, "time_s": dt, "error": rel(out, M, miss),
                     "time_to_1e-2_s": state["hit"]})
    if args.iterative_imputer:
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        X = np.where(mask, M, np.nan)
        imp = IterativeImputer(max_iter=5, n_nearest_features=50, random_state=0)
        out, dt = timed(lambda: imp.fit_transform(X))
        rows.append({"method": "sklearn IterativeImputer(max_iter=5, n_nearest_features=50)",
                     "time_s": dt, "error": rel(out, M, miss), "time_to_1e-2_s": None})
    return rows


def sampled_problem(n: int, r: int, p: float, seed: int):
    """Observed entries of ``U V^T`` (n x n, rank r) at rate ``p``, without the dense matrix."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, r))
    V = rng.standard_normal((n, r))
    nnz = int(p * n * n)
    flat = rng.permutation(np.unique(rng.integers(0, n * n, size=int(nnz * 1.02))))[:nnz]
    rows, cols = flat // n, flat % n
    vals = np.einsum("ij,ij->i", U[rows], V[cols])
    return sp.coo_matrix((vals, (rows, cols)), shape=(n, n)), U, V, rng


def heldout_error(res, U, V, rng, n, k=100_000) -> float:
    i, j = rng.integers(0, n, k), rng.integers(0, n, k)
    truth = np.einsum("ij,ij->i", U[i], V[j])
    est = np.einsum("ij,ij->i", res.left[i], res.right[j])
    return float(np.linalg.norm(est - truth) / np.linalg.norm(truth))


def completion_large() -> dict:
    n, r, p = 10_000, 10, 0.01
    S, U, V, rng = sampled_problem(n, r, p, seed=1)
    res, dt = timed(lambda: complete(S, None, r, tol=1e-7, return_factors=True))
    return {"shape": f"{n}x{n}", "rank": r, "observed": p, "nnz": int(S.nnz), "time_s": dt,
            "sweeps": res.n_iter, "heldout_error": heldout_error(res, U, V, rng, n)}


SCALING_OBSERVED = (0.005, 0.01, 0.02, 0.04, 0.08)


def line_fit(x: np.ndarray, t: np.ndarray) -> dict:
    """Least-squares line ``t = a + b x`` (b per 10^6 entries), its R^2, and the log-log slope."""
    b, a = np.polyfit(x, t, 1)
    r2 = 1 - np.sum((t - (a + b * x)) ** 2) / np.sum((t - t.mean()) ** 2)
    slope = np.polyfit(np.log(x), np.log(t), 1)[0]
    return {"intercept_s": float(a), "s_per_million_entries": float(b * 1e6), "r2": float(r2),
            "loglog_slope": float(slope)}


def scaling(repeats: int) -> dict:
    """Time of 5 AltMin sweeps vs |Omega|: best of ``repeats`` runs, wall and CPU time."""
    n, r, sweeps = 4000, 10, 5
    pts = []
    for p in SCALING_OBSERVED:
        S, U, V, rng = sampled_problem(n, r, p, seed=2)
        wall = cpu = float("inf")
        for _ in range(repeats):
            c0 = time.process_time()
            res, dt = timed(lambda S=S: complete(S, None, r, max_iter=sweeps, tol=0.0,
                                                 return_factors=True))
            wall, cpu = min(wall, dt), min(cpu, time.process_time() - c0)
        pts.append({"observed": p, "nnz": int(S.nnz), "time_s": wall, "cpu_s": cpu,
                    "sweeps": res.n_iter, "time_per_sweep_s": wall / res.n_iter,
                    "us_per_entry_sweep": wall / res.n_iter / S.nnz * 1e6,
                    "heldout_error": heldout_error(res, U, V, rng, n)})
    x = np.array([q["nnz"] for q in pts], float)
    return {"shape": f"{n}x{n}", "rank": r, "sweeps": sweeps, "repeats": repeats,
            "points": pts, "fit": line_fit(x, np.array([q["time_s"] for q in pts])),
            "fit_cpu": line_fit(x, np.array([q["cpu_s"] for q in pts]))}


def robust_section() -> dict:
    rng = np.random.default_rng(0)
    d, r, N = 20, 2, 1200
    Us = rng.standard_normal((d, r))
    X = Us @ Us.T
    B = rng.standard_normal((N, d, d))
    A = (B + B.transpose(0, 2, 1)) / 2
    y0 = np.einsum("kij,ij->k", A, X)
    sensing = []
    for frac in (0.0, 0.1, 0.2, 0.3, 0.4):
        y = y0.copy()
        out = rng.random(N) < frac
        y[out] += 100 * np.linalg.norm(X) * rng.random(int(out.sum()))
        est, dt = timed(lambda y=y: sense(A, y, 6, symmetric=True, loss="l1"))
        ls = np.linalg.lstsq(A.reshape(N, -1), y, rcond=None)[0].reshape(d, d)
        sensing.append({"outliers": frac, "l1_subgradient": rel(est, X), "time_s": dt,
                        "least_squares": rel(ls, X)})
    n, r = 200, 5
    L = rng.standard_normal((n, r)) @ rng.standard_normal((r, n)) / np.sqrt(r)
    matrix = []
    for frac in (0.1, 0.2, 0.3, 0.4):
        M = L.copy()
        out = rng.random(L.shape) < frac
        M[out] += 100 * rng.standard_normal(int(out.sum()))
        sg, t_sg = timed(lambda M=M: robust(M, 10))
        rf, t_rf = timed(lambda M=M: robust(M, 10, refine=True))
        (lp, _), t_pcp = timed(lambda M=M: robust_pca(M))
        Uu, s, Vt = np.linalg.svd(M)
        svd = (Uu[:, :r] * s[:r]) @ Vt[:r]
        matrix.append({"outliers": frac, "subgradient": rel(sg, L), "subgradient_s": t_sg,
                       "refit": rel(rf, L), "refit_s": t_rf, "robust_pca": rel(lp, L),
                       "robust_pca_s": t_pcp, "least_squares_svd": rel(svd, L)})
    return {"sensing": sensing, "matrix": matrix}


def sensing_curves() -> list[dict]:
    rng = np.random.default_rng(0)
    n, r, N = 20, 2, 800
    Q1 = np.linalg.qr(rng.standard_normal((n, r)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((n, r)))[0]
    X = (Q1 * np.array([1.0, 0.5])) @ Q2.T
    A = rng.standard_normal((N, n, n)) / np.sqrt(N)
    y = np.einsum("kij,ij->k", A, X)
    op, yt, Xt = DenseOperator(torch.tensor(A)), torch.tensor(y), torch.tensor(X)
    # the symmetric parameterisation needs a PSD target: Q1 diag(1, 0.5) Q1^T
    Xs = (Q1 * np.array([1.0, 0.5])) @ Q1.T
    ys, Xst = torch.tensor(np.einsum("kij,ij->k", A, Xs)), torch.tensor(Xs)
    rows = []
    for alpha in (0.3, 0.1, 0.03, 0.01):
        row = {"alpha": alpha}
        for key, k, sym, rb in (("sym_k=r", 2, True, None), ("sym_k=4", 4, True, None),
                                ("asym_k=r", 2, False, None), ("asym_k=4", 4, False, None),
                                ("asym_k=4+one-step", 4, False, 1e-2)):
            hit = []

            target, meas = (Xst, ys) if sym else (Xt, yt)

            def cb(it, F, G, hit=hit, target=target):
                if not hit and float((F @ G.T - target).norm() / target.norm()) < 1e-6:
                    hit.append(it + 1)

            F, G, *_ = factored_gd(op, meas, k, symmetric=sym, init_scale=alpha, step=0.2,
                                   max_iter=6000, tol=1e-9, rebalance_at=rb,
                                   gen=torch.Generator().manual_seed(0), callback=cb)
            err = float((F @ G.T - target).norm() / target.norm())
            row[key] = hit[0] if hit else f"- [{err:.1e}]"
        rows.append(row)
    return rows


def digits() -> list[dict]:
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(float)
    rng = np.random.default_rng(0)
    mask = rng.random(X.shape) < 0.5
    miss = ~mask
    out = []
    col_mean = np.nanmean(np.where(mask, X, np.nan), axis=0)
    mean_fill = np.where(mask, X, col_mean[None, :])
    out.append({"method": "column mean", "error": rel(mean_fill, X, miss), "time_s": 0.0})
    for name, fn in (
        ("AltMin rank 10, reg 0.1 (ours)", lambda: complete(X, mask, 10, reg=0.1)),
        ("SoftImpute, fancyimpute defaults", lambda: soft_impute(X, mask)),
        ("IterativeSVD rank 10", lambda: iterative_svd(X, mask, rank=10)),
    ):
        est, dt = timed(fn)
        out.append({"method": name, "error": rel(est, X, miss), "time_s": dt})
    return out


def fmt(v) -> str:
    if v is None:
        return "never"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


PARTS = ("completion", "large", "scaling", "robust", "sensing", "digits")


def scaling_markdown(scal: dict) -> list[str]:
    md = [f"**Time vs |Omega|** ({scal['shape']}, rank {scal['rank']}, {scal['sweeps']} sweeps "
          f"from the spectral start, input conversion included; best of {scal['repeats']} "
          "runs)", "",
          "| observed | entries | time (s) | time/sweep (s) | us per entry per sweep | "
          "CPU time (s) | held-out error |", "| --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {p['observed']:.1%} | {p['nnz']:,} | {p['time_s']:.2f} | "
           f"{p['time_per_sweep_s']:.3f} | {p['us_per_entry_sweep']:.2f} | {p['cpu_s']:.2f} | "
           f"{p['heldout_error']:.1e} |" for p in scal["points"]]
    for label, f in (("wall time", scal["fit"]), ("CPU time", scal["fit_cpu"])):
        md += ["", f"Linear fit ({label}): t = {f['intercept_s']:.3f} s + "
                   f"{f['s_per_million_entries']:.2f} s per 10^6 entries (R^2 = {f['r2']:.4f}); "
                   f"log-log slope {f['loglog_slope']:.2f}"]
    return md + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--skip-large", action="store_true", help="skip the 10^4 x 10^4 case")
    parser.add_argument("--iterative-imputer", action="store_true",
                        help="also time scikit-learn's IterativeImputer (about a minute)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="sections to run (default: all); a partial run only prints its "
                             "tables unless --out is given")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per point of the |Omega| scaling (the best one is kept)")
    parser.add_argument("--out", default=None,
                        help="results path without suffix (default for a full run: "
                             "benchmarks/results/matrix_recovery)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.parts)
    if args.skip_large:
        parts.discard("large")
    full = parts >= set(PARTS) - ({"large"} if args.skip_large else set())
    out = args.out if args.out is not None else (RESULTS / "matrix_recovery" if full else None)

    comp = completion_500(args) if "completion" in parts else None
    large = completion_large() if "large" in parts else None
    scal = scaling(args.repeats) if "scaling" in parts else None
    rob = robust_section() if "robust" in parts else None
    curves = sensing_curves() if "sensing" in parts else None
    dig = digits() if "digits" in parts else None

    md = [f"Matrix recovery benchmark (torch threads: {args.threads}; CPU, float64)", ""]
    if comp:
        ours = comp[0]["time_s"]
        soft = comp[2]
        md += ["**Completion, 500x500, rank 10, 30% observed** (relative error on unobserved)",
               "", "| method | time (s) | error | time to 1e-2 (s) |", "| --- | --- | --- | --- |"]
        md += [f"| {r['method']} | {r['time_s']:.2f} | {r['error']:.2e} | "
               f"{fmt(r['time_to_1e-2_s'])} |" for r in comp]
        ref = soft["time_to_1e-2_s"] if soft["time_to_1e-2_s"] is not None else soft["time_s"]
        md += ["", f"Speed-up of AltMin (to {comp[0]['error']:.1e}) over SoftImpute defaults "
                   f"({'to 1e-2' if soft['time_to_1e-2_s'] else 'full run, never reaches 1e-2'})"
                   f": **{ref / ours:.1f}x**", ""]
    if large:
        md += [f"**Completion, {large['shape']}, rank {large['rank']}, "
               f"{large['observed']:.0%} observed ({large['nnz']:,} entries, scipy COO)**: "
               f"{large['time_s']:.1f} s, {large['sweeps']} sweeps, held-out error "
               f"{large['heldout_error']:.1e}", ""]
    if scal:
        md += scaling_markdown(scal)
    if rob:
        md += ["**Robust sensing** (d=20, r=2, fitted rank 6, 1200 measurements, one-sided "
               "outliers of 100 ||X*||)", "",
               "| outliers | l1 sub-gradient | time (s) | least squares |",
               "| --- | --- | --- | --- |"]
        md += [f"| {s['outliers']:.0%} | {s['l1_subgradient']:.1e} | {s['time_s']:.1f} | "
               f"{s['least_squares']:.1e} |" for s in rob["sensing"]]
        md += ["", "**Robust matrix recovery** (200x200, rank 5, random-sign outliers of size "
                   "100)", "",
               "| outliers | sub-gradient (rank 10) | + inlier refit | robust PCA | "
               "rank-5 SVD (least squares) |", "| --- | --- | --- | --- | --- |"]
        md += [f"| {s['outliers']:.0%} | {s['subgradient']:.1e} ({s['subgradient_s']:.1f} s) | "
               f"{s['refit']:.1e} ({s['refit_s']:.1f} s) | {s['robust_pca']:.1e} "
               f"({s['robust_pca_s']:.1f} s) | {s['least_squares_svd']:.1e} |"
               for s in rob["matrix"]]
        md += [""]
    if curves:
        keys = ["sym_k=r", "sym_k=4", "asym_k=r", "asym_k=4", "asym_k=4+one-step"]
        md += ["**Sensing, iterations to 1e-6** (n=20, r=2, 800 measurements, step 0.2; "
               "'-' = not within 6000, final error in brackets)", "",
               "| alpha | " + " | ".join(keys) + " |", "| --- " * (len(keys) + 1) + "|"]
        md += ["| " + " | ".join([str(c["alpha"])] + [str(c[k]) for k in keys]) + " |"
               for c in curves]
        md += [""]
    if dig:
        md += ["**Digits inpainting** (1797x64, 50% pixels missing; error on missing pixels)",
               "", "| method | error | time (s) |", "| --- | --- | --- |"]
        md += [f"| {d['method']} | {d['error']:.3f} | {d['time_s']:.2f} |" for d in dig]
    table = "\n".join(md).rstrip("\n") + "\n"
    if out is None:
        print(table)
        return
    payload = {"completion_500": comp, "completion_large": large, "scaling": scal,
               "robust": rob, "sensing": curves, "digits": dig, "threads": args.threads,
               "parts": sorted(parts)}
    write_results(out, payload, table)


if __name__ == "__main__":
    main()
