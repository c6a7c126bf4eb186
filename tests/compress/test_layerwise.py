"""The layer-wise pipeline gives the whole-model pipeline's model: same ranks, outputs equal
within 1e-5 relative, for every factorization method and allocator, EoRA, CoSpaDi and MoDeGPT,
on a tiny BERT and a tiny Llama with grouped-query attention."""

from __future__ import annotations

import copy

import pytest
import torch

import lowrank as lr
from lowrank.calib.data import tokenize
from lowrank.errors import ConfigError

SEQ = 32

CONFIGS = {
    "svdllm-uniform": lambda: lr.SVDLLM(keep=0.6),
    "svdllm-sensitivity": lambda: lr.SVDLLM(keep=0.6, alloc="sensitivity", probe="estimate"),
    "svdllm-energy": lambda: lr.SVDLLM(keep=0.6, alloc="energy"),
    "svdllm-welore": lambda: lr.SVDLLM(keep=0.6, alloc="welore"),
    "svdllm-v2": lambda: lr.SVDLLM(keep=0.6, alloc="svdllm-v2"),
    "svdllm-sqrt": lambda: lr.SVDLLM(keep=0.6, alloc="sensitivity-sqrt", probe="estimate"),
    "asvd": lambda: lr.ASVD(keep=0.7, alloc="energy"),
    "fwsvd": lambda: lr.FWSVD(keep=0.7),
    "eora": lambda: lr.METHODS.get("eora")(rank=4),
    "cospadi": lambda: lr.METHODS.get("cospadi")(keep=0.7, iters=1),
    "modegpt": lambda: lr.METHODS.get("modegpt")(keep=0.7),
}


def _outputs(model, batch):
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _both(base, config_fn, tokens, tokenizer, **kwargs):
    whole, layer = copy.deepcopy(base), copy.deepcopy(base)
    rw = lr.compress(whole, config_fn(), tokens, pipeline="whole", tokenizer=tokenizer)
    rl = lr.compress(layer, config_fn(), tokens, pipeline="layerwise", tokenizer=tokenizer,
                     **kwargs)
    return whole, layer, rw, rl


@pytest.fixture(scope="module")
def tokens(tokenizer, calib_texts):
    return tokenize(calib_texts, tokenizer, SEQ)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_layerwise_equals_whole(name, family, tiny_bert, tiny_llama, tokens, tokenizer):
    base = tiny_bert if family == "bert" else tiny_llama
    whole, layer, rw, rl = _both(base, CONFIGS[name], tokens, tokenizer)
    assert rl.calibration["pipeline"] == "layerwise" and rw.calibration["pipeline"] == "whole"
    assert [m.rank for m in rw.modules] == [m.rank for m in rl.modules]
    assert rw.params_after == rl.params_after
    batch = next(tokens.batches(8))
    a, b = _outputs(whole, batch), _outputs(layer, batch)
    assert float((a - b).norm() / a.norm()) < 1e-5
    ref = _outputs(base, batch)
    assert float((a - ref).norm() / ref.norm()) > 1e-4  # the models were compressed


def test_layerwise_with_embedding_table(tiny_bert, tokens, tokenizer):
    make = lambda: lr.SVDLLM(keep=0.7, alloc="sensitivity", probe="estimate",  # noqa: E731
                             embeddings=True)
    whole, layer, rw, rl = _both(tiny_bert, make, tokens, tokenizer)
    assert [m.rank for m in rw.modules] == [m.rank for m in rl.modules]
    assert rw.modules[0].name == "embeddings.word_embeddings"
    batch = next(tokens.batches(8))
    a, b = _outputs(whole, batch), _outputs(layer, batch)
    assert float((a - b).norm() / a.norm()) < 1e-5


def test_sequential_calibrates_on_compressed_upstream(tiny_llama, tokens):
    """sequential=True collects the second block's statistics on the compressed first block's
    outputs: the first block is unchanged, the second differs from the original-input run."""
    plain, seq = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    lr.compress(plain, lr.SVDLLM(keep=0.6), tokens, pipeline="layerwise")
    lr.compress(seq, lr.SVDLLM(keep=0.6), tokens, pipeline="layerwise", sequential=True)
    first = "model.layers.0.self_attn.q_proj"
    second = "model.layers.1.mlp.down_proj"
    w = lambda m, n: m.get_submodule(n).dense_weight()  # noqa: E731
    assert torch.equal(w(plain, first), w(seq, first))
    assert not torch.allclose(w(plain, second), w(seq, second))


def test_layerwise_refusals(tiny_bert, tokens):
    model = copy.deepcopy(tiny_bert)
    with pytest.raises(ConfigError, match="outside them"):
        lr.compress(model, lr.SVDLLM(keep=0.6, targets=["pooler.dense"]), tokens,
                    pipeline="layerwise")
    with pytest.raises(ConfigError, match="probe='estimate'"):
        lr.compress(model, lr.SVDLLM(keep=0.6, alloc="sensitivity", probe="exact"), tokens,
                    pipeline="layerwise")
    with pytest.raises(ConfigError, match="pipeline must be one of"):
        lr.compress(model, lr.SVDLLM(keep=0.6), tokens, pipeline="blocks")
    with pytest.raises(ConfigError, match="layerwise"):
        lr.compress(model, lr.SVDLLM(keep=0.6), tokens, pipeline="whole", sequential=True)
