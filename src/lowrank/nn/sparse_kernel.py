"""Load-as-sparse, compute-as-dense: a tiled sparse weight format and its CPU matmul.

The idea of Flash-LLM ("Flash-LLM: Enabling Cost-Effective and Highly-Efficient Large
Generative Model Inference with Unstructured Sparsity", 2023): keep an unstructured sparse
weight compressed (only the nonzeros and short local positions move through memory), expand
it tile by tile into a small dense buffer, and run dense GEMMs on the buffer, accepting the
redundant multiplications by zero. The format here is Tiled-CSL-like: the matrix is cut into
``tile_rows x tile_cols`` tiles (row-major order); each tile stores its nonzero values and
their ``int16`` positions inside the tile, and ``offsets[t]`` says where tile ``t`` starts.
:meth:`TiledSparseMatrix.linear` expands one panel of ``panel`` tile rows at a time into a
reused buffer and multiplies it with a dense GEMM, so the dense matrix never exists in full.

This is the CPU path (the sparse parts of CoSpaDi / sparse + low-rank layers). A CUDA kernel
that expands tiles in shared memory and feeds tensor cores is future work: it needs a GPU to
be tested on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TiledSparseMatrix:
    """An (rows x cols) matrix stored as per-tile nonzero values and in-tile positions."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    offsets: torch.Tensor  # (num_tiles + 1,) int64, start of each tile's nonzeros
    positions: torch.Tensor  # (nnz,) int16, r_local * tile_cols + c_local
    values: torch.Tensor  # (nnz,)

    @property
    def grid(self) -> tuple[int, int]:
        (r, c), (tr, tc) = self.shape, self.tile
        return -(-r // tr), -(-c // tc)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @classmethod
    def from_dense(cls, matrix: torch.Tensor, tile: tuple[int, int] = (64, 64)
                   ) -> TiledSparseMatrix:
        """Compress ``matrix`` (exact zeros are dropped)."""
        if matrix.ndim != 2:
            raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
        tr, tc = tile
        if tr < 1 or tc < 1 or tr * tc > 32768:
            raise ValueError(f"tile sides must be >= 1 with at most 32768 entries (int16 "
                             f"positions), got {tile}")
        rows, cols = matrix.shape
        gr, gc = -(-rows // tr), -(-cols // tc)
        padded = torch.zeros(gr * tr, gc * tc, dtype=matrix.dtype, device=matrix.device)
        padded[:rows, :cols] = matrix
        tiles = padded.reshape(gr, tr, gc, tc).permute(0, 2, 1, 3).reshape(gr * gc, tr * tc)
        mask = tiles != 0
        counts = mask.sum(1)
        offsets = torch.zeros(gr * gc + 1, dtype=torch.int64, device=matrix.device)
        offsets[1:] = counts.cumsum(0)
        tile_id, pos = mask.nonzero(as_tuple=True)  # row-major: grouped by tile, in order
        return cls((rows, cols), (tr, tc), offsets, pos.to(torch.int16),
                   tiles[tile_id, pos].clone())

    def to_dense(self) -> torch.Tensor:
        rows, cols = self.shape
        tr, tc = self.tile
        gr, gc = self.grid
        tiles = torch.zeros(gr * gc, tr * tc, dtype=self.values.dtype, device=self.values.device)
        tile_id = torch.repeat_interleave(torch.arange(gr * gc, device=self.values.device),
                                          self.offsets.diff())
        tiles[tile_id, self.positions.long()] = self.values
        full = tiles.reshape(gr, gc, tr, tc).permute(0, 2, 1, 3).reshape(gr * tr, gc * tc)
        return full[:rows, :cols]

    def linear(self, x: torch.Tensor, panel: int = 1) -> torch.Tensor:
        """``x @ M^T`` (as ``nn.functional.linear``): expand ``panel`` tile rows at a time
        into a dense buffer and multiply it densely."""
        rows, cols = self.shape
        tr, tc = self.tile
        gr, gc = self.grid
        if x.shape[-1] != cols:
            raise ValueError(f"input has {x.shape[-1]} features, the matrix {cols} columns")
        flat_x = x.reshape(-1, cols)
        out = flat_x.new_empty(flat_x.shape[0], rows)
        height = panel * tr
        width = gc * tc
        buf = torch.zeros(height * width, dtype=self.values.dtype, device=self.values.device)
        dense = buf.view(height, width)
        # flat buffer position of in-tile position (r, c) of tile column j: r * width + j * tc + c
        for p0 in range(0, gr, panel):
            p1 = min(gr, p0 + panel)
            lo, hi = int(self.offsets[p0 * gc]), int(self.offsets[p1 * gc])
            buf.zero_()
            if hi > lo:
                counts = self.offsets[p0 * gc:p1 * gc + 1].diff()
                tid = torch.arange(p1 * gc - p0 * gc, dtype=torch.int32, device=buf.device)
                base = (tid // gc) * (tr * width) + (tid % gc) * tc  # tile's top-left corner
                pos = self.positions[lo:hi].to(torch.int32)
                flat = torch.repeat_interleave(base, counts) + (pos // tc) * width + pos % tc
                buf.index_put_((flat.long(),), self.values[lo:hi])
            r0, r1 = p0 * tr, min(rows, p1 * tr)
            out[:, r0:r1] = flat_x @ dense[:r1 - r0, :cols].T
        return out.reshape(*x.shape[:-1], rows)

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.offsets, self.positions, self.values))
