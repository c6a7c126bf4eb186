"""The input-embedding table inside any factorization's budget (``embeddings=True``)."""

from __future__ import annotations

import copy

import pytest
import torch

import lowrank
from lowrank.compress.embedding import ties_input_embeddings
from lowrank.defaults import describe_config, table_compressible
from lowrank.nn import FactorizedEmbedding


@pytest.fixture(scope="module")
def bert_tokens(tiny_bert, tokenizer, calib_texts):
    from lowrank.calib import tokenize

    return tokenize(calib_texts, tokenizer, seq_len=32)


@pytest.mark.parametrize("alloc", ["uniform", "sensitivity"])
def test_svdllm_with_the_table_meets_one_budget(tiny_bert, tokenizer, bert_tokens, alloc):
    model = copy.deepcopy(tiny_bert)
    config = lowrank.SVDLLM(keep=0.6, alloc=alloc, embeddings=True)
    result = lowrank.compress(model, config, data=bert_tokens, tokenizer=tokenizer)
    table = tiny_bert.get_input_embeddings().weight.numel()
    linears = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                  for m in tiny_bert.modules() if isinstance(m, torch.nn.Linear)
                  and m is not tiny_bert.pooler.dense)
    assert result.targeted_params_before == table + linears
    assert abs(result.keep_actual - 0.6) <= 0.005
    assert result.modules[0].notes["kind"] == "embedding"
    if alloc == "sensitivity":  # the table was probed like every linear
        assert result.modules[0].notes["sensitivity"] > 0
        assert set(result.allocation["details"]["sensitivity"]) == {m.name for m in
                                                                    result.modules}
    emb = model.get_input_embeddings()
    if result.modules[0].rank is not None:
        assert isinstance(emb, FactorizedEmbedding) and emb.rank == result.modules[0].rank
    # the parameter accounting is the model's own
    assert result.params_after == sum(p.numel() for p in model.parameters())


def test_full_rank_table_reproduces_lookups(tiny_bert, tokenizer, bert_tokens):
    """Oracle: at the full rank the factorized table equals the original rows."""
    model = copy.deepcopy(tiny_bert)
    d = tiny_bert.get_input_embeddings().embedding_dim
    from lowrank.compress.embedding import embedding_pca

    stats = lowrank.calibrate(tiny_bert, lowrank.SVDLLM(), bert_tokens)
    pca, _ = embedding_pca(model.get_input_embeddings(), stats, 0.1)
    full = pca.module(d, model.get_input_embeddings())
    ids = torch.arange(tiny_bert.get_input_embeddings().num_embeddings)
    torch.testing.assert_close(full(ids), tiny_bert.get_input_embeddings()(ids), atol=1e-5,
                               rtol=1e-5)


def test_probe_measures_the_quality_metric(tiny_bert, tiny_llama, bert_tokens, tokenizer,
                                           calib_texts):
    """The sensitivity probe: zero for an identical replacement, positive for a damaged one,
    and it restores the module it swapped."""
    from lowrank.calib import tokenize
    from lowrank.compress.probe import OutputProbe, probe_passages

    for model, tokens in [(copy.deepcopy(tiny_bert), bert_tokens),
                          (copy.deepcopy(tiny_llama), tokenize(calib_texts, tokenizer, 32))]:
        name, lin = next((n, m) for n, m in model.named_modules()
                         if n.endswith(("layer.0.output.dense", "layers.0.mlp.down_proj")))
        probe = OutputProbe(model, probe_passages(tokens, 8))
        assert probe(name, copy.deepcopy(lin)) == pytest.approx(0.0, abs=1e-6)
        damaged = copy.deepcopy(lin)
        with torch.no_grad():
            damaged.weight.mul_(5.0)
        assert probe(name, damaged) > 1e-4
        assert model.get_submodule(name) is lin
        assert len(probe.passages) == 8


def test_default_configuration_drops_tied_tables(tiny_bert, tiny_llama):
    assert table_compressible(tiny_bert)
    tied = copy.deepcopy(tiny_llama)
    tied.lm_head.weight = tied.get_input_embeddings().weight
    assert ties_input_embeddings(tied) and not table_compressible(tied)
    assert describe_config(lowrank.SVDLLM(keep=0.5)) == "svdllm"
    assert describe_config(lowrank.SVDLLM(alloc="sensitivity", embeddings=True)) == \
        "svdllm (alloc=sensitivity, embeddings=True)"
