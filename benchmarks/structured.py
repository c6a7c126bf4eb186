"""Benchmark: lowrank.structured (S4D + PTD, Kronecker GP PDE solver, MoLRG, PiVeM).

Usage:  python benchmarks/structured.py [--epochs 10] [--only s4d ptd pde molrg pivem]
Writes benchmarks/results/structured.json/.md, structured_molrg.png, structured_pivem.png.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

from lowrank.structured import (
    DiagonalSSM,
    PiVeM,
    finite_difference_poisson,
    fit_log_weights,
    planted_dynamic_network,
    ptd_init,
    recovery_rate,
    roc_auc,
    solve_poisson_gp,
    ssm_param_groups,
)
from lowrank.structured.pivem import link_prediction_split, score_samples
from lowrank.structured.ssm import normal_part_error


def bench_s4d(epochs: int, inits: list[str]) -> list[dict]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).unsqueeze(-1)         # (n, 64, 1)
    xtr, xte, ytr, yte = train_test_split(x, torch.tensor(y), test_size=0.25, random_state=0)
    rows = []
    for init in inits:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1, 64),
                                    DiagonalSSM(64, 64, init=init, seed=0),
                                    DiagonalSSM(64, 64, init=init, seed=1))
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
                loss = torch.nn.functional.cross_entropy(head(model(xtr[idx]).mean(1)), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            acc = float((head(model(xte).mean(1)).argmax(-1) == yte).float().mean())
        rows.append({"init": init, "params": params, "epochs": epochs, "test_acc": acc,
                     "seconds": time.time() - t0})
        print(rows[-1], flush=True)
    return rows


def bench_ptd() -> list[dict]:
    rows = [{"method": "S4D/S5 (normal part)", "eps": 0.0, "cond_v": 1.0,
             "tf_error": normal_part_error(64)}]
    for eps in (1e-4, 1e-2, 1e-1, 1.0):
        r = ptd_init(n=64, eps=eps, n_trials=20)
        rows.append({"method": "PTD", "eps": eps, "cond_v": r.cond_v, "tf_error": r.tf_error,
                     "cond_v_unperturbed": r.cond_v_unperturbed,
                     "backward_error": r.backward_error})
    return rows


def bench_pde() -> list[dict]:
    rows = []
    k = 20 * np.pi
    for dim, n in ((1, 200), (2, 100), (2, 24)):
        x = np.linspace(0, 1, n)
        mesh = np.meshgrid(*([x] * dim), indexing="ij")
        u = np.prod([np.sin(k * m) for m in mesh], axis=0)
        f = -dim * k * k * u
        t0 = time.time()
        kernels = fit_log_weights([x] * dim, f, np.arange(16.0), steps=150, prune=1e-3)
        t_fit = time.time() - t0
        t0 = time.time()
        sol = solve_poisson_gp(f, u, [x] * dim, kernels)
        t_gp = time.time() - t0
        t0 = time.time()
        fd = finite_difference_poisson(f, u, [x] * dim)
        t_fd = time.time() - t0
        row = {"problem": f"{dim}-D sin(20 pi x)" + (" sin(20 pi y)" if dim == 2 else ""),
               "grid": f"{n}^{dim}", "learned_mu": [k_.mu.tolist() for k_ in kernels],
               "gp_rel_l2": float(np.linalg.norm(sol.u - u) / np.linalg.norm(u)),
               "gp_seconds": t_gp, "weight_fit_seconds": t_fit, "cg_iterations": sol.iterations,
               "fd_rel_l2": float(np.linalg.norm(fd - u) / np.linalg.norm(u)),
               "fd_seconds": t_fd}
        if n <= 24:
            t0 = time.time()
            dense = solve_poisson_gp(f, u, [x] * dim, kernels, method="dense")
            row["dense_seconds"] = time.time() - t0
            row["kron_vs_dense_max_diff"] = float(np.abs(dense.u - sol.u).max())
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_molrg(trials: int) -> tuple[list[dict], str]:
    n, k, d = 48, 3, 4
    rows = [{"N": num, "N_over_Kd": num / (k * d),
             "recovery": recovery_rate(n, k, d, num, trials)}
            for num in (6, 9, 12, 15, 18, 24, 36, 48)]
    png = RESULTS / "structured_molrg.png"
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
    png = RESULTS / "structured_pivem.png"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--inits", nargs="+", default=["lin", "inv", "ptd"])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pivem-steps", type=int, default=300)
    parser.add_argument("--only", nargs="+", default=["s4d", "ptd", "pde", "molrg", "pivem"])
    parser.add_argument("--out", default=str(RESULTS / "structured"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    payload, md = {}, ["# lowrank.structured benchmark (CPU)\n"]
    if "s4d" in args.only:
        rows = bench_s4d(args.epochs, args.inits)
        payload["s4d_digits"] = rows
        md += ["## S4D on sequential digits (64 steps, 2 layers, H=64, N=64)\n",
               "| init | params | epochs | test acc | s |", "|---|---|---|---|---|"]
        md += [f"| {r['init']} | {r['params']} | {r['epochs']} | {r['test_acc']:.3f} | "
               f"{r['seconds']:.0f} |" for r in rows]
    if "ptd" in args.only:
        rows = bench_ptd()
        payload["ptd"] = rows
        md += ["\n## PTD of HiPPO-LegS (N=64, best of 20 draws)\n",
               "| method | eps | kappa(V) | transfer-function error |", "|---|---|---|---|"]
        md += [f"| {r['method']} | {r['eps']:g} | {r['cond_v']:.1e} | {r['tf_error']:.2e} |"
               for r in rows]
        md += [f"\nexact eig of HiPPO-LegS: kappa(V) = {rows[1]['cond_v_unperturbed']:.1e}"]
    if "pde" in args.only:
        rows = bench_pde()
        payload["pde"] = rows
        md += ["\n## GP-HM Poisson solver (Kronecker) vs finite differences on the same grid\n",
               "| problem | grid | learned mu | GP rel L2 | GP s | FD rel L2 | FD s |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {r['problem']} | {r['grid']} | {r['learned_mu']} | {r['gp_rel_l2']:.1e} | "
               f"{r['gp_seconds']:.2f} | {r['fd_rel_l2']:.1e} | {r['fd_seconds']:.2f} |"
               for r in rows]
        md += [f"\nKronecker CG vs dense assembly ({r['grid']}): max diff "
               f"{r['kron_vs_dense_max_diff']:.1e}, dense {r['dense_seconds']:.2f} s vs "
               f"{r['gp_seconds']:.2f} s" for r in rows if "dense_seconds" in r]
    if "molrg" in args.only:
        rows, png = bench_molrg(args.trials)
        payload["molrg"] = {"rows": rows, "plot": png}
        md += ["\n## MoLRG subspace recovery (n=48, K=3, d=4, K*d=12)\n",
               "| N | " + " | ".join(str(r["N"]) for r in rows) + " |",
               "|---" * (len(rows) + 1) + "|",
               "| recovery | " + " | ".join(f"{r['recovery']:.1f}" for r in rows) + " |",
               f"\nplot: {png}"]
    if "pivem" in args.only:
        rows, png = bench_pivem(args.pivem_steps)
        payload["pivem"] = {"rows": rows, "plot": png}
        md += ["\n## PiVeM link prediction on a planted dynamic network (held-out pairs)\n",
               "| model | bins | AUC | s |", "|---|---|---|---|"]
        md += [f"| {r['model']} | {r['bins']} | {r['auc']:.3f} | {r['seconds']:.0f} |"
               for r in rows]
        md += [f"\nplot: {png}"]
    write_results(args.out, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
