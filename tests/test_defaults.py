"""Method configs from CLI-style options, and the configuration run without a method."""

from __future__ import annotations

import copy

import pytest

import lowrank
from lowrank.defaults import (
    DEFAULT_METHOD,
    DEFAULT_VISION_METHOD,
    default_config,
    describe_config,
    fit_default,
    make_config,
)
from lowrank.errors import ConfigError


def test_make_config_fills_only_given_options():
    config = make_config("svdllm", keep=0.6, alloc=None, mode="sequential", seed=3)
    assert (config.keep, config.alloc, config.mode, config.seed) == (0.6, "uniform",
                                                                     "sequential", 3)
    eora = make_config("eora", rank=16, base="quant-int8", keep=None)
    assert eora.rank == 16 and eora.base == "quant-int8"


def test_make_config_rejects_foreign_options():
    with pytest.raises(ConfigError, match="no field keep"):
        make_config("eora", keep=0.5)
    with pytest.raises(ConfigError, match="unknown method"):
        make_config("nope")


def test_default_config_given_options_replace_the_defaults():
    text = default_config(False)
    assert text.method == DEFAULT_METHOD
    assert describe_config(text) == ("svdllm (alloc=sensitivity, embeddings=True, "
                                      "embedding_floor=0.3)")
    assert (text.keep, text.alloc) == (lowrank.SVDLLM().keep, "sensitivity")
    given = default_config(False, keep=0.6, alloc=None, embedding_floor=0.1, seed=2)
    assert (given.keep, given.alloc, given.embedding_floor, given.seed) == \
        (0.6, "sensitivity", 0.1, 2)
    vision = default_config(True, alloc="uniform")
    assert (vision.method, vision.keep, vision.alloc) == (DEFAULT_VISION_METHOD, 0.5, "uniform")
    with pytest.raises(ConfigError, match="no field embeddings"):
        default_config(True, embeddings=True)


def test_fit_default_drops_a_tied_table(tiny_bert, tiny_llama):
    config = default_config(False)
    assert fit_default(config, tiny_bert) is config
    tied = copy.deepcopy(tiny_llama)
    tied.lm_head.weight = tied.get_input_embeddings().weight
    fitted = fit_default(config, tied)
    assert not fitted.embeddings and fitted.embedding_floor == config.embedding_floor
    assert fit_default(default_config(True), tied) == default_config(True)  # not a factorization
