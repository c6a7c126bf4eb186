"""Bad input on the command line: one line naming the bad value, exit 2, no output left."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli  # tests/cli/cli_runner.py

from lowrank.cli.main import main


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("keep", ["0", "1.5", "-0.2"])
def test_keep_outside_range(monkeypatch, capsys, tmp_path, keep):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--keep", keep, "--out", str(out))
    assert_one_line_error(code, err, "keep", keep.lstrip("-").rstrip("0") or "0", "(0, 1]")
    assert not out.exists()


def test_unknown_method(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--method", "tucker-magic",
                           "--out", str(out))
    assert_one_line_error(code, err, "tucker-magic", "svdllm")
    assert not out.exists()


def test_unknown_allocator(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--alloc", "psychic",
                           "--out", str(out))
    assert_one_line_error(code, err, "psychic", "uniform")
    assert not out.exists()


def test_model_path_missing(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "no" / "such" / "model"
    code, _, err = run_cli(monkeypatch, capsys, "compress", str(missing), "--out", str(out))
    assert_one_line_error(code, err, str(missing), "does not exist")
    assert not out.exists()


def test_model_dir_without_model(monkeypatch, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", str(empty), "--out", str(out))
    assert_one_line_error(code, err, str(empty), "holds no model")
    assert not out.exists()


def test_empty_calibration_text(monkeypatch, capsys, tmp_path):
    text = tmp_path / "empty.txt"
    text.write_text("   \n\n  ")
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--data", str(text),
                           "--out", str(out))
    assert_one_line_error(code, err, str(text), "empty")
    assert not out.exists()


def test_unreadable_calibration_text(monkeypatch, capsys, tmp_path):
    text = tmp_path / "binary.txt"
    text.write_bytes(b"\xff\xfe\x00\x81" * 10)
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--data", str(text),
                           "--out", str(out))
    assert_one_line_error(code, err, str(text), "UTF-8")
    assert not out.exists()


def test_missing_calibration_file(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--data", str(tmp_path / "x.txt"),
                           "--out", str(out))
    assert_one_line_error(code, err, "x.txt", "not a readable file")
    assert not out.exists()


def test_targets_match_nothing_lists_near_misses(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--targets", "querry",
                           "--out", str(out), "--quiet")
    assert_one_line_error(code, err, "querry", "near misses", "query")
    assert not out.exists()


def _saved_dir(tmp_path: Path) -> Path:
    """A tiny but real lowrank directory (a factorized 2-layer module, no transformers)."""
    import torch
    from torch import nn

    import lowrank as lr

    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8))
    model[0] = lr.LowRankLinear.from_linear(model[0], 4)
    return lr.save(model, tmp_path / "saved") if torch else tmp_path


@pytest.mark.parametrize("problem", ["missing", "malformed", "newer", "lacks-tensor"])
def test_eval_bad_lowrank_directory(monkeypatch, capsys, tmp_path, problem):
    directory = _saved_dir(tmp_path)
    manifest = directory / "lowrank.json"
    if problem == "missing":
        manifest.unlink()
        needles = ("lowrank.json",)
    elif problem == "malformed":
        manifest.write_text("{not json")
        needles = ("not valid JSON",)
    elif problem == "newer":
        data = json.loads(manifest.read_text())
        data["format_version"] = 99
        manifest.write_text(json.dumps(data))
        needles = ("format_version 99", "newer")
    else:
        data = json.loads(manifest.read_text())
        data["tensors"].append("0.ghost_weight")
        manifest.write_text(json.dumps(data))
        needles = ("0.ghost_weight",)
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(directory), "--quiet")
    assert_one_line_error(code, err, *needles)


def test_debug_env_shows_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["lowrank", "compress", "--keep", "2",
                                      "--out", str(tmp_path / "o")])
    monkeypatch.setenv("LOWRANK_DEBUG", "1")
    from lowrank.errors import ConfigError

    with pytest.raises(ConfigError):
        main()


def test_env_json(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "env", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["torch"] and "threads" in info


def test_option_the_method_lacks(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", "--method", "eora", "--keep", "0.5",
                           "--out", str(out))
    assert_one_line_error(code, err, "eora", "keep", "rank")
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--set", "novalue"], "key=value"),
    (["--rank", "lots"], "--rank"),
    (["--method", "eora", "--base", "quant-int3"], "quant-int3"),
    (["--mode", "sideways"], "sideways"),
])
def test_bad_method_options(monkeypatch, capsys, tmp_path, args, needle):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", *args, "--out", str(out))
    assert_one_line_error(code, err, needle)
    assert not out.exists()
