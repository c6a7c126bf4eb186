"""SIGINT / SIGTERM during ``lowrank train`` and ``lowrank compress``: a short message, exit
status 130 / 143, the previous output intact, no temporary directory left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lowrank.io.atomic import atomic_directory

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def _previous_output(path):
    with atomic_directory(path, kind="train") as tmp:
        (tmp / "train.json").write_text("{}")


def _cli(*args: str, cwd) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LOWRANK_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "lowrank.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signame,status,word", [("SIGINT", 130, "interrupted"),
                                                 ("SIGTERM", 143, "terminated")])
def test_signal_during_train(tmp_path, signame, status, word):
    _previous_output(tmp_path / "run")
    proc = _cli("train", "--steps", "100000", "--hidden", "32", "--layers", "1",
                "--seq-len", "32", "--out", "run", cwd=tmp_path)
    proc.stderr.readline()  # the memory estimate: training starts right after it
    time.sleep(0.5)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    lines = [line for line in err.splitlines() if line.strip() and "memory" not in line.lower()
             and not line.startswith(" ")]
    assert any(word in line and signame in line for line in lines), err
    assert "Traceback" not in err
    assert (tmp_path / "run" / "train.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_sigint_during_compress_leaves_nothing(tmp_path):
    proc = _cli("compress", "--method", "svdllm", "--out", "out", cwd=tmp_path)
    time.sleep(8)  # past the imports and the model load, inside calibration or compression
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("lowrank: interrupted by SIGINT"), err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
