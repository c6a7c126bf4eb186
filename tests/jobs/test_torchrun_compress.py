"""``torchrun --nproc_per_node 2 lowrank compress`` (gloo on CPU) writes the output a single
process writes: identical ranks, factors equal to float32 rounding, for the whole-model and the
layer-wise pipelines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_llama, tokenizer):
    path = tmp_path_factory.mktemp("torchrun") / "llama"
    tiny_llama.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def _compress(model, out, *extra, processes=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("WORLD_SIZE", None)
    cli = ["-m", "lowrank.cli", "compress", str(model), "--out", str(out), "--json",
           "--quiet", "--device", "cpu", "--samples", "32", "--seq-len", "32", *extra]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                     "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    proc = subprocess.run([*launcher, *cli], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("pipeline", ["whole", "layerwise"])
def test_two_processes_write_the_single_process_output(llama_dir, tmp_path, pipeline):
    args = ("--method", "svdllm", "--alloc", "energy", "--keep", "0.6", "--pipeline", pipeline)
    one = _compress(llama_dir, tmp_path / "one", *args)
    two = _compress(llama_dir, tmp_path / "two", *args, processes=2)
    assert two["processes"] == 2 and one["processes"] == 1
    ranks = lambda r: {m["name"]: m["rank"] for m in r["result"]["modules"]}  # noqa: E731
    assert ranks(one) == ranks(two)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key
