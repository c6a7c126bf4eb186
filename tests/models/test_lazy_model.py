"""LazyModel: blocks materialised from the shards on demand give the eagerly loaded model's
outputs; a checkpoint that does not match its config is refused before anything loads."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lowrank as lr
from lowrank.calib.data import tokenize
from lowrank.errors import ModelFileError
from lowrank.models.lazy import LazyModel
from lowrank.models.loading import load_lazy, load_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_llama, tokenizer):
    path = tmp_path_factory.mktemp("lazy") / "llama"
    tiny_llama.save_pretrained(str(path), max_shard_size="200KB")  # several shards + index
    tokenizer.save_pretrained(str(path))
    return path


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_lazy_blocks_start_on_meta_and_stream_equal_outputs(llama_dir, tokenizer, calib_texts):
    assert (llama_dir / "model.safetensors.index.json").is_file()
    lazy = LazyModel(llama_dir, kind="causal-lm")
    assert all(p.is_meta for p in lazy.model.model.layers.parameters())
    assert not lazy.model.model.embed_tokens.weight.is_meta
    batch = next(tokenize(calib_texts[:4], tokenizer, 32).batches(4))
    eager = load_model(str(llama_dir)).model
    with lazy.streaming() as model:
        out = _logits(model, batch)
    assert torch.equal(out, _logits(eager, batch))
    assert all(p.is_meta for p in lazy.model.model.layers.parameters())  # released again


def test_lazy_dtype_and_layerwise_compression_equal_eager(llama_dir, tokenizer, calib_texts):
    tokens = tokenize(calib_texts, tokenizer, 32)
    loaded = load_lazy(str(llama_dir), dtype="bfloat16")
    assert loaded.lazy is not None and loaded.model.model.norm.weight.dtype == torch.bfloat16
    eager = load_model(str(llama_dir), dtype="bfloat16").model
    lr.compress(loaded.lazy, lr.SVDLLM(keep=0.6), tokens)
    lr.compress(eager, lr.SVDLLM(keep=0.6), tokens, pipeline="whole")
    model = loaded.lazy.to_model()
    batch = next(tokens.batches(8))
    a, b = _logits(model, batch).float(), _logits(eager, batch).float()
    assert model.model.layers[0].self_attn.q_proj.A.dtype == torch.bfloat16
    assert float((a - b).norm() / b.norm()) < 1e-2  # bf16 rounding of the same factors


def test_whole_pipeline_refused_for_lazy(llama_dir, tokenizer, calib_texts):
    lazy = LazyModel(llama_dir, kind="causal-lm")
    with pytest.raises(lr.errors.ConfigError, match="layerwise"):
        lr.compress(lazy, lr.SVDLLM(keep=0.6), tokenize(calib_texts, tokenizer, 32),
                    pipeline="whole")
    with pytest.raises(ModelFileError, match="not final"):
        lazy.to_model()


def _single_file_copy(src, dst, edit):
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix == ".json" and "index" not in f.name:
            (dst / f.name).write_text(f.read_text())
    tensors = {}
    index = json.loads((src / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        tensors.update(load_file(str(src / shard)))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_missing_tensor_refused(llama_dir, tmp_path):
    bad = _single_file_copy(llama_dir, tmp_path / "missing",
                            lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ModelFileError, match=r"1 missing \(model.layers.1.mlp.up_proj.weight"):
        LazyModel(bad, kind="causal-lm")


def test_unexpected_tensor_refused(llama_dir, tmp_path):
    def add(t):
        t["model.layers.0.extra.weight"] = torch.zeros(2)

    bad = _single_file_copy(llama_dir, tmp_path / "unexpected", add)
    with pytest.raises(ModelFileError, match="unexpected"):
        LazyModel(bad, kind="causal-lm")


def test_wrong_shape_refused_when_the_block_loads(llama_dir, tmp_path):
    def shrink(t):
        t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:-1]

    lazy = LazyModel(_single_file_copy(llama_dir, tmp_path / "shape", shrink), kind="causal-lm")
    lazy.block(0)
    with pytest.raises(ModelFileError, match="up_proj.weight' has shape"):
        lazy.block(1)


def test_lazy_matches_resident_estimate(llama_dir, tokenizer, calib_texts, tiny_llama):
    """The block-local sensitivity estimate is the same whether the blocks stream from the
    shards or sit in memory."""
    from lowrank.blocks import ResidentBlocks
    from lowrank.compress.estimate import BlockProbe

    tokens = tokenize(calib_texts, tokenizer, 32)
    lazy = LazyModel(llama_dir, kind="causal-lm")
    eager = copy.deepcopy(tiny_llama)
    probe_lazy = BlockProbe(lazy, tokens)
    probe_eager = BlockProbe(ResidentBlocks(eager), tokens)
    name = "model.layers.1.mlp.down_proj"
    trial = torch.nn.Linear(256, 64, bias=False)
    with torch.no_grad():
        trial.weight.copy_(eager.get_submodule(name).weight * 0.5)
    lazy.block(1)
    a, b = probe_lazy(name, trial), probe_eager(name, trial)
    assert a > 0 and abs(a - b) <= 1e-6 * b
