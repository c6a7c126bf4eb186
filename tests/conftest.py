"""Shared fixtures: the bundled MiniLM tokenizer, tiny random BERT / Llama models, passages.

The tiny models use the tokenizer's full vocabulary (30522) so real text can be fed to them,
but hidden sizes of 64 (intermediate 256) so everything runs in well under a second per
forward on a CPU. Session-scoped models are pristine: a test that modifies a model (compress,
to_dense, Fisher collection) must work on ``copy.deepcopy`` of it (see ``fresh_bert`` /
``fresh_llama``).
"""

from __future__ import annotations

import copy

import pytest
import torch

import lowrank.data
import lowrank.models

HIDDEN = 64
INTERMEDIATE = 256
SEQ_LEN = 32


def _tiny_bert(vocab_size: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(1234)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=INTERMEDIATE, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertModel(config).eval()


def _tiny_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4321)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=INTERMEDIATE, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(lowrank.models.default_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tokenizer):
    """A tiny random ``BertModel`` (no head) in eval mode. Do not modify: deepcopy it."""
    return _tiny_bert(tokenizer.vocab_size)


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    """A tiny random ``LlamaForCausalLM`` with GQA (2 kv heads for 4 heads). Do not modify."""
    return _tiny_llama(tokenizer.vocab_size)


@pytest.fixture
def fresh_bert(tiny_bert):
    return copy.deepcopy(tiny_bert)


@pytest.fixture
def fresh_llama(tiny_llama):
    return copy.deepcopy(tiny_llama)


@pytest.fixture(scope="session")
def calib_texts() -> list[str]:
    """Two dozen passages of the embedded calibration text."""
    return lowrank.data.default_passages("calibration")[:24]


@pytest.fixture(scope="session")
def eval_texts() -> list[str]:
    return lowrank.data.default_passages("evaluation")[:8]


@pytest.fixture(scope="session")
def calib_tokens(tokenizer, calib_texts):
    from lowrank.calib import tokenize

    return tokenize(calib_texts, tokenizer, seq_len=SEQ_LEN)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
