"""Sharded safetensors outputs: Hugging Face layout, round trips, refused corruptions, ties."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import lowrank
from lowrank import SVD
from lowrank.errors import ConfigError, ModelFileError
from lowrank.io.checkpoint import INDEX, MANIFEST, WEIGHTS
from lowrank.io.shards import ShardWriter, iter_tensors, open_tensor, stored_tensors

SHARD = 4 * 10**6  # the tiny Llama's embedding and head (7.8 MB each) get a shard apiece


def _logits(model: nn.Module, tokens) -> torch.Tensor:
    batch = next(tokens.batches(8))
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def _tensor_bytes(directory) -> dict[str, int]:
    """Bytes of every tensor stored in the directory's safetensors files."""
    sizes = {}
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                sizes[key] = tensor.numel() * tensor.element_size()
    return sizes


@pytest.fixture(scope="module")
def compressed_llama(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    lowrank.compress(model, SVD(keep=0.6))
    return model


@pytest.fixture(scope="module")
def sharded(compressed_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "llama"
    lowrank.save(compressed_llama, path, max_shard_bytes=SHARD)
    return path


def test_sharded_layout_follows_transformers(sharded, compressed_llama):
    index = json.loads((sharded / INDEX).read_text())
    assert not (sharded / WEIGHTS).exists()
    shards = sorted(set(index["weight_map"].values()))
    count = len(shards)
    assert count >= 3
    assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert sorted(p.name for p in sharded.glob("*.safetensors")) == shards
    assert not list(sharded.glob(".*"))  # no partial files left behind
    sizes = _tensor_bytes(sharded)
    assert index["metadata"]["total_size"] == sum(sizes.values())
    manifest = json.loads((sharded / MANIFEST).read_text())
    assert set(index["weight_map"]) == set(sizes) == set(manifest["tensors"])
    for name in shards:
        with safe_open(str(sharded / name), framework="pt") as f:
            keys = list(f.keys())
            assert f.metadata() == {"format": "pt"}
        assert all(index["weight_map"][k] == name for k in keys)
        # a shard exceeds the limit only when it holds one tensor that alone exceeds it
        assert sum(sizes[k] for k in keys) <= SHARD or len(keys) == 1
    state = compressed_llama.state_dict()
    for key, tensor in iter_tensors(stored_tensors(sharded)):
        assert tensor.dtype == state[key].dtype and torch.equal(tensor, state[key])


def test_sharded_load_is_bit_identical(sharded, compressed_llama, calib_tokens):
    loaded = lowrank.load(sharded, device="cpu")
    assert not any(p.is_meta for p in loaded.parameters())
    assert torch.equal(_logits(loaded, calib_tokens), _logits(compressed_llama, calib_tokens))
    assert loaded.lowrank_manifest["method"]["method"] == "svd"


def test_one_shard_is_a_single_file(compressed_llama, tmp_path, calib_tokens):
    lowrank.save(compressed_llama, tmp_path / "one")
    assert (tmp_path / "one" / WEIGHTS).is_file() and not (tmp_path / "one" / INDEX).exists()
    loaded = lowrank.load(tmp_path / "one")
    assert torch.equal(_logits(loaded, calib_tokens), _logits(compressed_llama, calib_tokens))


def test_transformers_reads_the_shards(tiny_llama, tmp_path, calib_tokens):
    """An uncompressed model saved sharded loads with plain ``from_pretrained``."""
    from transformers import LlamaForCausalLM

    lowrank.save(tiny_llama, tmp_path / "dense", max_shard_bytes=SHARD)
    assert (tmp_path / "dense" / INDEX).is_file()
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "dense").eval()
    assert torch.equal(_logits(hf, calib_tokens), _logits(tiny_llama, calib_tokens))


def test_tied_embeddings_stay_tied(tokenizer, tmp_path, calib_tokens):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=256,
                         max_position_embeddings=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    lowrank.compress(model, SVD(keep=0.6))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    lowrank.save(model, tmp_path / "tied", max_shard_bytes=SHARD // 40)
    weight_map = json.loads((tmp_path / "tied" / INDEX).read_text())["weight_map"]
    assert len(set(weight_map.values())) >= 3
    assert ("lm_head.weight" in weight_map) != ("model.embed_tokens.weight" in weight_map)
    loaded = lowrank.load(tmp_path / "tied")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(loaded, calib_tokens), _logits(model, calib_tokens))


def test_save_refuses_a_bad_shard_size(compressed_llama, tmp_path):
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ConfigError, match="max_shard_bytes must be a positive integer"):
            lowrank.save(compressed_llama, tmp_path / "out", max_shard_bytes=bad)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- corrupted shards


def _copy(sharded, tmp_path):
    return shutil.copytree(sharded, tmp_path / "copy")


def _rewrite_index(path, edit):
    index = json.loads((path / INDEX).read_text())
    edit(index)
    (path / INDEX).write_text(json.dumps(index), encoding="utf-8")
    return index


def _middle(path) -> tuple[str, str]:
    """A tensor of a shard that holds several, and that shard's name."""
    weight_map = json.loads((path / INDEX).read_text())["weight_map"]
    shard = max(set(weight_map.values()), key=list(weight_map.values()).count)
    return next(k for k, v in sorted(weight_map.items()) if v == shard), shard


def _refused(path, pattern: str) -> str:
    with pytest.raises(ModelFileError, match=pattern) as info:
        lowrank.load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("shard", ["../model-00001-of-00003.safetensors", "sub/x.safetensors",
                                   "..", ""])
def test_shard_name_outside_the_directory_is_refused(sharded, tmp_path, shard):
    path = _copy(sharded, tmp_path)
    key, _ = _middle(path)
    _rewrite_index(path, lambda index: index["weight_map"].update({key: shard}))
    message = _refused(path, "is not a plain file name inside the directory")
    assert key in message and repr(shard) in message


def test_listed_tensor_missing_from_its_shard(sharded, tmp_path):
    path = _copy(sharded, tmp_path)
    key, shard = _middle(path)
    tensors = load_file(str(path / shard))
    del tensors[key]
    save_file(tensors, str(path / shard), metadata={"format": "pt"})
    assert _refused(path, "lacks 1 tensor") == (
        f"{path / shard} lacks 1 tensor(s) that {INDEX} places there: {key}")


def test_missing_shard_file(sharded, tmp_path):
    path = _copy(sharded, tmp_path)
    key, shard = _middle(path)
    (path / shard).unlink()
    message = _refused(path, f"in shard {shard}, which is missing")
    assert key in message


def test_tensor_in_two_shards(sharded, tmp_path):
    path = _copy(sharded, tmp_path)
    key, shard = _middle(path)
    other = next(name for name in sorted({p.name for p in path.glob("model-*")}) if name != shard)
    tensors = load_file(str(path / other))
    tensors[key] = load_file(str(path / shard))[key]
    save_file(tensors, str(path / other), metadata={"format": "pt"})
    _refused(path, f"tensor '{key}' is stored in two shards")


def test_tensor_the_index_does_not_list(sharded, tmp_path):
    path = _copy(sharded, tmp_path)
    key, _ = _middle(path)
    _rewrite_index(path, lambda index: index["weight_map"].pop(key))
    _refused(path, f"1 stored tensor\\(s\\) are not listed in .*{INDEX}: {key}$")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"weight_map": []}', '{"weight_map": {}}'])
def test_malformed_index(sharded, tmp_path, text):
    path = _copy(sharded, tmp_path)
    (path / INDEX).write_text(text, encoding="utf-8")
    _refused(path, INDEX)


def test_no_weights_at_all(sharded, tmp_path):
    path = _copy(sharded, tmp_path)
    (path / INDEX).unlink()
    _refused(path, f"has no {WEIGHTS} \\(nor a sharded {INDEX}\\)")


def test_wrong_shape_names_its_shard(sharded, tmp_path):
    path = _copy(sharded, tmp_path)
    key, shard = _middle(path)
    tensors = load_file(str(path / shard))
    tensors[key] = tensors[key][..., :-1].clone()
    save_file(tensors, str(path / shard), metadata={"format": "pt"})
    message = _refused(path, "1 tensor has the wrong shape")
    assert message.startswith(f"{path / shard}: ") and key in message


def test_nan_names_its_shard(sharded, tmp_path):
    path = _copy(sharded, tmp_path)
    key, shard = _middle(path)
    tensors = load_file(str(path / shard))
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(path / shard), metadata={"format": "pt"})
    message = _refused(path, "1 tensor holds NaN or inf")
    assert message.startswith(f"{path / shard}: ") and f"{key} (1 of " in message


# ---------------------------------------------------------------------------- ShardWriter


def test_writer_splits_at_the_limit_and_keeps_dtypes(tmp_path):
    tensors = {f"t{i}": torch.full((10,), float(i), dtype=dtype)
               for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float16,
                                          torch.float32, torch.int64])}
    with ShardWriter(tmp_path, max_shard_bytes=50) as writer:
        for name, tensor in tensors.items():
            writer.add(name, tensor)
    files = sorted(p.name for p in tmp_path.iterdir())
    # 40 | 20+20 | 40 | 80: the int64 tensor alone exceeds the limit and gets its own shard
    assert files == [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)] + [INDEX]
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["metadata"] == {"total_size": 200}
    assert index["weight_map"]["t1"] == index["weight_map"]["t2"]
    stored = stored_tensors(tmp_path)
    assert {k: shape for k, (_, shape) in stored.items()} == dict.fromkeys(tensors, (10,))
    for name, tensor in iter_tensors(stored):
        assert tensor.dtype == tensors[name].dtype and torch.equal(tensor, tensors[name])
    assert torch.equal(open_tensor(stored["t3"][0], "t3"), tensors["t3"])


def test_writer_one_shard_and_index_metadata(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    writer = ShardWriter(one, max_shard_bytes=10**6, metadata={"format": "pt"})
    view = torch.arange(12.0)
    writer.add("a", view[:6])  # views of one storage are stored apart
    writer.add("b", view[6:])
    assert writer.close() == [WEIGHTS]
    assert torch.equal(load_file(str(one / WEIGHTS))["b"], view[6:])
    writer = ShardWriter(two, max_shard_bytes=8)
    writer.add("a", torch.zeros(2))
    writer.add("b", torch.ones(2))
    assert writer.close({"note": "x"}) == [f"model-0000{i}-of-00002.safetensors"
                                            for i in (1, 2)] + [INDEX]
    assert json.loads((two / INDEX).read_text())["metadata"] == {"note": "x", "total_size": 16}


def test_writer_refuses_duplicates_and_misuse(tmp_path):
    writer = ShardWriter(tmp_path, max_shard_bytes=1000)
    writer.add("a", torch.zeros(3))
    with pytest.raises(ConfigError, match="'a' was already added"):
        writer.add("a", torch.ones(3))
    writer.close()
    with pytest.raises(ConfigError, match="closed"):
        writer.add("b", torch.zeros(3))
    with pytest.raises(ConfigError, match="not a directory"):
        ShardWriter(tmp_path / "missing")
    with pytest.raises(ConfigError, match="positive integer"):
        ShardWriter(tmp_path, max_shard_bytes=0)


def test_writer_removes_its_shards_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, max_shard_bytes=8) as writer:
            for i in range(4):
                writer.add(f"t{i}", torch.zeros(2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_sharded_save_leaves_no_directory(compressed_llama, tmp_path, monkeypatch):
    calls = []

    def explode(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    import lowrank.io.shards as shards

    real = shards.write_safetensors
    monkeypatch.setattr(shards, "write_safetensors", explode)
    with pytest.raises(OSError, match="disk full"):
        lowrank.save(compressed_llama, tmp_path / "out", max_shard_bytes=SHARD)
    assert list(tmp_path.iterdir()) == []
