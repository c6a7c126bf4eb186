"""The main job on the embedded default: CLI JSON contract, output directory, reload equality."""

from __future__ import annotations

import json
import sys

import torch

import lowrank as lr
from lowrank.calib import read_texts, tokenize
from lowrank.cli.main import main
from lowrank.models import load_model
from lowrank.models.forward import hidden_states

REQUIRED_KEYS = {"model", "method", "keep_target", "keep_actual", "params_before",
                 "params_after", "quality_before", "quality_after", "seconds", "out"}


def test_compress_json_writes_complete_directory(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["lowrank", "compress", "--json", "--quiet", "--out",
                                      str(out), "--samples", "24", "--keep", "0.6"])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    stdout = capsys.readouterr().out
    summary = json.loads(stdout)  # exactly one JSON object
    assert REQUIRED_KEYS <= set(summary)
    assert abs(summary["keep_actual"] - 0.6) <= 0.005 * 0.6
    assert summary["params_after"] < summary["params_before"]
    assert {"cosine", "knn10_overlap"} <= set(summary["quality_after"])
    for name in ("model.safetensors", "lowrank.json", "report.json", "report.md",
                 "config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png"))
    report = json.loads((out / "report.json").read_text())
    # the default configuration: SVD-LLM, sensitivity allocation, embedding table in the budget
    assert summary["default_configuration"] is True
    assert "alloc=sensitivity" in summary["configuration"]
    assert len(report["result"]["modules"]) == 37
    assert report["result"]["modules"][0]["notes"]["kind"] == "embedding"

    # eval of the written directory against its base model
    monkeypatch.setattr(sys, "argv", ["lowrank", "eval", str(out), "--json", "--quiet"])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    evaluated = json.loads(capsys.readouterr().out)
    assert abs(evaluated["quality"]["cosine"] - summary["quality_after"]["cosine"]) < 1e-5

    # the markdown report can be re-rendered from report.json
    monkeypatch.setattr(sys, "argv", ["lowrank", "report", str(out)])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    markdown = capsys.readouterr().out
    assert "## Modules" in markdown and "spectra.png" in markdown


def test_inspect_json_and_plot(monkeypatch, capsys, tmp_path):
    plot = tmp_path / "spectra.png"
    monkeypatch.setattr(sys, "argv", ["lowrank", "inspect", "--json", "--keep", "0.5",
                                      "--plot", str(plot)])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    info = json.loads(capsys.readouterr().out)
    assert len(info["layers"]) == 36
    layer = info["layers"][0]
    assert 1 <= layer["effective_rank"] <= min(layer["shape"])
    assert 1 <= layer["stable_rank"] <= min(layer["shape"])
    assert abs(info["budget_preview"]["keep_actual"] - 0.5) <= 0.0025
    assert plot.is_file() and plot.stat().st_size > 1000


def test_load_is_bit_identical_and_dense_export_matches(tmp_path):
    loaded = load_model(None)
    texts = read_texts(None)[:16]
    result = lr.compress(loaded.model, lr.SVDLLM(keep=0.8), data=texts,
                         tokenizer=loaded.tokenizer)
    assert abs(result.keep_actual - 0.8) <= 0.004
    lr.save(loaded.model, tmp_path / "c")
    reloaded = lr.load(tmp_path / "c")
    batch = next(tokenize(read_texts(None, "evaluation")[:8], loaded.tokenizer, 64).batches(8))
    with torch.no_grad():
        a = hidden_states(loaded.model, batch)
        b = hidden_states(reloaded, batch)
        assert torch.equal(a, b)
        dense = lr.to_dense(reloaded)
        assert not any(isinstance(m, lr.LowRankLinear) for m in dense.modules())
        c = hidden_states(dense, batch)
    torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-4)
