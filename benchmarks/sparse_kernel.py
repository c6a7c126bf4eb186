"""Benchmark: load-as-sparse, compute-as-dense (tiled) matmul vs dense and torch.sparse on CPU.

Usage:  python benchmarks/sparse_kernel.py [--size 2048] [--tokens 1 64] [--sparsity 0.5 ...]
Writes benchmarks/results/sparse_kernel.json and .md and prints the markdown table.

An unstructured-sparse weight (size x size, float32) times a batch of token vectors, as
``nn.functional.linear`` computes it: dense GEMM on the full weight, the tiled kernel of
:mod:`lowrank.nn.sparse_kernel` (nonzeros + int16 in-tile positions, expanded one panel at a
time into a dense buffer), and ``torch.sparse`` CSR @ dense. Median wall time of ``--repeats``
runs after one warm-up, on the threads set by OMP_NUM_THREADS. Bytes are the weight's storage.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import RESULTS, write_results  # benchmarks/common.py (run as scripts)

from lowrank.nn.sparse_kernel import TiledSparseMatrix


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--panel", type=int, default=8, help="tile rows expanded per step")
    parser.add_argument("--out", default=str(RESULTS / "sparse_kernel"))
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    n = args.size
    rows = []
    for sparsity in args.sparsity:
        w = torch.randn(n, n, generator=gen)
        w[torch.rand(n, n, generator=gen) < sparsity] = 0
        tiled = TiledSparseMatrix.from_dense(w, (64, 64))
        csr = w.to_sparse_csr()
        csr_bytes = sum(t.numel() * t.element_size() for t in
                        (csr.crow_indices(), csr.col_indices(), csr.values()))
        for tokens in args.tokens:
            x = torch.randn(tokens, n, generator=gen)
            ref = x @ w.T
            assert torch.allclose(tiled.linear(x, args.panel), ref, atol=1e-3, rtol=1e-4)
            dense_s = _time(lambda x=x, w=w: torch.nn.functional.linear(x, w), args.repeats)
            tiled_s = _time(lambda x=x, t=tiled: t.linear(x, args.panel), args.repeats)
            csr_s = _time(lambda x=x, c=csr: (c @ x.T).T, args.repeats)
            rows.append({"sparsity": sparsity, "tokens": tokens, "size": n,
                         "dense_ms": 1e3 * dense_s, "tiled_ms": 1e3 * tiled_s,
                         "torch_sparse_csr_ms": 1e3 * csr_s,
                         "dense_bytes": w.numel() * 4, "tiled_bytes": tiled.num_bytes(),
                         "csr_bytes": csr_bytes})
            print(f"sparsity {sparsity} tokens {tokens}: dense {1e3 * dense_s:.2f} ms, tiled "
                  f"{1e3 * tiled_s:.2f} ms, csr {1e3 * csr_s:.2f} ms", flush=True)
    table = ("| sparsity | tokens | dense ms | tiled (load-sparse, compute-dense) ms | "
             "torch.sparse CSR ms | bytes dense / tiled / CSR (MB) |\n"
             "| --- | --- | --- | --- | --- | --- |\n")
    for r in rows:
        table += (f"| {r['sparsity']:.1f} | {r['tokens']} | {r['dense_ms']:.2f} | "
                  f"{r['tiled_ms']:.2f} | {r['torch_sparse_csr_ms']:.2f} | "
                  f"{r['dense_bytes'] / 1e6:.1f} / {r['tiled_bytes'] / 1e6:.1f} / "
                  f"{r['csr_bytes'] / 1e6:.1f} |\n")
    write_results(args.out, {"size": n, "rows": rows, "threads": torch.get_num_threads()},
                  table)


if __name__ == "__main__":
    main()
