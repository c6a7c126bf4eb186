"""`lowrank compress` / `lowrank eval` on Hugging Face vision CNNs (tiny random ResNet and
ConvNeXt saved to disk): JSON contract, parameter budget, reload identity, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_runner import run_cli  # tests/cli/cli_runner.py

import lowrank as lr
from lowrank.compress.conv import ConvFactorize


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                          layer_type="basic", image_size=32)  # 32x32 inputs keep it fast
    path = tmp_path_factory.mktemp("vision") / "resnet"
    ResNetModel(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def convnext_dir(tmp_path_factory):
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    torch.manual_seed(1)
    config = ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32,
                            layer_scale_init_value=1.0)  # the Linear layers matter
    path = tmp_path_factory.mktemp("vision") / "convnext"
    ConvNextModel(config).eval().save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(path)
    return path


def pooled(model, x):
    with torch.no_grad():
        return model(pixel_values=x).pooler_output


def test_conv_compress_reloads_identically_and_evals(monkeypatch, capsys, tmp_path, resnet_dir):
    from transformers import AutoModel

    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "compress", str(resnet_dir), "--method",
                                "conv", "--keep", "0.3", "--out", str(out), "--json", "-q")
    assert code == 0, err
    s = json.loads(stdout)
    assert (s["kind"], s["method"], s["default_configuration"]) == ("vision", "conv", False)
    # the kernels of the factorized convolutions are at most keep of the dense ones, and not
    # far below (ranks are integers; the 7x7 stem with 3 input channels may stay dense)
    assert 0.2 * s["targeted_params_before"] <= s["targeted_params_after"] \
        <= 0.3 * s["targeted_params_before"]
    assert s["params_before"] - s["params_after"] == \
        s["targeted_params_before"] - s["targeted_params_after"]
    assert set(s["quality_before"]) == set(s["quality_after"]) == \
        {"cosine", "knn10_overlap", "latency_s"}
    assert s["quality_before"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert 0 < s["quality_after"]["cosine"] < 1
    for name in ("model.safetensors", "lowrank.json", "config.json", "report.json",
                 "report.md"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["evaluation_images"] == 360
    assert report["data"]["image_size"] == [32, 32]

    # lr.load rebuilds the factorized ResNet; same outputs as compressing in memory
    reloaded = lr.load(out)
    in_memory = AutoModel.from_pretrained(resnet_dir).eval()
    lr.compress(in_memory, ConvFactorize(keep=0.3))
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(pooled(reloaded, x), pooled(in_memory, x), rtol=0, atol=1e-6)
    kinds = {type(m).__name__ for m in reloaded.modules()}
    assert "Tucker2Conv2d" in kinds

    # lowrank eval of the directory reproduces the quality that compress measured
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", str(out), "--json", "-q")
    assert code == 0, err
    e = json.loads(stdout)
    assert (e["kind"], e["images"], e["params"]) == ("vision", 360, s["params_after"])
    assert e["quality"]["cosine"] == pytest.approx(s["quality_after"]["cosine"], abs=1e-5)
    assert e["base_quality"]["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_default_on_vision_is_conv_with_measured_keeps(monkeypatch, capsys, tmp_path,
                                                       resnet_dir):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):  # every fifth held out: 32 to calibrate, 8 to evaluate
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            images / f"{i:02d}.jpg")
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "compress", str(resnet_dir), "--keep",
                                "0.5", "--data", str(images), "--out", str(out), "--json",
                                "-q")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["default_configuration"] is True and s["method"] == "conv"
    assert s["configuration"] == "conv (alloc=output-error)"
    assert s["targeted_params_after"] <= 0.5 * s["targeted_params_before"]
    report = json.loads((out / "report.json").read_text())
    assert (report["data"]["calibration_images"], report["data"]["evaluation_images"]) == (32, 8)
    keeps = report["result"]["allocation"]["keeps"]
    assert keeps and len(set(keeps.values())) > 1  # per-layer keeps, not one uniform keep
    # measured inside lr.compress: the config asked for the allocation, the result records it
    assert report["result"]["method"]["alloc"] == "output-error"
    assert report["result"]["allocation"]["allocator"] == "output-error"


def test_convnext_with_processor_svd_on_linears_and_cp(monkeypatch, capsys, tmp_path,
                                                        convnext_dir):
    out = tmp_path / "svd"
    code, stdout, err = run_cli(monkeypatch, capsys, "compress", str(convnext_dir), "--method",
                                "svd", "--keep", "0.5", "--out", str(out), "--json", "-q")
    assert code == 0, err
    s = json.loads(stdout)
    assert abs(s["keep_actual"] - 0.5) < 0.05 and s["quality_after"]["cosine"] < 1 - 1e-6
    assert (out / "preprocessor_config.json").is_file()
    reloaded = lr.load(out)
    assert "LowRankLinear" in {type(m).__name__ for m in reloaded.modules()}

    out = tmp_path / "cp"
    code, stdout, err = run_cli(monkeypatch, capsys, "compress", str(convnext_dir), "--method",
                                "conv", "--set", "decomposition=cp", "--keep", "0.5", "--out",
                                str(out), "--json", "-q")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["targeted_params_after"] <= 0.5 * s["targeted_params_before"]
    x = torch.randn(2, 3, 32, 32)
    from transformers import AutoModel

    in_memory = AutoModel.from_pretrained(convnext_dir).eval()
    lr.compress(in_memory, ConvFactorize(keep=0.5, decomposition="cp"))
    torch.testing.assert_close(pooled(lr.load(out), x), pooled(in_memory, x), rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize(("args", "needles"), [
    (["--method", "svdllm"], ["svdllm", "vision model", "--method conv"]),
    (["--method", "svd"], ["no nn.Linear", "--method conv"]),
    (["--method", "svd", "--alloc", "sensitivity"], ["sensitivity", "calibrates on text"]),
    (["--method", "conv", "--data", "__TEXT__"], ["not a directory", "PNG/JPEG"]),
    (["--method", "conv", "--finetune-steps", "5"], ["fine-tuning", "vision"]),
    (["--method", "conv", "--alloc", "energy"], ["output-error", "energy"]),
])
def test_bad_vision_input_one_line_exit_2(monkeypatch, capsys, tmp_path, resnet_dir, args,
                                          needles):
    text = tmp_path / "calib.txt"
    text.write_text("some text\n")
    out = tmp_path / "out"
    args = [str(text) if a == "__TEXT__" else a for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "compress", str(resnet_dir), *args, "--out",
                           str(out))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()


def test_vision_dir_without_weights_one_line_exit_2(monkeypatch, capsys, tmp_path, resnet_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((resnet_dir / "config.json").read_text())
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "compress", str(broken), "--method", "conv",
                           "--out", str(out))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "could not load model" in lines[0] and "model.safetensors" in lines[0]
    assert not out.exists()
