"""Loading Hugging Face models: offline only, and never with randomly initialised weights."""

from __future__ import annotations

import copy
import shutil
import socket
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import lowrank as lr
from lowrank.errors import ModelFileError
from lowrank.models.loading import check_loading_info, default_model_path, load_model, peek_kind

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def _bert(**overrides):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    return BertModel(config, **overrides).eval()


def _llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
        tie_word_embeddings=tie)).eval()


def _save(model, directory):
    """``save_pretrained`` plus the embedded MiniLM's tokenizer files: a complete model dir."""
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (default_model_path() / name).is_file():
            shutil.copyfile(default_model_path() / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _save(_bert(), tmp_path_factory.mktemp("models") / "bert")


def _edit_weights(src, dest, edit):
    shutil.copytree(src, dest)
    tensors = load_file(str(dest / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) any attempt to resolve a host name or open a connection. The hub's
    offline switches are left alone: the point is that our code never asks."""
    attempts: list[str] = []

    def refuse(*args, **_kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted in a test")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:  # huggingface_hub >= 2 fetches (once per process) a registry for its user agent
        from huggingface_hub.utils import _detect_agent
    except ImportError:
        pass
    else:
        monkeypatch.setattr(_detect_agent, "_registry", None, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


# ------------------------------------------------------------------------------- offline


def test_unknown_name_fails_at_once_without_network(no_network):
    start = time.perf_counter()
    with pytest.raises(ModelFileError) as info:
        load_model("minlm")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model 'minlm' is neither a directory nor a hub id in the local "
                              "cache")
    assert "never downloads at run time" in message
    assert elapsed < 10, elapsed  # it used to retry over the network for ~28 s
    assert peek_kind("minlm") is None
    assert no_network == []


def test_hub_id_in_local_cache_loads_offline(tmp_path, monkeypatch, no_network):
    """A hub id found in the local cache resolves to its snapshot folder, no network."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--lowrank-test--tiny-bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = _save(_bert(), repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    loaded = load_model("lowrank-test/tiny-bert")
    assert (loaded.name, loaded.path, loaded.kind) == ("lowrank-test/tiny-bert", snapshot,
                                                       "encoder")
    assert loaded.tokenizer is not None
    with pytest.raises(ModelFileError, match="'lowrank-test/other' is neither a directory"):
        load_model("lowrank-test/other")
    assert no_network == []


def test_local_path_that_does_not_exist(tmp_path, no_network):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "no" / "such" / "model")
    assert no_network == []


# ------------------------------------------------------- weights transformers would not load


def test_embedded_default_loads_cleanly():
    loaded = load_model()
    assert loaded.kind == "encoder" and not loaded.model.training


def test_clean_directory_loads(bert_dir, no_network):
    loaded = load_model(bert_dir)
    expected = load_file(str(bert_dir / "model.safetensors"))
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert no_network == []


def test_tied_lm_head_is_not_missing(tmp_path):
    model = _llama(tie=True)
    path = _save(model, tmp_path / "llama")
    assert "lm_head.weight" not in load_file(str(path / "model.safetensors"))
    loaded = load_model(path)
    assert loaded.kind == "causal-lm"
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight


def test_missing_weight_is_refused(bert_dir, tmp_path):
    victims = ["encoder.layer.1.output.dense.weight", "encoder.layer.0.output.dense.bias"]

    def drop(tensors):
        for name in victims:
            del tensors[name]

    path = _edit_weights(bert_dir, tmp_path / "bert", drop)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "2 weights missing from the checkpoint" in message
    assert all(name in message for name in victims)
    assert "lowrank refuses" in message


def test_unexpected_weight_is_refused(bert_dir, tmp_path):
    def add(tensors):
        tensors["encoder.layer.0.extra.weight"] = torch.zeros(3)

    path = _edit_weights(bert_dir, tmp_path / "bert", add)
    with pytest.raises(ModelFileError, match=r"1 unexpected weight \(encoder\.layer\.0\.extra"):
        load_model(path)


def test_wrong_shape_is_refused(bert_dir, tmp_path):
    def shrink(tensors):
        tensors["encoder.layer.1.output.dense.weight"] = torch.zeros(32, 10)

    path = _edit_weights(bert_dir, tmp_path / "bert", shrink)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert ("1 weight of the wrong shape (encoder.layer.1.output.dense.weight expected "
            "(32, 64), stored (32, 10))") in message


def test_many_missing_weights_are_counted_and_cut(bert_dir, tmp_path):
    def drop_layer(tensors):
        for name in [k for k in tensors if k.startswith("encoder.layer.1.")]:
            del tensors[name]

    path = _edit_weights(bert_dir, tmp_path / "bert", drop_layer)
    with pytest.raises(ModelFileError, match=r"16 weights missing .* and 13 more\)"):
        load_model(path)


def test_checkpoint_without_pooler_is_refused(tmp_path):
    """The rule allows nothing by name: a BERT saved without the pooler that its config
    builds would get a random pooler, so it is refused (naming the pooler)."""
    path = _save(_bert(add_pooling_layer=False), tmp_path / "bert")
    with pytest.raises(ModelFileError, match=r"2 weights missing .*pooler\.dense"):
        load_model(path)


def test_lowrank_output_is_refused_with_a_pointer_to_lowrank_load(bert_dir, tmp_path):
    model = copy.deepcopy(load_model(bert_dir).model)
    lr.compress(model, lr.SVD(keep=0.5))
    out = lr.save(model, tmp_path / "out")
    with pytest.raises(ModelFileError) as info:
        load_model(out)
    message = str(info.value)
    assert "\n" not in message
    assert f"'{out}' is a lowrank output directory" in message
    assert "lowrank.load" in message and "lowrank eval" in message
    assert "randomly initialised" in message
    # without its lowrank.json the factors are still not mistaken for the dense model
    (out / "lowrank.json").unlink()
    with pytest.raises(ModelFileError, match="look like lowrank factors"):
        load_model(out)


# ---------------------------------------------------------------- the rule, key by key


def _info(missing=(), unexpected=(), mismatched=()):
    return {"missing_keys": set(missing), "unexpected_keys": set(unexpected),
            "mismatched_keys": set(mismatched), "error_msgs": []}


def test_rule_tied_weights_buffers_and_declared_patterns():
    tied = _llama(tie=True)
    check_loading_info(tied, _info(missing=["lm_head.weight"]), "tied")
    with pytest.raises(ModelFileError, match="model.norm.weight"):
        check_loading_info(tied, _info(missing=["model.norm.weight"]), "tied")
    with pytest.raises(ModelFileError, match="lm_head.weight"):
        check_loading_info(_llama(tie=False), _info(missing=["lm_head.weight"]), "untied")
    bert = _bert()
    # a stored value of a buffer the model computes itself (non-persistent position_ids)
    check_loading_info(bert, _info(unexpected=["embeddings.position_ids"]), "bert")
    with pytest.raises(ModelFileError, match="embeddings.other_ids"):
        check_loading_info(bert, _info(unexpected=["embeddings.other_ids"]), "bert")
    # patterns the model class declares are honoured, nothing else
    bert._keys_to_ignore_on_load_missing = [r"pooler\."]
    check_loading_info(bert, _info(missing=["pooler.dense.weight"]), "bert")
    with pytest.raises(ModelFileError, match="1 weight missing"):
        check_loading_info(bert, _info(missing=["pooler.dense.weight", "encoder.x"]), "bert")
