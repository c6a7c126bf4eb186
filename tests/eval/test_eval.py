"""Evaluation metrics: neighbour overlap, embedding agreement, perplexity, latency."""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch

import lowrank
from lowrank.calib import tokenize
from lowrank.errors import LowRankError
from lowrank.eval import (
    Evaluator,
    embed,
    embedding_agreement,
    forward_latency,
    knn_overlap,
    perplexity,
)

SEQ_LEN = 32


def _unit_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_knn_overlap_identical_is_one():
    e = _unit_rows(30, 16)
    assert knn_overlap(e, e) == 1.0
    assert knn_overlap(e, e, k=3) == 1.0
    assert knn_overlap(e, e.clone() * 2.5) == 1.0  # cosine neighbours ignore scale


def test_knn_overlap_bounds_and_small_inputs():
    a, b = _unit_rows(40, 8, 0), _unit_rows(40, 8, 1)
    v = knn_overlap(a, b, k=5)
    assert 0.0 <= v < 1.0
    assert knn_overlap(a[:1], b[:1]) == 1.0  # nothing to compare
    assert knn_overlap(a[:4], a[:4], k=10) == 1.0  # k clipped to n - 1
    # k = n - 1 takes every other item: always full overlap
    assert knn_overlap(a[:6], b[:6], k=5) == 1.0


def test_embedding_agreement():
    e = _unit_rows(20, 12)
    agree = embedding_agreement(e, e)
    assert agree["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert agree["knn10_overlap"] == 1.0
    assert embedding_agreement(e, -e)["cosine"] == pytest.approx(-1.0, abs=1e-6)
    other = embedding_agreement(e, _unit_rows(20, 12, 5))
    assert -1.0 <= other["cosine"] < 0.9


def test_embed_tiny_bert(tiny_bert, tokenizer, eval_texts):
    tokens = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)
    e = embed(tiny_bert, tokens, batch_size=3)
    assert e.shape == (len(eval_texts), tiny_bert.config.hidden_size)
    assert e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(eval_texts)), rtol=0, atol=1e-5)
    # batching does not change the embeddings (padding is masked out of the mean)
    torch.testing.assert_close(embed(tiny_bert, tokens, batch_size=8), e, rtol=1e-4, atol=1e-5)


def test_perplexity_tiny_llama(tiny_llama, tokenizer, eval_texts):
    tokens = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)
    ppl = perplexity(tiny_llama, tokens, batch_size=4)
    assert math.isfinite(ppl) and ppl > 1.0
    # a random model is roughly uniform over the vocabulary: far from perfect, not absurd
    assert ppl < 10 * tokenizer.vocab_size
    assert perplexity(tiny_llama, tokens, batch_size=8) == pytest.approx(ppl, rel=1e-4)


def test_evaluator_encoder(tiny_bert, tokenizer, eval_texts):
    tokens = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)
    evaluator = Evaluator("encoder", tokens, latency_batch=4)
    with pytest.raises(RuntimeError, match="reference"):
        evaluator.measure(tiny_bert)
    ref = evaluator.reference(tiny_bert)
    assert ref["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert ref["knn10_overlap"] == 1.0
    assert ref["latency_s"] > 0
    compressed = copy.deepcopy(tiny_bert)
    lowrank.compress(compressed, lowrank.SVD(keep=0.3))
    after = evaluator.measure(compressed)
    assert -1.0 <= after["cosine"] < 1.0
    assert 0.0 <= after["knn10_overlap"] <= 1.0


def test_evaluator_causal_lm(tiny_llama, tokenizer, eval_texts):
    tokens = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)
    result = Evaluator("causal-lm", tokens, latency_batch=2).reference(tiny_llama)
    assert math.isfinite(result["perplexity"]) and result["perplexity"] > 1
    assert result["latency_s"] > 0


def test_forward_latency(tiny_bert, tokenizer, eval_texts):
    batch = next(tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN).batches(2))
    t = forward_latency(tiny_bert, batch, repeats=3, warmup=1)
    assert math.isfinite(t) and t > 0


def _poisoned(model: torch.nn.Module, name: str) -> torch.nn.Module:
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.get_parameter(name)[0] = float("nan")
    return model


def test_evaluator_refuses_nan_cosine(tiny_bert, tokenizer, eval_texts):
    tokens = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)
    evaluator = Evaluator("encoder", tokens, latency_batch=4)
    evaluator.reference(tiny_bert)
    broken = _poisoned(tiny_bert, "encoder.layer.1.output.dense.weight")
    with pytest.raises(LowRankError) as info:
        evaluator.measure(broken)
    assert str(info.value) == (
        "cosine is nan: the model's outputs contain non-finite values (NaN or inf) on the "
        "evaluation data; expected finite outputs (are its weights corrupt or overflowing its "
        "dtype?)")
    assert evaluator.measure(tiny_bert, latency=False)["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_evaluator_refuses_non_finite_reference(tiny_bert, tokenizer, eval_texts):
    tokens = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)
    evaluator = Evaluator("encoder", tokens, latency_batch=4)
    broken = _poisoned(tiny_bert, "embeddings.LayerNorm.bias")
    with pytest.raises(LowRankError, match=r"^cosine and knn10_overlap cannot be measured: "
                                           r"the reference \(original\) model's outputs "
                                           "contain non-finite values"):
        evaluator.reference(broken)
    assert evaluator.reference_embeddings is None


def test_evaluator_refuses_nan_perplexity(tiny_llama, tokenizer, eval_texts):
    tokens = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)
    evaluator = Evaluator("causal-lm", tokens, latency_batch=2)
    broken = _poisoned(tiny_llama, "model.layers.0.mlp.down_proj.weight")
    assert math.isnan(perplexity(broken, tokens))  # the metric itself, for direct callers
    with pytest.raises(LowRankError, match=r"^perplexity is nan: the reference \(original\) "
                                           "model's outputs contain non-finite values"):
        evaluator.reference(broken)
    with pytest.raises(LowRankError, match=r"^perplexity is nan: the model's outputs"):
        evaluator.measure(broken, latency=False)


def test_perplexity_overflow_is_a_clear_error(tiny_llama, tokenizer, eval_texts, monkeypatch):
    tokens = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)

    def huge_loss(_model, batch):
        n = int(batch.attention_mask.sum())
        return torch.tensor(800.0 * n), n

    module = importlib.import_module("lowrank.eval.perplexity")  # the name is shadowed
    monkeypatch.setattr(module, "causal_lm_loss", huge_loss)
    with pytest.raises(LowRankError, match="perplexity overflows: the mean next-token negative "
                                           "log-likelihood is 800 nats"):
        perplexity(tiny_llama, tokens)
