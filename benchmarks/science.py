"""Benchmark: lowrank.science (S4D + PTD, Kronecker GP PDE solver, MoLRG, PiVeM).

Usage:  python benchmarks/science.py [--epochs 10] [--seeds 0 1] [--inits lin inv legs ptd]
                                        [--only s4d ptd pde molrg pivem] [--fresh]
Writes benchmarks/results/science.json/.md, science_molrg.png, science_pivem.png.

Runs can be split into parts (for example ``--only s4d --inits lin inv`` and
``--only s4d --inits legs ptd`` in two shells, then ``--only ptd pde molrg pivem``): each run
merges its sections (and its S4D rows, keyed by init and seed) into the existing JSON under a
file lock and re-renders the whole markdown from the merged JSON. Every section and S4D row
records a hash of the code that produced it (src/lowrank/science and this script); the
markdown flags anything whose hash differs from the current code as stale. ``--fresh`` starts
from an empty JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

from lowrank.science import (
    DiagonalSSM,
    PiVeM,
    finite_difference_poisson,
    learn_poisson_kernels,
    planted_dynamic_network,
    ptd_init,
    recovery_rate,
    roc_auc,
    solve_poisson_gp,
    ssm_param_groups,
)
from lowrank.science.pivem import link_prediction_split, score_samples
from lowrank.science.ssm import normal_part_error

SRC = Path(__file__).resolve().parents[1] / "src" / "lowrank" / "science"


def code_hash() -> str:
    """Hash of the code whose numbers this script reports (the science package + this file)."""
    h = hashlib.sha256()
    for path in sorted(SRC.glob("*.py")) + [Path(__file__).resolve()]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def bench_s4d(epochs: int, inits: list[str], seeds: list[int], stamp: str) -> list[dict]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).unsqueeze(-1)         # (n, 64, 1)
    xtr, xte, ytr, yte = train_test_split(x, torch.tensor(y), test_size=0.25, random_state=0)
    rows = []
    for seed in seeds:
        for init in inits:
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Linear(1, 64),
                                        DiagonalSSM(64, 64, init=init, seed=2 * seed),
                                        DiagonalSSM(64, 64, init=init, seed=2 * seed + 1))
            head = torch.nn.Linear(64, 10)
            params = sum(p.numel() for p in [*model.parameters(), *head.parameters()])
            groups = ssm_param_groups(torch.nn.ModuleList([model, head]), lr=3e-3,
                                      weight_decay=0.01)
            opt = torch.optim.AdamW(groups)
            t0 = time.time()
            for _ in range(epochs):
                perm = torch.randperm(len(xtr))
                for b in range(0, len(xtr), 64):
                    idx = perm[b:b + 64]
                    loss = torch.nn.functional.cross_entropy(head(model(xtr[idx]).mean(1)),
                                                             ytr[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                acc = float((head(model(xte).mean(1)).argmax(-1) == yte).float().mean())
            rows.append({"init": init, "seed": seed, "params": params, "epochs": epochs,
                         "test_acc": acc, "seconds": time.time() - t0, "code": stamp,
                         "init_report": model[1].init_report})
            print(rows[-1], flush=True)
    return rows


def bench_ptd() -> list[dict]:
    rows = [{"method": "S4D/S5 (normal part)", "eps": 0.0, "cond_v": 1.0,
             "tf_error": normal_part_error(64)}]
    for eps in (1e-4, 1e-2, 1e-1, 1.0):
        r = ptd_init(n=64, eps=eps, n_trials=20)
        rows.append({"method": "PTD", "eps": eps, "cond_v": r.cond_v, "tf_error": r.tf_error,
                     "cond_v_unperturbed": r.cond_v_unperturbed,
                     "relative_perturbation": r.relative_perturbation,
                     "backward_error": r.backward_error})
    return rows


def _poisson_problem(dim: int, n: int, freqs: tuple[float, ...],
                     amps: tuple[float, ...]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``u = sum_j a_j prod_d sin(2 pi mu_j x_d)`` on [0,1]^dim and ``f = Laplace(u)``."""
    x = np.linspace(0, 1, n)
    mesh = np.meshgrid(*([x] * dim), indexing="ij")
    u, f = np.zeros([n] * dim), np.zeros([n] * dim)
    for mu, a in zip(freqs, amps, strict=True):
        term = a * np.prod([np.sin(2 * np.pi * mu * m) for m in mesh], axis=0)
        u += term
        f += -dim * (2 * np.pi * mu) ** 2 * term
    return [x] * dim, u, f


PDE_CASES = (  # (name, dim, n, frequencies in cycles per unit, amplitudes)
    ("sin(20 pi x)", 1, 200, (10.0,), (1.0,)),
    ("sin(20 pi x) sin(20 pi y)", 2, 100, (10.0,), (1.0,)),
    ("sin(20 pi x) sin(20 pi y)", 2, 24, (10.0,), (1.0,)),
    ("sin(2 pi x) + 0.1 sin(50 pi x)", 1, 200, (1.0, 25.0), (1.0, 0.1)),
    ("sin(2 pi x) sin(2 pi y) + 0.1 sin(50 pi x) sin(50 pi y)", 2, 100, (1.0, 25.0),
     (1.0, 0.1)),
    ("sin(2 pi x) sin(2 pi y) + 0.1 sin(50 pi x) sin(50 pi y)", 2, 200, (1.0, 25.0),
     (1.0, 0.1)),
)


def bench_pde() -> list[dict]:
    rows = []
    for name, dim, n, freqs, amps in PDE_CASES:
        grid, u, f = _poisson_problem(dim, n, freqs, amps)

        def rel(v: np.ndarray, u: np.ndarray = u) -> float:
            return float(np.linalg.norm(v - u) / np.linalg.norm(u))

        t0 = time.time()
        kernels = learn_poisson_kernels(f, u, grid)
        t_fit = time.time() - t0
        t0 = time.time()
        sol = solve_poisson_gp(f, u, grid, kernels)
        t_gp = time.time() - t0
        t0 = time.time()
        cg = solve_poisson_gp(f, u, grid, kernels, method="cg")
        t_cg = time.time() - t0
        t0 = time.time()
        fd = finite_difference_poisson(f, u, grid)
        t_fd = time.time() - t0
        # a finite-difference solve on a 4x (2x if that is over 2e5 points) finer grid
        fine_n = 4 * (n - 1) + 1 if (4 * (n - 1) + 1) ** dim <= 200_000 else 2 * (n - 1) + 1
        fine_grid, fine_u, fine_f = _poisson_problem(dim, fine_n, freqs, amps)
        t0 = time.time()
        fine = finite_difference_poisson(fine_f, fine_u, fine_grid)
        t_fine = time.time() - t0
        row = {"problem": f"{dim}-D {name}", "grid": f"{n}^{dim}",
               "learned_mu": [np.round(k_.mu, 3).tolist() for k_ in kernels],
               "learned_log_w": [np.round(k_.log_w, 2).tolist() for k_ in kernels],
               "gp_rel_l2": rel(sol.u), "gp_seconds": t_gp, "kernel_fit_seconds": t_fit,
               "gp_unknowns": sol.objective_terms["unknowns"],
               "cg_rel_l2": rel(cg.u), "cg_seconds": t_cg, "cg_iterations": cg.iterations,
               "fd_rel_l2": rel(fd), "fd_seconds": t_fd,
               "fd_fine_grid": f"{fine_n}^{dim}",
               "fd_fine_rel_l2": float(np.linalg.norm(fine - fine_u) / np.linalg.norm(fine_u)),
               "fd_fine_seconds": t_fine}
        if n ** dim <= 600:
            t0 = time.time()
            dense = solve_poisson_gp(f, u, grid, kernels, method="dense")
            row["dense_seconds"] = time.time() - t0
            row["dense_rel_l2"] = rel(dense.u)
            row["cg_vs_dense_max_diff"] = float(np.abs(dense.u - cg.u).max())
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_molrg(trials: int) -> tuple[list[dict], str]:
    n, k, d = 48, 3, 4
    rows = [{"N": num, "N_over_Kd": num / (k * d),
             "recovery": recovery_rate(n, k, d, num, trials)}
            for num in (6, 9, 12, 15, 18, 24, 36, 48)]
    png = RESULTS / "science_molrg.png"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.plot([r["N_over_Kd"] for r in rows], [r["recovery"] for r in rows], "o-")
        ax.set_xlabel("samples N / (K d)")
        ax.set_ylabel(f"exact recovery rate ({trials} trials)")
        ax.set_title("MoLRG phase transition (n=48, K=3, d=4)")
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
    except ImportError:
        png = None
    return rows, str(png)


def bench_pivem(steps: int) -> tuple[list[dict], str]:
    ev, comm = planted_dynamic_network(45, 3, base_rate=20, seed=0)
    split = link_prediction_split(ev, 0.1, 10, seed=0)
    labels = np.array([s[-1] for s in split["samples"]])
    rows, models = [], {}
    for name, static, bins in (("static latent distance", True, 1), ("PiVeM", False, 20)):
        model = PiVeM(45, bins, static=static, seed=0)
        t0 = time.time()
        model.fit(split["train_events"], split["train_pairs"], steps=steps)
        auc = roc_auc(score_samples(model, split["samples"]), labels)
        rows.append({"model": name, "bins": bins, "auc": auc, "seconds": time.time() - t0,
                     "events": len(ev.t), "test_samples": len(labels)})
        models[name] = model
        print(rows[-1], flush=True)
    png = RESULTS / "science_pivem.png"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        times = [0.0, 0.25, 0.5, 0.75, 1.0]
        fig, axes = plt.subplots(1, len(times), figsize=(3 * len(times), 3))
        with torch.no_grad():
            z = models["PiVeM"].positions(torch.tensor(times)).numpy()
        for ax, t, zt in zip(axes, times, z, strict=True):
            ax.scatter(zt[:, 0], zt[:, 1], c=comm, cmap="tab10", s=12)
            ax.set_title(f"t = {t}")
        fig.suptitle("PiVeM 2-D embedding (colour = planted community)")
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
    except ImportError:
        png = None
    return rows, str(png)


def render(payload: dict, stamp: str) -> str:
    """The whole markdown from the merged payload; sections from other code are flagged."""
    md = ["# lowrank.science benchmark (CPU)\n",
          f"Code hash of the current tree: `{stamp}` (sections or rows from another hash are "
          "marked stale).\n"]

    def stale(section: dict) -> str:
        return "" if section.get("code") == stamp else \
            f" (STALE: code {section.get('code')}, current {stamp})"

    if "s4d_digits" in payload:
        sec = payload["s4d_digits"]
        rows = sec["rows"]
        md += ["## S4D on sequential digits (64 steps, 2 layers, H=64, N=64)\n",
               "Same epochs, seeds and optimiser for every init (AdamW lr 3e-3, SSM parameters "
               "lr 1e-3 and no weight decay).\n",
               "| init | seeds | params | epochs | test acc (mean) | per seed | s per run |",
               "|---|---|---|---|---|---|---|"]
        for init in dict.fromkeys(r["init"] for r in rows):
            rs = sorted((r for r in rows if r["init"] == init), key=lambda r: r["seed"])
            accs = [r["test_acc"] for r in rs]
            flag = "" if all(r.get("code") == stamp for r in rs) else " STALE"
            md.append(f"| {init}{flag} | {','.join(str(r['seed']) for r in rs)} | "
                      f"{rs[0]['params']} | {rs[0]['epochs']} | {np.mean(accs):.3f} | "
                      f"{' / '.join(f'{a:.3f}' for a in accs)} | "
                      f"{np.mean([r['seconds'] for r in rs]):.0f} |")
        ptd = [r for r in rows if r["init"] == "ptd"]
        if ptd:
            rep = ptd[0]["init_report"]
            md.append(f"\nptd layer (seed {ptd[0]['seed']}, first layer): kappa(V) = "
                      f"{rep['cond_v']:.1e}, transfer-function error {rep['tf_error']:.1e}, "
                      f"||E||/||A|| = {rep['relative_perturbation']:.1e}, "
                      f"{rep['modes']} modes")
    if "ptd" in payload:
        sec = payload["ptd"]
        rows = sec["rows"]
        md += [f"\n## PTD of HiPPO-LegS (N=64, best of 20 draws){stale(sec)}\n",
               "| method | eps | eps / norm(A) | kappa(V) | transfer-function error |",
               "|---|---|---|---|---|"]
        md += [f"| {r['method']} | {r['eps']:g} | {r.get('relative_perturbation', 0.0):.1e} | "
               f"{r['cond_v']:.1e} | {r['tf_error']:.2e} |" for r in rows]
        md += [f"\nexact eig of HiPPO-LegS: kappa(V) = {rows[1]['cond_v_unperturbed']:.1e}"]
    if "pde" in payload:
        sec = payload["pde"]
        rows = sec["rows"]
        md += [f"\n## GP-HM Poisson solver (Kronecker) vs finite differences{stale(sec)}\n",
               "Relative L2 error against the exact solution. GP: kernels from "
               "`learn_poisson_kernels` (frequencies from the sine spectrum of the FD solution, "
               "log-weights by the Kronecker marginal likelihood), solved by "
               "`solve_poisson_gp` (method `eigen`); soft CG: the same objective and kernels by "
               "CG; FD: second-order finite differences on the same grid and on a finer "
               "grid (sparse direct solve).\n",
               "| problem | grid | learned mu (each axis) | GP rel L2 | GP s | fit s | "
               "soft CG rel L2 | FD rel L2 | FD finer grid rel L2 |",
               "|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['problem']} | {r['grid']} | {r['learned_mu'][0]} | {r['gp_rel_l2']:.1e} | "
               f"{r['gp_seconds']:.2f} | {r['kernel_fit_seconds']:.1f} | {r['cg_rel_l2']:.1e} | "
               f"{r['fd_rel_l2']:.1e} | {r['fd_fine_rel_l2']:.1e} ({r['fd_fine_grid']}) |"
               for r in rows]
        md += [f"\n{r['grid']} {r['problem']}: dense assembly of the soft objective "
               f"{r['dense_rel_l2']:.1e} ({r['dense_seconds']:.2f} s); soft CG vs dense max "
               f"diff {r['cg_vs_dense_max_diff']:.1e}" for r in rows if "dense_seconds" in r]
    if "molrg" in payload:
        sec = payload["molrg"]
        rows = sec["rows"]
        md += [f"\n## MoLRG subspace recovery (n=48, K=3, d=4, K*d=12){stale(sec)}\n",
               "| N | " + " | ".join(str(r["N"]) for r in rows) + " |",
               "|---" * (len(rows) + 1) + "|",
               "| recovery | " + " | ".join(f"{r['recovery']:.1f}" for r in rows) + " |",
               f"\nplot: {sec['plot']}"]
    if "pivem" in payload:
        sec = payload["pivem"]
        md += [f"\n## PiVeM link prediction on a planted dynamic network (held-out pairs)"
               f"{stale(sec)}\n", "| model | bins | AUC | s |", "|---|---|---|---|"]
        md += [f"| {r['model']} | {r['bins']} | {r['auc']:.3f} | {r['seconds']:.0f} |"
               for r in sec["rows"]]
        md += [f"\nplot: {sec['plot']}"]
    return "\n".join(md) + "\n"


@contextlib.contextmanager
def locked(path: Path):
    """Exclusive lock for the read-merge-write of ``path`` (the lock file lives in the temp dir,
    not next to the results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"lowrank_bench_{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--inits", nargs="+", default=["lin", "inv", "legs", "ptd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pivem-steps", type=int, default=300)
    parser.add_argument("--only", nargs="+", default=["s4d", "ptd", "pde", "molrg", "pivem"])
    parser.add_argument("--out", default=str(RESULTS / "science"))
    parser.add_argument("--fresh", action="store_true", help="do not merge into the existing JSON")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    stamp = code_hash()
    new: dict = {}
    if "s4d" in args.only:
        new["s4d_digits"] = bench_s4d(args.epochs, args.inits, args.seeds, stamp)
    if "ptd" in args.only:
        new["ptd"] = {"rows": bench_ptd()}
    if "pde" in args.only:
        new["pde"] = {"rows": bench_pde()}
    if "molrg" in args.only:
        rows, png = bench_molrg(args.trials)
        new["molrg"] = {"rows": rows, "plot": png}
    if "pivem" in args.only:
        rows, png = bench_pivem(args.pivem_steps)
        new["pivem"] = {"rows": rows, "plot": png}
    out = Path(args.out)
    with locked(out):
        payload = {}
        if not args.fresh and out.with_suffix(".json").exists():
            payload = json.loads(out.with_suffix(".json").read_text())
            payload.pop("environment", None)
            for key in list(payload):
                if not (isinstance(payload[key], dict) and "rows" in payload[key]):
                    payload.pop(key)        # written by the pre-merge version of this script
        for key, sec in new.items():
            if key == "s4d_digits":
                old_rows = payload.get("s4d_digits", {}).get("rows", [])
                keys = {(r["init"], r["seed"]) for r in sec}
                merged = [r for r in old_rows if (r["init"], r["seed"]) not in keys] + sec
                payload["s4d_digits"] = {"rows": merged}
            else:
                payload[key] = {**sec, "code": stamp}
        write_results(out, payload, render(payload, stamp))


if __name__ == "__main__":
    main()
