"""lowrank.compress with SVD / ASVD / FWSVD / SVD-LLM on tiny BERT and Llama models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lowrank
from lowrank import ASVD, FWSVD, SVD, SVDLLM, LowRankLinear
from lowrank.calib import tokenize
from lowrank.compress.base import CompressionConfig
from lowrank.errors import ConfigError, DataError
from lowrank.surgery import select_linears

SEQ_LEN = 32
KEEP = 0.6
METHODS = {"svd": SVD, "asvd": ASVD, "fwsvd": FWSVD, "svdllm": SVDLLM}


def _forward(model: nn.Module, tokens) -> torch.Tensor:
    batch = next(tokens.batches(8))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _inputs(model: nn.Module, name: str, tokens) -> torch.Tensor:
    """Rows of the real-token inputs that reach module ``name`` (float64)."""
    rows: list[torch.Tensor] = []
    mask: list[torch.Tensor] = []

    def hook(_m, args):
        x = args[0].reshape(-1, args[0].shape[-1])
        rows.append(x[mask[0].reshape(-1).bool()].double())

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in tokens.batches(8, trim=False):
                mask[:] = [batch.attention_mask]
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    return torch.cat(rows)


@pytest.fixture(scope="module")
def bert_stats(tiny_bert, tokenizer, calib_texts):
    """Gram, |x| sums and contrastive Fisher of tiny BERT, collected once."""
    return lowrank.calibrate(tiny_bert, FWSVD(keep=KEEP), calib_texts, tokenizer=tokenizer,
                             seq_len=SEQ_LEN)


@pytest.fixture(scope="module")
def llama_stats(tiny_llama, tokenizer, calib_texts):
    return lowrank.calibrate(tiny_llama, FWSVD(keep=KEEP), calib_texts, tokenizer=tokenizer,
                             seq_len=SEQ_LEN)


# ------------------------------------------------------------------------ method matrix


@pytest.mark.parametrize("which", ["bert", "llama"])
@pytest.mark.parametrize("method", list(METHODS))
def test_method_matrix(which, method, request, tokenizer, calib_texts, calib_tokens):
    original = request.getfixturevalue(f"tiny_{which}")
    model = copy.deepcopy(original)
    targets = list(select_linears(model))
    untargeted = [n for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) and n not in targets]
    assert untargeted  # pooler / lm_head
    config = METHODS[method](keep=KEEP)
    result = lowrank.compress(model, config, data=calib_texts, tokenizer=tokenizer,
                              seq_len=SEQ_LEN)

    assert result.method["method"] == method
    assert abs(result.keep_actual - KEEP) / KEEP <= 0.005
    assert result.keep_target == KEEP
    assert [m.name for m in result.modules] == targets
    for report in result.modules:
        module = model.get_submodule(report.name)
        assert report.rank is not None
        assert isinstance(module, LowRankLinear) and module.rank == report.rank
        assert report.params_after == module.num_parameters()
        assert report.rel_output_error is not None
        assert math.isfinite(report.rel_output_error) and report.rel_output_error >= 0
        assert math.isfinite(report.rel_weight_error) and 0 <= report.rel_weight_error
        assert 0.0 <= report.energy_kept <= 1.0
        assert torch.isfinite(module.A).all() and torch.isfinite(module.B).all()
    for name in untargeted:
        assert type(model.get_submodule(name)) is nn.Linear
    assert result.targeted_params_after == sum(m.params_after for m in result.modules)
    assert result.params_after == sum(p.numel() for p in model.parameters())
    assert result.params_before == sum(p.numel() for p in original.parameters())
    assert result.params_before - result.params_after == (
        result.targeted_params_before - result.targeted_params_after)
    assert result.bytes_after < result.bytes_before
    out = _forward(model, calib_tokens)
    assert torch.isfinite(out).all()
    assert out.shape == _forward(original, calib_tokens).shape
    summary = result.to_dict()
    assert summary["compression_ratio"] == pytest.approx(1 - result.keep_actual)
    assert "spectrum" not in summary["modules"][0]
    assert method in result.summary()
    assert model.lowrank_manifest["method"] == config.to_dict()
    assert result.calibration["tokens"] == calib_tokens.num_tokens
    if method == "fwsvd":  # the model's own loss: contrastive for encoders, next-token for LMs
        expected = "contrastive" if which == "bert" else "causal-lm"
        assert result.calibration["fisher_loss"] == expected


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_svdllm_output_error_is_smallest(which, request):
    """On the same statistics and ranks, SVD-LLM's per-module output error is no larger than
    that of plain SVD, ASVD or FWSVD (it is the Eckart–Young optimum in output space)."""
    original = request.getfixturevalue(f"tiny_{which}")
    stats = request.getfixturevalue(f"{which}_stats")
    errors, ranks = {}, {}
    for method, cls in METHODS.items():
        result = lowrank.compress(copy.deepcopy(original), cls(keep=KEEP), stats=stats)
        errors[method] = {m.name: m.rel_output_error for m in result.modules}
        ranks[method] = result.ranks
    assert all(r == ranks["svdllm"] for r in ranks.values())  # uniform allocation: same ranks
    for name, best in errors["svdllm"].items():
        assert best <= 1.0 + 1e-9
        for method in ("svd", "asvd", "fwsvd"):
            assert best <= errors[method][name] * (1 + 1e-6) + 1e-9, (method, name)
    mean = {k: sum(v.values()) / len(v) for k, v in errors.items()}
    assert mean["svdllm"] < mean["svd"]


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_svd_weight_error_is_tail_energy(which, request):
    model = copy.deepcopy(request.getfixturevalue(f"tiny_{which}"))
    originals = {n: m.weight.detach().double().clone() for n, m in select_linears(model).items()}
    result = lowrank.compress(model, SVD(keep=KEEP))  # data-free
    assert result.calibration == {}
    for report in result.modules:
        s = torch.linalg.svdvals(originals[report.name])
        torch.testing.assert_close(torch.tensor(report.spectrum, dtype=torch.float64), s,
                                   rtol=1e-10, atol=0)
        tail = float((s[report.rank:] ** 2).sum() / (s ** 2).sum())
        assert report.rel_output_error is None
        assert report.rel_weight_error ** 2 == pytest.approx(tail, rel=1e-5)
        assert 1 - report.energy_kept == pytest.approx(tail, rel=1e-9)


@pytest.mark.parametrize("alloc", ["uniform", "energy"])
def test_allocators_through_compress(alloc, tiny_llama, llama_stats):
    result = lowrank.compress(copy.deepcopy(tiny_llama), SVDLLM(keep=0.4, alloc=alloc),
                              stats=llama_stats)
    assert abs(result.keep_actual - 0.4) / 0.4 <= 0.005
    assert result.allocation["allocator"] == alloc


def test_keep_one_is_a_no_op(tiny_bert, calib_tokens):
    model = copy.deepcopy(tiny_bert)
    result = lowrank.compress(model, SVD(keep=1.0))
    assert all(m.rank is None for m in result.modules)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert result.keep_actual == 1.0
    assert torch.equal(_forward(model, calib_tokens), _forward(tiny_bert, calib_tokens))


# ------------------------------------------------------------------ rank-deficient inputs


def test_rank_deficient_gram_fewer_tokens_than_channels(tiny_bert, tokenizer):
    texts = ["The cat sat.", "Dogs run fast."]
    tokens = tokenize(texts, tokenizer, seq_len=SEQ_LEN)
    assert tokens.num_tokens < tiny_bert.config.hidden_size
    for cls in (SVDLLM, ASVD):
        model = copy.deepcopy(tiny_bert)
        result = lowrank.compress(model, cls(keep=KEEP), data=texts, tokenizer=tokenizer,
                                  seq_len=SEQ_LEN)
        for report in result.modules:
            assert math.isfinite(report.rel_output_error)
            module = model.get_submodule(report.name)
            assert torch.isfinite(module.A).all() and torch.isfinite(module.B).all()
            if cls is SVDLLM:
                assert report.notes["gram_eigenvalues_floored"] > 0
                # the rank of the Gram is at most the token count; the floor covers the rest
                assert report.notes["gram_eigenvalues_floored"] >= (
                    report.in_features - tokens.num_tokens)
        assert torch.isfinite(_forward(model, tokens)).all()


def test_dead_channel(tiny_llama, tokenizer, calib_texts, calib_tokens):
    model = copy.deepcopy(tiny_llama)
    dead = [3, 17, 100]
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight[dead] = 0.0  # silu(0) * up = 0 exactly
    down = "model.layers.0.mlp.down_proj"
    assert (_inputs(model, down, calib_tokens)[:, dead] == 0).all()
    for cls in (SVDLLM, ASVD, FWSVD):
        work = copy.deepcopy(model)
        result = lowrank.compress(work, cls(keep=KEEP), data=calib_texts, tokenizer=tokenizer,
                                  seq_len=SEQ_LEN)
        report = {m.name: m for m in result.modules}[down]
        assert math.isfinite(report.rel_output_error) and report.rel_output_error < 1
        if cls is SVDLLM:
            assert report.notes["gram_eigenvalues_floored"] >= len(dead)
        module = work.get_submodule(down)
        assert torch.isfinite(module.A).all() and torch.isfinite(module.B).all()
        assert torch.isfinite(_forward(work, calib_tokens)).all()


# ----------------------------------------------------------------------- SVD-LLM refit


def test_svdllm_update_left_is_least_squares_refit(tiny_llama, tokenizer, calib_texts,
                                                    calib_tokens):
    """``update_left=True``: in the returned model, with ``A`` fixed, each ``B`` minimises
    ``||W X - B A X~||_F`` where ``X`` are the layer's inputs in the original model and ``X~``
    its inputs in the compressed model ("fed by the already-compressed upstream model"). So it
    is the least-squares optimum for the inputs it actually receives, and never worse than the
    un-refitted ``B`` on those same inputs (spec §4(g): the update must never increase the
    error)."""
    plain = copy.deepcopy(tiny_llama)
    lowrank.compress(plain, SVDLLM(keep=KEEP), data=calib_texts, tokenizer=tokenizer,
                     seq_len=SEQ_LEN)
    refit = copy.deepcopy(tiny_llama)
    result = lowrank.compress(refit, SVDLLM(keep=KEEP, update_left=True), data=calib_texts,
                              tokenizer=tokenizer, seq_len=SEQ_LEN)
    improved, bad = 0, []
    for report in result.modules:
        name = report.name
        X = _inputs(tiny_llama, name, calib_tokens)
        Y = X @ tiny_llama.get_submodule(name).weight.detach().double().T
        layer = refit.get_submodule(name)
        assert torch.equal(layer.A, plain.get_submodule(name).A)
        Z = _inputs(refit, name, calib_tokens) @ layer.A.detach().double().T
        err = float((Y - Z @ layer.B.detach().double().T).norm())
        err_plain_b = float((Y - Z @ plain.get_submodule(name).B.detach().double().T).norm())
        err_ls = float((Y - Z @ torch.linalg.lstsq(Z, Y).solution).norm())
        if not (err <= err_plain_b * (1 + 1e-5) and err <= err_ls * (1 + 1e-3)):
            bad.append(f"{name}: refit {err:.4f}, un-refitted B {err_plain_b:.4f}, "
                       f"least squares {err_ls:.4f}")
        improved += err < err_plain_b * (1 - 1e-3)
    assert not bad, "refitted B is not the least-squares fit on its inputs:\n" + "\n".join(bad)
    assert improved >= 1  # downstream layers see different inputs and are refitted
    # the first layer's q/k/v see unchanged inputs, so the whitened solution was already optimal
    report = {m.name: m for m in result.modules}["model.layers.0.self_attn.q_proj"]
    assert report.notes["refit_relative_change"] < 1e-3
    with pytest.raises(DataError):
        lowrank.compress(copy.deepcopy(tiny_llama), SVDLLM(update_left=True),
                         stats=lowrank.calibrate(tiny_llama, SVDLLM(), calib_tokens))


# ------------------------------------------------------------------- equivalences, errors


def test_asvd_alpha_zero_is_plain_svd(tiny_bert, bert_stats):
    a = copy.deepcopy(tiny_bert)
    b = copy.deepcopy(tiny_bert)
    lowrank.compress(a, ASVD(keep=KEEP, alpha=0.0), stats=bert_stats)
    lowrank.compress(b, SVD(keep=KEEP))
    for name in select_linears(tiny_bert):
        wa = a.get_submodule(name).dense_weight().detach()
        wb = b.get_submodule(name).dense_weight().detach()
        torch.testing.assert_close(wa, wb, rtol=0, atol=1e-5)


def test_fwsvd_input_axis(tiny_llama, llama_stats):
    result = lowrank.compress(copy.deepcopy(tiny_llama), FWSVD(keep=KEEP, axis="in"),
                              stats=llama_stats)
    assert all(math.isfinite(m.rel_output_error) for m in result.modules)


def test_same_seed_same_factors(tiny_llama, tokenizer, calib_texts):
    runs = []
    for _ in range(2):
        model = copy.deepcopy(tiny_llama)
        lowrank.compress(model, SVDLLM(keep=KEEP, seed=3), data=calib_texts,
                         tokenizer=tokenizer, seq_len=SEQ_LEN)
        runs.append(model)
    for (n1, m1), (n2, m2) in zip(runs[0].named_modules(), runs[1].named_modules(),
                                  strict=True):
        assert n1 == n2
        if isinstance(m1, LowRankLinear):
            assert torch.equal(m1.A, m2.A) and torch.equal(m1.B, m2.B)


@pytest.mark.parametrize("cls", [SVDLLM, ASVD, FWSVD])
def test_data_methods_without_data_raise(cls, tiny_bert):
    model = copy.deepcopy(tiny_bert)
    with pytest.raises(DataError, match="needs calibration data"):
        lowrank.compress(model, cls(keep=KEEP))
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())


def test_stats_must_cover_targets(tiny_llama, llama_stats, tokenizer, calib_tokens):
    partial = lowrank.calibrate(tiny_llama, SVDLLM(targets=["q_proj"]), calib_tokens)
    with pytest.raises(DataError, match="do not cover"):
        lowrank.compress(copy.deepcopy(tiny_llama), SVDLLM(keep=KEEP), stats=partial)
    # but the same statistics serve a run restricted to those targets
    result = lowrank.compress(copy.deepcopy(tiny_llama), SVDLLM(keep=KEEP, targets="q_proj"),
                              stats=partial)
    assert [m.name for m in result.modules] == [f"model.layers.{i}.self_attn.q_proj"
                                                for i in range(2)]


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.0001, 2, True, "0.5", None])
def test_keep_outside_range_raises(keep):
    with pytest.raises(ConfigError, match="keep"):
        SVD(keep=keep)


@pytest.mark.parametrize("kwargs", [
    {"alloc": "no-such-allocator"}, {"seed": "1"},
])
def test_bad_common_fields_raise(kwargs):
    with pytest.raises(ConfigError):
        SVDLLM(**kwargs)


def test_bad_method_fields_raise():
    with pytest.raises(ConfigError, match="alpha"):
        ASVD(alpha=3.0)
    with pytest.raises(ConfigError, match="eps"):
        ASVD(eps=0.0)
    with pytest.raises(ConfigError, match="floor"):
        SVDLLM(floor=0.0)
    with pytest.raises(ConfigError, match="axis"):
        FWSVD(axis="rows")
    with pytest.raises(ConfigError, match="eps"):
        FWSVD(eps=1.0)


def test_config_round_trip_and_registry():
    assert set(lowrank.METHODS.names()) >= set(METHODS)
    for name, cls in METHODS.items():
        assert lowrank.METHODS.get(name) is cls
        config = cls(keep=0.7, alloc="energy", targets="q_proj", ignore=["k_proj"], seed=5)
        assert config.targets == ["q_proj"] and config.ignore == ["k_proj"]
        back = CompressionConfig.from_dict(config.to_dict())
        assert back == config and type(back) is cls
        assert isinstance(config, CompressionConfig)
        assert set(cls.help()) >= {"keep", "alloc", "targets", "ignore", "seed"}
    with pytest.raises(ConfigError, match="unknown method"):
        lowrank.METHODS.get("nope")
    with pytest.raises(ConfigError, match="method"):
        CompressionConfig.from_dict({"keep": 0.5})


def test_compress_rejects_non_config(tiny_bert):
    with pytest.raises(ConfigError, match="config"):
        lowrank.compress(copy.deepcopy(tiny_bert), {"method": "svd"})


def test_to_dense_matches_factorized(tiny_bert, calib_tokens):
    model = copy.deepcopy(tiny_bert)
    lowrank.compress(model, SVD(keep=KEEP))
    factored = _forward(model, calib_tokens)
    lowrank.to_dense(model)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    torch.testing.assert_close(_forward(model, calib_tokens), factored, rtol=1e-5, atol=1e-5)
