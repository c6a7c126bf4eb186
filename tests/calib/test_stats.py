"""Calibration statistics: shared input sites, Grams of real tokens, merge, save/load, Fisher."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank.calib import (
    CalibrationStats,
    collect_fisher,
    collect_statistics,
    shared_input_sites,
    tokenize,
)
from lowrank.errors import DataError, ModelFileError
from lowrank.surgery import select_linears

SEQ_LEN = 32


def _independent_grams(model: nn.Module, modules: dict[str, nn.Linear], texts, tokenizer):
    """Per module: sum of x x^T and count over every real token, each passage run alone and
    unpadded, captured by our own hooks (float64)."""
    grams = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64)
             for n, m in modules.items()}
    counts = dict.fromkeys(modules, 0)

    def make(name):
        def hook(_m, args):
            x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float64)
            grams[name] += x.T @ x
            counts[name] += x.shape[0]
        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, truncation=True, max_length=SEQ_LEN,
                                return_tensors="pt")["input_ids"]
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    return grams, counts


@pytest.fixture(scope="module")
def bert_stats(tiny_bert, calib_tokens):
    modules = select_linears(tiny_bert)
    return collect_statistics(tiny_bert, modules, calib_tokens, batch_size=8)


@pytest.fixture(scope="module")
def llama_stats(tiny_llama, calib_tokens):
    modules = select_linears(tiny_llama)
    return collect_statistics(tiny_llama, modules, calib_tokens, batch_size=8)


def test_bert_sites(bert_stats):
    for i in range(2):
        p = f"encoder.layer.{i}."
        sites = bert_stats.module_site
        q = sites[p + "attention.self.query"]
        assert q == p + "attention.self.query"
        assert sites[p + "attention.self.key"] == q == sites[p + "attention.self.value"]
        others = {sites[p + s] for s in ("attention.output.dense", "intermediate.dense",
                                          "output.dense")}
        assert len(others) == 3 and q not in others
    assert len(bert_stats.sites) == 8


def test_llama_sites(llama_stats):
    sites = llama_stats.module_site
    for i in range(2):
        p = f"model.layers.{i}."
        q = sites[p + "self_attn.q_proj"]
        assert sites[p + "self_attn.k_proj"] == q == sites[p + "self_attn.v_proj"]
        g = sites[p + "mlp.gate_proj"]
        assert sites[p + "mlp.up_proj"] == g
        assert len({q, g, sites[p + "self_attn.o_proj"], sites[p + "mlp.down_proj"]}) == 4
    assert len(llama_stats.sites) == 8


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_gram_equals_real_token_inputs(which, request, tokenizer, calib_texts, calib_tokens):
    model = request.getfixturevalue(f"tiny_{which}")
    stats = request.getfixturevalue(f"{which}_stats")
    modules = select_linears(model)
    grams, counts = _independent_grams(model, modules, calib_texts, tokenizer)
    for name in modules:
        site = stats.site(name)
        assert site.gram.dtype == torch.float64
        assert site.tokens == counts[name] == calib_tokens.num_tokens
        ref = grams[name]
        err = float((site.gram - ref).norm() / ref.norm())
        assert err <= 1e-6, (name, err)
    assert stats.meta["tokens"] == calib_tokens.num_tokens
    assert stats.meta["samples"] == len(calib_tokens)
    assert stats.meta["seq_len"] == SEQ_LEN


def test_abs_sum_is_sum_of_abs_inputs(tiny_llama, llama_stats, calib_tokens):
    name = "model.layers.1.mlp.down_proj"
    module = tiny_llama.get_submodule(name)
    total = torch.zeros(module.in_features, dtype=torch.float64)

    def hook(_m, args):
        nonlocal total
        x = args[0]
        mask = current.reshape(-1).bool()
        total += x.reshape(-1, x.shape[-1])[mask].double().abs().sum(0)

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in calib_tokens.batches(5, trim=False):
                current = batch.attention_mask
                tiny_llama(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    site = llama_stats.site(name)
    torch.testing.assert_close(site.abs_sum, total, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(site.abs_mean, total / calib_tokens.num_tokens, rtol=1e-5,
                               atol=1e-10)


def test_padding_never_reaches_the_gram(tiny_bert, tokenizer):
    """The same passages padded to two different lengths give the same statistics."""
    texts = ["A short passage.", "Another, rather longer passage with several more tokens."]
    modules = select_linears(tiny_bert, "query")
    a = collect_statistics(tiny_bert, modules, tokenize(texts, tokenizer, seq_len=16))
    b = collect_statistics(tiny_bert, modules, tokenize(texts, tokenizer, seq_len=32))
    for key in a.sites:
        assert a.sites[key].tokens == b.sites[key].tokens
        torch.testing.assert_close(a.sites[key].gram, b.sites[key].gram, rtol=1e-6, atol=1e-8)


def test_merge_equals_union(tiny_llama, calib_tokens, llama_stats):
    modules = select_linears(tiny_llama)
    half = len(calib_tokens) // 2
    first = type(calib_tokens)(calib_tokens.input_ids[:half], calib_tokens.attention_mask[:half],
                               calib_tokens.texts[:half])
    second = type(calib_tokens)(calib_tokens.input_ids[half:],
                                calib_tokens.attention_mask[half:], calib_tokens.texts[half:])
    a = collect_statistics(tiny_llama, modules, first, batch_size=8)
    b = collect_statistics(tiny_llama, modules, second, batch_size=8)
    merged = a.merge(b)
    assert merged is a
    assert merged.module_site == llama_stats.module_site
    for key, site in llama_stats.sites.items():
        m = merged.sites[key]
        assert m.tokens == site.tokens
        # float32 per-batch products: different batch splits round differently (~1e-6 rel)
        scale = float(site.gram.abs().max())
        torch.testing.assert_close(m.gram, site.gram, rtol=2e-5, atol=2e-5 * scale)
        torch.testing.assert_close(m.abs_sum, site.abs_sum, rtol=1e-6, atol=1e-8)


def test_merge_rejects_different_modules(tiny_llama, calib_tokens, llama_stats):
    other = collect_statistics(tiny_llama, select_linears(tiny_llama, "q_proj"), calib_tokens)
    with pytest.raises(DataError, match="different modules"):
        copy.deepcopy(llama_stats).merge(other)


def test_merge_does_not_alias_other_shards(tiny_llama, calib_tokens):
    """Merging must leave the merged-in shard untouched, also after later merges."""
    modules = select_linears(tiny_llama, "down_proj")
    first = type(calib_tokens)(calib_tokens.input_ids[:12], calib_tokens.attention_mask[:12],
                               calib_tokens.texts[:12])
    second = type(calib_tokens)(calib_tokens.input_ids[12:], calib_tokens.attention_mask[12:],
                                calib_tokens.texts[12:])
    total = collect_statistics(tiny_llama, modules, first)  # no Fisher
    shard_b = collect_statistics(tiny_llama, modules, second, fisher_loss="causal-lm",
                                 fisher_batch_size=12)
    shard_c = copy.deepcopy(shard_b)
    snapshot = copy.deepcopy(shard_b)
    total.merge(shard_b).merge(shard_c)
    for key, f in snapshot.fisher.items():
        assert torch.equal(shard_b.fisher[key].row_sum, f.row_sum)
        assert torch.equal(shard_b.fisher[key].col_sum, f.col_sum)
        assert shard_b.fisher[key].batches == f.batches
        torch.testing.assert_close(total.fisher[key].row_sum, 2 * f.row_sum)
    for key, site in snapshot.sites.items():
        assert torch.equal(shard_b.sites[key].gram, site.gram)


def test_gram_root_is_cached_and_reset_by_merge(llama_stats):
    stats = copy.deepcopy(llama_stats)
    name = "model.layers.0.self_attn.k_proj"
    r1 = stats.gram_root(name, 1e-6)
    assert stats.gram_root("model.layers.0.self_attn.q_proj", 1e-6) is r1  # same site
    S = r1.matrix
    torch.testing.assert_close(S @ S.T, stats.site(name).gram, rtol=1e-8,
                               atol=1e-6 * float(stats.site(name).gram.abs().max()))
    stats.merge(copy.deepcopy(llama_stats))
    r2 = stats.gram_root(name, 1e-6)
    assert r2 is not r1
    torch.testing.assert_close(r2.eigenvalues, 2 * r1.eigenvalues, rtol=1e-8, atol=0)


def test_site_lookup_error(llama_stats):
    with pytest.raises(DataError, match="no calibration statistics"):
        llama_stats.site("lm_head")


def test_save_load_round_trip(tmp_path, tiny_llama, calib_tokens):
    modules = select_linears(tiny_llama, ["q_proj", "down_proj"])
    stats = collect_statistics(tiny_llama, modules, calib_tokens, fisher_loss="causal-lm",
                               batch_size=8, fisher_batch_size=12)
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    back = CalibrationStats.load(path)
    assert back.module_site == stats.module_site
    assert back.meta == stats.meta
    assert set(back.sites) == set(stats.sites)
    for key, s in stats.sites.items():
        assert torch.equal(back.sites[key].gram, s.gram)
        assert torch.equal(back.sites[key].abs_sum, s.abs_sum)
        assert back.sites[key].tokens == s.tokens
    assert set(back.fisher) == set(stats.fisher) == set(modules)
    for key, f in stats.fisher.items():
        assert torch.equal(back.fisher[key].row_sum, f.row_sum)
        assert torch.equal(back.fisher[key].col_sum, f.col_sum)
        assert back.fisher[key].batches == f.batches == 2


def test_load_errors(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        CalibrationStats.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelFileError, match="not a lowrank statistics file"):
        CalibrationStats.load(bad)


def _check_fisher(fisher, modules):
    assert set(fisher) == set(modules)
    for name, f in fisher.items():
        lin = modules[name]
        assert f.row_sum.shape == (lin.out_features,) and f.col_sum.shape == (lin.in_features,)
        assert f.row_sum.dtype == torch.float64
        assert torch.isfinite(f.row_sum).all() and torch.isfinite(f.col_sum).all()
        assert (f.row_sum >= 0).all() and (f.col_sum >= 0).all()
        assert float(f.row_sum.sum()) > 0
        # both reductions sum the same squared gradients
        assert float(f.row_sum.sum()) == pytest.approx(float(f.col_sum.sum()), rel=1e-10)
        assert f.batches >= 1


def test_fisher_contrastive_bert(tiny_bert, tokenizer, calib_tokens):
    model = copy.deepcopy(tiny_bert)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    modules = select_linears(model)
    stats = collect_statistics(model, modules, calib_tokens, fisher_loss="contrastive",
                               tokenizer=tokenizer, fisher_batch_size=8)
    _check_fisher(stats.fisher, modules)
    assert stats.meta["fisher_loss"] == "contrastive"
    assert all(f.batches == 3 for f in stats.fisher.values())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())


def test_fisher_causal_lm_llama(tiny_llama, calib_tokens):
    model = copy.deepcopy(tiny_llama)
    modules = select_linears(model)
    fisher = collect_fisher(model, modules, calib_tokens, "causal-lm", batch_size=12)
    _check_fisher(fisher, modules)
    assert all(f.batches == 2 for f in fisher.values())
    assert all(p.grad is None for p in model.parameters())


def test_fisher_errors(tiny_bert, calib_tokens):
    modules = select_linears(tiny_bert, "query")
    with pytest.raises(DataError, match="tokenizer"):
        collect_fisher(tiny_bert, modules, calib_tokens, "contrastive")
    with pytest.raises(DataError, match="unknown Fisher loss"):
        collect_fisher(tiny_bert, modules, calib_tokens, "mse")


def test_shared_sites_and_errors(tiny_bert, calib_tokens):
    modules = select_linears(tiny_bert, ["query", "key", "pooler.dense"])
    probe = next(calib_tokens.batches(2))
    mapping = shared_input_sites(tiny_bert, modules, probe)
    assert mapping["encoder.layer.0.attention.self.key"] == "encoder.layer.0.attention.self.query"
    assert mapping["pooler.dense"] == "pooler.dense"
    with pytest.raises(DataError, match="no modules"):
        collect_statistics(tiny_bert, {}, calib_tokens)
    stray = {"stray": nn.Linear(3, 3)}
    with pytest.raises(DataError, match="never ran"):
        shared_input_sites(tiny_bert, stray, probe)
