"""Benchmark: reduced-order models in lowrank.science (GIOROM-style operator, C-HiDeNN-TD).

Usage:  python benchmarks/science_rom.py [--only rom chidenn] [--rom-steps 1500]
Writes benchmarks/results/science_rom.json/.md and science_rom.png.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

from lowrank.science.chidenn import TransientHeat2D
from lowrank.science.rom import (
    LearnedInterpolation,
    ReducedOrderOperator,
    elastic_plate_trajectories,
    relative_error,
)


def bench_rom(steps: int, n_train: int, n_test: int, m: int) -> tuple[dict, str | None]:
    data = elastic_plate_trajectories(n_train + n_test, 60, seed=0)
    train, test = data.displacements[:n_train], data.displacements[n_train:]
    sim_per_traj = data.sim_seconds / (n_train + n_test)
    rom = ReducedOrderOperator(data.points, channels=2, m=m, seed=0)
    fit = rom.fit(train, steps=steps, interp_steps=400)
    horizons = (10, 30, 58)
    rows = []
    preds = []
    t0 = time.time()
    for traj in test:
        preds.append(rom.predict(traj[0], traj[1], max(horizons)).numpy())
    rom_seconds = (time.time() - t0) / len(test)
    for h in horizons:
        true = test[:, 2:2 + h]
        pred = np.stack([p[:h] for p in preds])
        steps_ = np.arange(1, h + 1)[None, :, None, None]
        cv = test[:, 1:2] + (test[:, 1:2] - test[:, 0:1]) * steps_
        rows.append({"horizon_frames": h, "rom_rel_err": relative_error(pred, true),
                     "const_velocity_rel_err": relative_error(cv, true),
                     "hold_rel_err": relative_error(np.broadcast_to(test[:, 1:2], true.shape),
                                                    true)})
        print(rows[-1], flush=True)
    # interpolation alone, on held-out snapshots: learned kernel vs fixed ones
    snaps = torch.tensor(test.reshape(-1, *test.shape[2:]), dtype=torch.float32)
    sp = snaps[:, rom.sparse_idx]
    pts = torch.tensor(data.points, dtype=torch.float32)
    interp = {"learned kernel + affine MLS": relative_error(rom.evaluate(sp, pts), snaps)}
    with torch.no_grad():
        interp["Gaussian kernel + affine MLS"] = relative_error(
            LearnedInterpolation(2, 8, learn=False)(sp, pts, rom.sparse_points), snaps)
        interp["Gaussian kernel average (k=8)"] = relative_error(
            LearnedInterpolation(2, 8, affine=False, learn=False)(sp, pts, rom.sparse_points),
            snaps)
    print(interp, flush=True)
    # discretisation-agnostic evaluation: the same rollout on a 4x denser query cloud
    gx, gy = np.meshgrid(np.linspace(0, 2, 161), np.linspace(0, 0.5, 41), indexing="ij")
    dense_q = np.stack([gx.ravel(), gy.ravel()], 1)
    sparse_roll = rom.rollout(torch.tensor(test[0, 0][rom.sparse_idx]),
                              torch.tensor(test[0, 1][rom.sparse_idx]), max(horizons))
    t0 = time.time()
    rom.evaluate(sparse_roll, data.points)
    t_eval_ref = time.time() - t0
    t0 = time.time()
    rom.evaluate(sparse_roll, dense_q)
    t_eval_dense = time.time() - t0
    summary = {"particles": len(data.points), "sparse_points": m, "train_trajectories": n_train,
               "test_trajectories": n_test, "frames": 60, "fit_seconds": fit.seconds,
               "full_sim_seconds_per_trajectory": sim_per_traj,
               "rom_rollout_plus_interp_seconds_per_trajectory": rom_seconds,
               "eval_seconds_451_points": t_eval_ref, "eval_seconds_6601_points": t_eval_dense,
               "rollout": rows, "interpolation_rel_err": interp}
    png = RESULTS / "science_rom.png"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 3, figsize=(12, 2.6))
        for ax, f in zip(axes, (10, 30, 58), strict=True):
            true = data.points + test[0, f + 1]
            pred = data.points + preds[0][f - 1]
            ax.scatter(true[:, 0], true[:, 1], s=4, c="0.6", label="full simulation")
            ax.scatter(pred[:, 0], pred[:, 1], s=2, c="C3", label="ROM (64 pts) + interp.")
            ax.scatter(*(data.points[rom.sparse_idx] + preds[0][f - 1][rom.sparse_idx]).T, s=10,
                       c="k", marker="x", label="sparse graph")
            ax.set_title(f"frame {f + 1}")
            ax.set_aspect("equal")
        axes[0].legend(fontsize=6, loc="lower left")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
    except ImportError:
        png = None
    return summary, str(png) if png else None


def bench_chidenn(sizes: list[int], nt: int) -> dict:
    rows = []
    for n in sizes:
        pr = TransientHeat2D(n, n, nt, kappa=0.05)
        load = pr.load_moving_source(radius=0.08, speed=0.5)
        td = pr.solve_td(load, max_rank=40, tol=1e-3, als_iters=10)
        full = pr.solve_full(load)
        diff = float(np.linalg.norm(pr.td_to_grid(td) - full.u) / np.linalg.norm(full.u))
        rows.append({"grid": f"{n}^2 x {nt}", "space_time_dofs": (n - 1) ** 2 * nt,
                     "td_rank": td.rank, "td_residual": td.residuals[-1], "td_seconds": td.seconds,
                     "full_seconds": full.seconds, "td_vs_full_rel_diff": diff,
                     "td_storage": sum(f.size for f in td.factors),
                     "full_storage": int(full.u.size)})
        print(rows[-1], flush=True)
    kappa = 0.1

    def q(t):
        return np.exp(-t) + 2 * np.pi ** 2 * kappa * (1 - np.exp(-t))

    acc = []
    for name, p, s in (("linear FE", 1, 0), ("C-HiDeNN p=2 s=1", 2, 1),
                       ("C-HiDeNN p=3 s=2", 3, 2)):
        for n in (8, 16, 32):
            pr = TransientHeat2D(n, n, 200, kappa=kappa, p=p, s=s)
            load = pr.load_separable(lambda x: np.sin(np.pi * x), lambda y: np.sin(np.pi * y), q)
            u = pr.td_to_grid(pr.solve_td(load, max_rank=8, tol=1e-7))[-1]
            x, y = pr.interior_nodes()
            exact = np.outer(np.sin(np.pi * x), np.sin(np.pi * y)) * (1 - np.exp(-1.0))
            acc.append({"basis": name, "mesh": f"{n}^2",
                        "rel_err_t1": float(np.linalg.norm(u - exact) / np.linalg.norm(exact))})
    print(acc, flush=True)
    return {"moving_source": rows, "manufactured": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["rom", "chidenn"])
    parser.add_argument("--rom-steps", type=int, default=1500)
    parser.add_argument("--rom-train", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--nt", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS / "science_rom"))
    args = parser.parse_args()
    payload, md = {}, ["# lowrank.science reduced-order models (CPU)\n"]
    if "rom" in args.only:
        s, png = bench_rom(args.rom_steps, args.rom_train, 4, 64)
        payload["rom"] = {**s, "plot": png}
        md += [f"## ReducedOrderOperator on a clamped elastic plate ({s['particles']} particles, "
               f"{s['sparse_points']} sparse points, {s['train_trajectories']} training / "
               f"{s['test_trajectories']} held-out trajectories)\n",
               "| horizon (frames) | ROM rel. error (all particles) | constant velocity | "
               "hold last frame |", "|---|---|---|---|"]
        md += [f"| {r['horizon_frames']} | {r['rom_rel_err']:.3f} | "
               f"{r['const_velocity_rel_err']:.3f} | {r['hold_rel_err']:.3f} |"
               for r in s["rollout"]]
        md += ["\n| interpolation (sparse -> all particles, held-out snapshots) | rel. error |",
               "|---|---|"]
        md += [f"| {k} | {v:.4f} |" for k, v in s["interpolation_rel_err"].items()]
        md += [f"\nfull simulation {s['full_sim_seconds_per_trajectory']:.2f} s / trajectory; "
               "ROM rollout + interpolation "
               f"{s['rom_rollout_plus_interp_seconds_per_trajectory']:.2f} s; evaluation on "
               f"451 vs 6601 query points {s['eval_seconds_451_points']:.3f} vs "
               f"{s['eval_seconds_6601_points']:.3f} s; training {s['fit_seconds']:.0f} s",
               f"\nplot: {png}"]
    if "chidenn" in args.only:
        c = bench_chidenn(args.sizes, args.nt)
        payload["chidenn"] = c
        md += ["\n## C-HiDeNN-TD space-time ROM vs full-grid time marching (moving heat source, "
               "C-HiDeNN p=2 s=2, Crank-Nicolson)\n",
               "| grid | space-time DoFs | TD rank | TD residual | TD s | full s | "
               "TD vs full rel. diff | storage TD / full |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['grid']} | {r['space_time_dofs']} | {r['td_rank']} | "
               f"{r['td_residual']:.1e} | {r['td_seconds']:.2f} | {r['full_seconds']:.2f} | "
               f"{r['td_vs_full_rel_diff']:.1e} | {r['td_storage']} / {r['full_storage']} |"
               for r in c["moving_source"]]
        md += ["\n| basis | " + " | ".join(r["mesh"] for r in c["manufactured"][:3])
               + " |", "|---|---|---|---|"]
        for name in dict.fromkeys(r["basis"] for r in c["manufactured"]):
            errs = [r["rel_err_t1"] for r in c["manufactured"] if r["basis"] == name]
            md.append(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
        md.append("\n(manufactured solution sin(pi x) sin(pi y)(1 - e^-t), kappa = 0.1, 200 "
                  "Crank-Nicolson steps, relative error at t = 1 on the nodes)")
    write_results(args.out, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
