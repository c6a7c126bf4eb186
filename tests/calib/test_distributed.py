"""Calibration across processes: 2 gloo ranks under torchrun give the single-process statistics;
passages are sharded into contiguous blocks covering each passage once."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowrank.calib import CalibrationStats, TokenizedText, collect_statistics
from lowrank.calib.distributed import (
    Dist,
    all_reduce_stats,
    broadcast_object,
    collect_statistics_distributed,
    gather_objects,
    shard_passages,
)
from lowrank.errors import DataError
from lowrank.surgery import LINEAR

WORKER = Path(__file__).with_name("_dist_worker.py")
RTOL = 1e-10


def _worker_module():
    spec = importlib.util.spec_from_file_location("_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tokens(n: int) -> TokenizedText:
    ids = torch.arange(n * 4).reshape(n, 4)
    return TokenizedText(ids, torch.ones_like(ids), [f"passage {i}" for i in range(n)])


@pytest.mark.parametrize("n,world", [(16, 2), (10, 3), (7, 7), (5, 4)])
def test_shards_cover_every_passage_once_in_order(n, world):
    tokens = _tokens(n)
    shards = [shard_passages(tokens, Dist(rank, world)) for rank in range(world)]
    assert torch.equal(torch.cat([s.input_ids for s in shards]), tokens.input_ids)
    assert sum((s.texts for s in shards), []) == tokens.texts
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    for s in shards:  # rows stay paired with their masks and texts
        assert s.attention_mask.shape == s.input_ids.shape
        assert [f"passage {int(r[0]) // 4}" for r in s.input_ids] == s.texts


def test_fewer_passages_than_ranks_is_refused():
    with pytest.raises(DataError, match="3 calibration passages cannot be split over 4"):
        shard_passages(_tokens(3), Dist(1, 4))


def test_single_process_dist_is_a_no_op(monkeypatch, tiny_bert, calib_tokens):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = Dist.from_env()
    assert (dist.rank, dist.world, dist.is_main, dist.active) == (0, 1, True, False)
    assert broadcast_object("x", dist) == "x" and gather_objects(3, dist) == [3]
    modules = LINEAR.select(tiny_bert)
    tokens = TokenizedText(calib_tokens.input_ids[:8], calib_tokens.attention_mask[:8],
                           calib_tokens.texts[:8])
    ours = collect_statistics_distributed(tiny_bert, modules, tokens, dist, batch_size=8)
    ref = collect_statistics(tiny_bert, modules, tokens, batch_size=8)
    assert ours.meta["processes"] == 1 and ours.meta["samples"] == 8
    for key, s in ref.sites.items():
        assert torch.equal(ours.sites[key].gram, s.gram)
    assert all_reduce_stats(ref, dist) is ref


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


def _assert_equal_stats(ours: CalibrationStats, ref: CalibrationStats) -> None:
    assert ours.module_site == ref.module_site
    assert sorted(ours.sites) == sorted(ref.sites)
    for key, s in ref.sites.items():
        o = ours.sites[key]
        assert o.tokens == s.tokens, key
        for name in ("gram", "abs_sum", "sum"):
            assert _rel(getattr(o, name), getattr(s, name)) <= RTOL, (key, name)
    assert sorted(ours.fisher) == sorted(ref.fisher) and ref.fisher
    for key, f in ref.fisher.items():
        assert ours.fisher[key].batches == f.batches == 2, key
        assert _rel(ours.fisher[key].row_sum, f.row_sum) <= RTOL, key
        assert _rel(ours.fisher[key].col_sum, f.col_sum) <= RTOL, key
    assert torch.equal(ours.token_counts, ref.token_counts)


@pytest.mark.skipif(not torch.distributed.is_available()
                    or not torch.distributed.is_gloo_available(), reason="no gloo backend")
def test_two_gloo_processes_equal_single_process(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    for rank in (0, 1):  # a rank whose modules differ is refused on every rank, no hang
        message = (tmp_path / f"mismatch_rank{rank}.txt").read_text()
        assert message.startswith("DataError: rank 1 collected statistics that differ"), message
        counts = (tmp_path / f"counts_rank{rank}.txt").read_text()
        assert counts == str([0.0, 2.0, 4.0, 6.0, 8.0, 5.0]), counts

    worker = _worker_module()
    tokenizer, tokens, kwargs = worker.setup()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count: identical float32 activations
    try:
        for kind in ("bert", "llama"):
            model = worker.build(kind, tokenizer.vocab_size)
            ref = collect_statistics(model, LINEAR.select(model), tokens, **kwargs[kind])
            rank0 = CalibrationStats.load(tmp_path / f"{kind}_rank0.safetensors")
            rank1 = CalibrationStats.load(tmp_path / f"{kind}_rank1.safetensors")
            _assert_equal_stats(rank0, ref)
            _assert_equal_stats(rank1, rank0)  # every rank holds the whole set's sums
            assert rank0.meta["processes"] == 2
            assert rank0.meta["samples"] == ref.meta["samples"] == len(tokens) == 16
            assert rank0.meta["tokens"] == ref.meta["tokens"]
    finally:
        torch.set_num_threads(threads)
