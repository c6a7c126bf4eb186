"""The lowrank checkpoint directory: save/load round trips, validation errors, atomicity."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import lowrank
from lowrank import SVD, LowRankLinear
from lowrank.errors import ModelFileError
from lowrank.io.atomic import atomic_directory
from lowrank.io.checkpoint import FORMAT_VERSION, MANIFEST, WEIGHTS

KEEP = 0.6


def _outputs(model: nn.Module, tokens) -> torch.Tensor:
    batch = next(tokens.batches(8))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _compressed(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    lowrank.compress(model, SVD(keep=KEEP))
    return model


@pytest.fixture(scope="module")
def saved_bert(tiny_bert, tmp_path_factory):
    model = _compressed(tiny_bert)
    path = tmp_path_factory.mktemp("ckpt") / "bert"
    assert lowrank.save(model, path) == path
    return model, path


def _check_round_trip(model, path, tokens):
    files = {p.name for p in path.iterdir()}
    assert {WEIGHTS, MANIFEST, "config.json"} <= files
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "lowrank" and manifest["format_version"] == FORMAT_VERSION
    factored = {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    assert set(manifest["modules"]) == set(factored)
    for name, entry in manifest["modules"].items():
        assert entry["rank"] == factored[name].rank
    assert manifest["method"]["method"] == "svd"
    loaded = lowrank.load(path)
    assert not loaded.training
    for name, module in factored.items():
        other = loaded.get_submodule(name)
        assert isinstance(other, LowRankLinear) and other.rank == module.rank
        assert torch.equal(other.A, module.A) and torch.equal(other.B, module.B)
    expected = _outputs(model, tokens)
    got = _outputs(loaded, tokens)
    assert torch.equal(got, expected)
    assert loaded.lowrank_manifest["method"]["method"] == "svd"
    dense = lowrank.to_dense(loaded)
    assert not any(isinstance(m, LowRankLinear) for m in dense.modules())
    torch.testing.assert_close(_outputs(dense, tokens), expected, rtol=1e-5, atol=1e-5)


def test_bert_round_trip(saved_bert, calib_tokens):
    model, path = saved_bert
    _check_round_trip(model, path, calib_tokens)


def test_llama_round_trip(tiny_llama, tmp_path, calib_tokens):
    """A compressed causal LM saved with plain ``lowrank.save`` loads back as a causal LM."""
    model = _compressed(tiny_llama)
    lowrank.save(model, tmp_path / "llama")
    _check_round_trip(model, tmp_path / "llama", calib_tokens)


def test_llama_round_trip_with_base_kind(tiny_llama, tmp_path, calib_tokens):
    model = _compressed(tiny_llama)
    lowrank.save(model, tmp_path / "llama", base={"kind": "causal-lm", "name": "tiny"})
    manifest = json.loads((tmp_path / "llama" / MANIFEST).read_text())
    assert manifest["base_model"] == {"kind": "causal-lm", "name": "tiny"}
    _check_round_trip(model, tmp_path / "llama", calib_tokens)


def test_plain_module_with_skeleton(tmp_path):
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))

    model = net()
    lowrank.compress(model, SVD(keep=0.5))
    assert isinstance(model[0], LowRankLinear) and isinstance(model[2], LowRankLinear)
    lowrank.save(model, tmp_path / "net")
    assert not (tmp_path / "net" / "config.json").exists()
    with pytest.raises(ModelFileError, match="config.json"):
        lowrank.load(tmp_path / "net")
    loaded = lowrank.load(tmp_path / "net", model=net())
    x = torch.randn(5, 32)
    assert torch.equal(loaded(x), model(x))


def test_save_replaces_existing_directory(tiny_bert, tmp_path):
    """A foreign directory only with overwrite=True; a previous save without it."""
    from lowrank.errors import OutputError

    path = tmp_path / "out"
    path.mkdir()
    (path / "stale.txt").write_text("old")
    with pytest.raises(OutputError, match="overwrite"):
        lowrank.save(_compressed(tiny_bert), path)
    assert (path / "stale.txt").read_text() == "old"
    lowrank.save(_compressed(tiny_bert), path, overwrite=True)
    assert not (path / "stale.txt").exists()
    lowrank.save(_compressed(tiny_bert), path)  # a previous lowrank output: replaced
    assert (path / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------- load errors


def _copy_checkpoint(saved, tmp_path):
    import shutil

    _, path = saved
    dest = tmp_path / "copy"
    shutil.copytree(path, dest)
    return dest


def test_load_missing_directory(tmp_path):
    with pytest.raises(ModelFileError, match="not a directory"):
        lowrank.load(tmp_path / "missing")


def test_load_missing_manifest(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    (path / MANIFEST).unlink()
    with pytest.raises(ModelFileError, match=MANIFEST):
        lowrank.load(path)


def test_load_malformed_json(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    (path / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        lowrank.load(path)


def _edit_manifest(path, **changes):
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return manifest


def test_load_newer_format_version(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    _edit_manifest(path, format_version=99)
    with pytest.raises(ModelFileError, match="format_version 99"):
        lowrank.load(path)


@pytest.mark.parametrize("changes", [
    {"format": "other"}, {"format_version": "1"}, {"format_version": 0}, {"modules": []},
])
def test_load_invalid_manifest_fields(saved_bert, tmp_path, changes):
    path = _copy_checkpoint(saved_bert, tmp_path)
    _edit_manifest(path, **changes)
    with pytest.raises(ModelFileError):
        lowrank.load(path)


def test_load_malformed_module_entry(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    name = next(iter(manifest["modules"]))
    manifest["modules"][name]["rank"] = -3
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ModelFileError, match="malformed entry"):
        lowrank.load(path)


def test_load_tensor_listed_but_missing(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    _edit_manifest(path, tensors=manifest["tensors"] + ["encoder.layer.9.extra.weight"])
    with pytest.raises(ModelFileError, match="encoder.layer.9.extra.weight"):
        lowrank.load(path)


def test_load_tensor_removed_from_weights(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    tensors = load_file(str(path / WEIGHTS))
    victim = "encoder.layer.0.attention.self.query.A"
    del tensors[victim]
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match=f"lacks 1 tensor named in {MANIFEST}: {victim}$"):
        lowrank.load(path)


def test_load_missing_or_corrupt_weights(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    (path / WEIGHTS).write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="safetensors"):
        lowrank.load(path)
    (path / WEIGHTS).unlink()
    with pytest.raises(ModelFileError, match=WEIGHTS):
        lowrank.load(path)


def test_load_manifest_names_unknown_module(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    entry = next(iter(manifest["modules"].values()))
    manifest["modules"]["encoder.nothing_here"] = entry
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ModelFileError, match="nothing_here"):
        lowrank.load(path)


def _edit_weights(saved, tmp_path, edit):
    path = _copy_checkpoint(saved, tmp_path)
    tensors = load_file(str(path / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})
    return path


def _one_line_error(path) -> str:
    with pytest.raises(ModelFileError) as info:
        lowrank.load(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_load_refuses_nan_and_inf(saved_bert, tmp_path):
    def poison(tensors):
        tensors["encoder.layer.0.attention.self.query.A"][0, :3] = float("nan")
        tensors["pooler.dense.bias"][1] = float("inf")

    path = _edit_weights(saved_bert, tmp_path, poison)
    numel = load_file(str(path / WEIGHTS))["encoder.layer.0.attention.self.query.A"].numel()
    message = _one_line_error(path)
    assert message.startswith(f"{path / WEIGHTS}: 2 tensors hold NaN or inf: ")
    assert f"encoder.layer.0.attention.self.query.A (3 of {numel} values)" in message
    assert "pooler.dense.bias (1 of 64 values)" in message


def test_load_refuses_a_single_nan(saved_bert, tmp_path):
    def poison(tensors):
        tensors["embeddings.LayerNorm.weight"][5] = float("-inf")

    message = _one_line_error(_edit_weights(saved_bert, tmp_path, poison))
    assert ": 1 tensor holds NaN or inf: embeddings.LayerNorm.weight (1 of 64 values)" in message


def test_load_names_a_factor_of_the_wrong_shape(saved_bert, tmp_path):
    victim = "encoder.layer.0.attention.self.query.A"
    shapes = {}

    def shrink(tensors):
        shapes["expected"] = tuple(tensors[victim].shape)
        tensors[victim] = tensors[victim][:-1].clone()

    path = _edit_weights(saved_bert, tmp_path, shrink)
    rank, cols = shapes["expected"]
    message = _one_line_error(path)
    assert message == (f"{path / WEIGHTS}: 1 tensor has the wrong shape for the model "
                       f"described by {MANIFEST}: {victim} expected ({rank}, {cols}), stored "
                       f"({rank - 1}, {cols})")


def test_load_lists_the_first_wrong_shapes_and_counts_them(saved_bert, tmp_path):
    def shrink(tensors):
        for name in [k for k in tensors if k.endswith(".B")]:
            tensors[name] = tensors[name][:, :-1].clone()

    path = _edit_weights(saved_bert, tmp_path, shrink)
    count = sum(k.endswith(".B") for k in load_file(str(path / WEIGHTS)))
    message = _one_line_error(path)
    assert f": {count} tensors have the wrong shape" in message
    assert message.count(" expected (") == 3 and message.endswith(f"and {count - 3} more")


def test_load_names_unexpected_tensors(saved_bert, tmp_path):
    def add(tensors):
        tensors["encoder.bogus.weight"] = torch.zeros(2)
        tensors["encoder.other.weight"] = torch.zeros(2)

    message = _one_line_error(_edit_weights(saved_bert, tmp_path, add))
    assert message.endswith(f"does not match the model described by {MANIFEST}: 2 unexpected "
                            "tensors (encoder.bogus.weight, encoder.other.weight)")


def test_load_names_missing_tensors_the_manifest_does_not_list(saved_bert, tmp_path):
    victim = "encoder.layer.1.output.LayerNorm.bias"
    path = _copy_checkpoint(saved_bert, tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    _edit_manifest(path, tensors=[k for k in manifest["tensors"] if k != victim])
    tensors = load_file(str(path / WEIGHTS))
    del tensors[victim]
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})
    assert _one_line_error(path).endswith(f"1 missing tensor ({victim})")


def test_load_lacking_listed_tensors_says_how_many(saved_bert, tmp_path):
    path = _copy_checkpoint(saved_bert, tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    ghosts = [f"encoder.ghost{i}.weight" for i in range(7)]
    _edit_manifest(path, tensors=manifest["tensors"] + ghosts)
    message = _one_line_error(path)
    assert f"lacks 7 tensors named in {MANIFEST}: " in message
    assert message.endswith("encoder.ghost4.weight and 2 more")


# ------------------------------------------------------------------------------ atomicity


def test_atomic_directory_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(dest) as tmp:
            (tmp / "partial.bin").write_bytes(b"123")
            raise RuntimeError("boom")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_failure_keeps_previous(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(dest, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in dest.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_refuses_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    from lowrank.errors import OutputError

    with pytest.raises(OutputError, match="is a file"):
        with atomic_directory(target, overwrite=True):
            pass


def test_save_failure_leaves_no_directory(tiny_bert, tmp_path, monkeypatch):
    def explode(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lowrank.io.shards.write_safetensors", explode)
    with pytest.raises(OSError, match="disk full"):
        lowrank.save(_compressed(tiny_bert), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
