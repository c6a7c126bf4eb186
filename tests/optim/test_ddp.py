"""Two-process torchrun (gloo, CPU): DDP + GaLoreAdamW + SLTrain keep ranks identical and match
a single process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def test_torchrun_two_processes_ddp_gloo(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed (some macOS/mobile wheels), "
                    "so there is no gloo backend to launch the two processes on")
    out = tmp_path / "ddp.json"
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["world"] == 2
    assert res["refused_per_layer"]  # per-layer hooks are refused under DDP
    assert res["supports_equal"]
    assert res["max_rank_diff"] == 0.0  # bit-identical parameters on both ranks
    assert res["moved"] > 1e-3  # training did change the parameters
    assert res["max_single_diff"] < 1e-5  # same trajectory as one process, global batch
