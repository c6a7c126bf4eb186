"""`lowrank train` end to end (tiny run) and the pretraining helpers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from lowrank.cli.main import app
from lowrank.errors import ConfigError
from lowrank.optim.pretrain import PretrainConfig, pretrain, text_data


@pytest.fixture(scope="module")
def data():
    train, val = text_data()
    return train[:20000], val[:4000]


def test_cli_train_writes_json_and_png(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--method", "galore", "--steps", "3", "--rank", "4",
                                   "--hidden", "32", "--layers", "1", "--seq-len", "32",
                                   "--out", str(out), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["method"] == "galore" and summary["val_ppl"] > 1
    payload = json.loads((out / "train.json").read_text())
    assert len(payload["losses"]) == 3 and payload["refresh_count"] >= 7
    assert (out / "loss.png").stat().st_size > 1000


def test_every_method_trains_a_step(data):
    kw = {"steps": 1, "hidden": 32, "intermediate": 88, "layers": 1, "seq_len": 32,
          "batch_size": 2, "rank": 8, "eval_batches": 1}
    dense = pretrain(PretrainConfig(method="adamw", **kw), data)
    for method in ("galore-dct", "sltrain", "lost", "lowrank"):
        res = pretrain(PretrainConfig(method=method, **kw), data)
        assert len(res.losses) == 1 and res.losses[0] == res.losses[0]
        if method != "galore-dct":
            assert res.params_total < dense.params_total
        else:
            assert res.optimizer_state_bytes < dense.optimizer_state_bytes


def test_bad_method_is_a_config_error():
    with pytest.raises(ConfigError, match="method must be one of"):
        PretrainConfig(method="lora")
    with pytest.raises(ConfigError, match="method must be one of"):  # a benchmark row only
        PretrainConfig(method="galore-torch")


def test_an_optimizer_factory_replaces_the_methods_optimizer(data):
    """The benchmark's reference optimizers come in through ``optimizer=``."""
    built = []

    def sgd(model, cfg):
        built.append(torch.optim.SGD(model.parameters(), lr=cfg.lr))
        return built[-1]

    kw = {"steps": 2, "hidden": 32, "intermediate": 88, "layers": 1, "seq_len": 32,
          "batch_size": 2, "rank": 8, "eval_batches": 1}
    res = pretrain(PretrainConfig(method="galore", **kw), data, optimizer=sgd)
    assert len(built) == 1 and len(res.losses) == 2
    assert (res.optimizer_state_bytes, res.refresh_count, res.refresh_seconds) == (0, 0, 0.0)


def test_the_core_import_leaves_pretraining_out():
    script = ("import sys, lowrank, lowrank.optim; "
              "assert 'lowrank.optim.pretrain' not in sys.modules, 'pretrain imported'")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
