"""Method configs from CLI-style options."""

from __future__ import annotations

import pytest

from lowrank.errors import ConfigError
from lowrank.workflow import make_config


def test_make_config_fills_only_given_options():
    config = make_config("svdllm", keep=0.6, alloc=None, mode="sequential", seed=3)
    assert (config.keep, config.alloc, config.mode, config.seed) == (0.6, "uniform",
                                                                     "sequential", 3)
    eora = make_config("eora", rank=16, base="quant-int8", keep=None)
    assert eora.rank == 16 and eora.base == "quant-int8"


def test_make_config_rejects_foreign_options():
    with pytest.raises(ConfigError, match="no option keep"):
        make_config("eora", keep=0.5)
    with pytest.raises(ConfigError, match="unknown method"):
        make_config("nope")
