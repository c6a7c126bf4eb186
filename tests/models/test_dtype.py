"""Half precision: the load dtype (``resolve_dtype``, ``load_model(dtype=...)``), statistics of
bfloat16 activations, bfloat16 compression against float32, and the non-finite guard that
turns overflowing float16 activations into a DataError instead of NaN factors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lowrank as lr
from lowrank.calib import collect_fisher, collect_statistics, tokenize
from lowrank.calib.data import masked_rows
from lowrank.errors import ConfigError, DataError
from lowrank.models.forward import causal_lm_loss
from lowrank.models.loading import DTYPES, load_model, peek_dtype, resolve_dtype
from lowrank.nn import LowRankLinear, count_bytes
from lowrank.surgery import capture_inputs

SEQ_LEN = 32


def _llama_config(**extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                       max_position_embeddings=64, **extra)


def _save_llama(directory, tokenizer, dtype: torch.dtype):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).to(dtype).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def f32_dir(tmp_path_factory, tokenizer):
    return _save_llama(tmp_path_factory.mktemp("models") / "f32", tokenizer, torch.float32)


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, tokenizer):
    return _save_llama(tmp_path_factory.mktemp("models") / "bf16", tokenizer, torch.bfloat16)


def _edit_config(directory, edit):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return directory


# --- resolve_dtype -------------------------------------------------------------------------

def test_named_dtypes_and_none():
    assert DTYPES == ("auto", "float32", "bfloat16", "float16")
    assert resolve_dtype(None) is torch.float32  # today's default, whatever the checkpoint
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16


def test_auto_reads_the_checkpoint_dtype(tmp_path):
    # a config saved by transformers with a bfloat16 dtype (no weights needed)
    _llama_config(torch_dtype="bfloat16").save_pretrained(tmp_path / "bf16")
    assert peek_dtype(tmp_path / "bf16") is torch.bfloat16
    assert resolve_dtype("auto", tmp_path / "bf16") is torch.bfloat16
    # the key older transformers versions write
    _llama_config().save_pretrained(tmp_path / "legacy")
    _edit_config(tmp_path / "legacy", lambda c: (c.pop("dtype", None),
                                                 c.update(torch_dtype="float16")))
    assert resolve_dtype("auto", tmp_path / "legacy") is torch.float16
    # no dtype declared, or no readable config: float32
    _edit_config(tmp_path / "legacy", lambda c: c.pop("torch_dtype"))
    assert peek_dtype(tmp_path / "legacy") is None
    assert resolve_dtype("auto", tmp_path / "legacy") is torch.float32
    assert resolve_dtype("auto", tmp_path / "nothing-here") is torch.float32
    assert resolve_dtype("auto") is torch.float32  # the embedded MiniLM is stored in float32


@pytest.mark.parametrize("bad", ["fp16", "half", "float64", "BFLOAT16", "", 16, True,
                                 torch.float64, torch.int8])
def test_bad_dtypes_refused_listing_the_choices(bad):
    with pytest.raises(ConfigError, match="auto, float32, bfloat16, float16") as info:
        resolve_dtype(bad)
    assert repr(bad) in str(info.value)


# --- load_model ----------------------------------------------------------------------------

def _dtypes(model) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def test_load_model_in_bfloat16_rounds_the_float32_weights(f32_dir):
    full = load_model(f32_dir).model
    half = load_model(f32_dir, dtype="bfloat16").model
    assert _dtypes(full) == {torch.float32}
    assert _dtypes(half) == {torch.bfloat16}
    for (name, p), (_, q) in zip(full.named_parameters(), half.named_parameters(), strict=True):
        assert torch.equal(p.to(torch.bfloat16), q), name


def test_load_model_dtype_default_auto_and_explicit(bf16_dir):
    # no dtype: float32 even for a bfloat16 checkpoint (transformers 5 alone would keep bf16)
    assert _dtypes(load_model(bf16_dir).model) == {torch.float32}
    assert _dtypes(load_model(bf16_dir, dtype="auto").model) == {torch.bfloat16}
    assert _dtypes(load_model(bf16_dir, dtype=torch.float16).model) == {torch.float16}


def test_load_model_refuses_a_bad_dtype(f32_dir):
    with pytest.raises(ConfigError, match="dtype must be one of"):
        load_model(f32_dir, dtype="int8")


# --- statistics of half-precision activations ------------------------------------------------

def test_bfloat16_activations_are_upcast_before_the_gram_product(fresh_llama, calib_tokens):
    model = fresh_llama.to(torch.bfloat16)
    name = "model.layers.1.mlp.down_proj"
    modules = {name: model.get_submodule(name)}
    stats = collect_statistics(model, modules, calib_tokens, batch_size=8)
    reference = torch.zeros(256, 256, dtype=torch.float64)
    half_products = torch.zeros(256, 256, dtype=torch.float64)
    with capture_inputs(modules) as calls, torch.no_grad():
        for batch in calib_tokens.batches(8):
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            x = masked_rows(calls[name][-1].args[0], batch.attention_mask)
            reference += x.double().T @ x.double()
            half_products += (x.T @ x).double()  # what a product left in bfloat16 would give
    gram = stats.site(name).gram
    assert gram.dtype is torch.float64
    error = float((gram - reference).norm() / reference.norm())
    # measured 1e-7 (float32 products of bf16 values); bf16 products are off by ~1e-3
    assert error < 1e-5
    assert float((half_products - reference).norm() / reference.norm()) > 1e-4


# --- bfloat16 compression ------------------------------------------------------------------

def _compress(model, tokens):
    result = lr.compress(model, lr.SVDLLM(keep=0.6), tokens)
    return result, [m for m in model.modules() if isinstance(m, LowRankLinear)]


def _eval(model, batch):
    with torch.no_grad():
        total, count = causal_lm_loss(model, batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return float(total) / count, logits.float()


def test_bfloat16_compression_matches_float32(tiny_llama, tokenizer, calib_tokens, eval_texts):
    evaluation = tokenize(eval_texts, tokenizer, seq_len=SEQ_LEN)
    dense_loss, dense_logits = _eval(tiny_llama, evaluation)
    f32, half = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama).to(torch.bfloat16)
    result32, layers32 = _compress(f32, calib_tokens)
    result16, layers16 = _compress(half, calib_tokens)
    assert len(layers16) == len(layers32) == 14
    for layer in layers16:
        assert layer.A.dtype is layer.B.dtype is torch.bfloat16
        assert torch.isfinite(layer.A).all() and torch.isfinite(layer.B).all()
        assert layer.num_bytes() == 2 * (layer.A.numel() + layer.B.numel())
    # bytes of the stored dtype: half of the float32 run's, tensor for tensor
    assert result16.bytes_after == count_bytes(half) == result32.bytes_after // 2
    assert result16.bytes_before == result32.bytes_before // 2
    assert result16.targeted_params_after == result32.targeted_params_after

    loss32, logits32 = _eval(f32, evaluation)
    loss16, logits16 = _eval(half, evaluation)
    # Measured on the eval passages: loss within 4e-6 relative (a random model's loss sits near
    # log(vocab), so the loss alone says little), logits within 0.008 relative (0.005 is the
    # rounding of the dense model to bf16) while compression itself moves them by 0.26.
    assert abs(loss16 - loss32) / loss32 < 1e-3
    distance = float((logits16 - logits32).norm() / logits32.norm())
    assert distance < 0.02
    assert float((logits32 - dense_logits).norm() / dense_logits.norm()) > 10 * distance
    assert dense_loss > 0


# --- non-finite guard ----------------------------------------------------------------------

def _overflowing(model: torch.nn.Module) -> torch.nn.Module:
    """Scale one RMSNorm weight to 6e4 (1e5 is past float16's largest value, 65504): the MLP
    inputs of block 1 then pass 65504 and overflow to inf in float16 only."""
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight.fill_(6e4)
    return model


def test_float16_overflow_raises_a_data_error(tiny_llama, calib_tokens):
    model = _overflowing(copy.deepcopy(tiny_llama).to(torch.float16))
    with pytest.raises(DataError, match=r"'model\.layers\.1\.mlp\.gate_proj' hold NaN/inf in "
                                        r"float16: .*--dtype bfloat16"):
        lr.compress(model, lr.SVDLLM(keep=0.6), calib_tokens)
    # the same model in bfloat16 and float32 has the range: finite factors
    for dtype in (torch.bfloat16, torch.float32):
        model = _overflowing(copy.deepcopy(tiny_llama).to(dtype))
        _, layers = _compress(model, calib_tokens)
        assert all(torch.isfinite(m.A).all() and torch.isfinite(m.B).all() for m in layers)


def test_non_finite_fisher_gradients_raise_a_data_error(tiny_llama, calib_tokens):
    model = _overflowing(copy.deepcopy(tiny_llama).to(torch.float16))
    modules = {n: model.get_submodule(n) for n in ("model.layers.0.self_attn.q_proj",
                                                   "model.layers.1.mlp.up_proj")}
    with pytest.raises(DataError, match="loss gradients of module .* hold NaN/inf in float16"):
        collect_fisher(model, modules, calib_tokens, "causal-lm")


def test_nan_weights_in_float32_are_refused_before_any_factor(tiny_llama, calib_tokens):
    model = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[3] = float("nan")
    with pytest.raises(DataError, match=r"layers\.0\.self_attn\.q_proj' hold NaN/inf in "
                                        r"float32: check the model's weights"):
        lr.compress(model, lr.SVDLLM(keep=0.6), calib_tokens)
