"""The generic registry and the one config base shared by methods and adapters."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import lowrank as lr
from lowrank.adapt import ADAPTERS, AdapterConfig, LoRA
from lowrank.alloc import ALLOCATORS, OptionAllocator, RankAllocator
from lowrank.compress import METHODS, CompressionConfig
from lowrank.errors import ConfigError
from lowrank.registry import Registry


@dataclass
class _Plugin:
    name: str


def test_registry_normalises_names_and_refuses_duplicates():
    reg: Registry[_Plugin] = Registry("widget", lambda p: p.name)
    first = reg.register(_Plugin("Fancy_Widget"))
    assert reg.names() == ["fancy-widget"]
    assert reg.get("fancy-widget") is reg.get("FANCY_WIDGET") is first
    assert "fancy_widget" in reg and "other" not in reg and 3 not in reg
    with pytest.raises(ConfigError, match="widget named 'fancy-widget' is already registered"):
        reg.register(_Plugin("fancy-widget"))
    with pytest.raises(ConfigError, match="unknown widget 'nope': expected one of fancy-widget"):
        reg.get("nope")
    with pytest.raises(ConfigError, match="non-empty name"):
        reg.register(_Plugin(" "))


def test_each_package_owns_its_registry():
    assert lr.METHODS is METHODS and lr.ALLOCATORS is ALLOCATORS
    assert {"svd", "svdllm", "conv", "modegpt", "lr2vq", "eora"} <= set(METHODS.names())
    assert all(issubclass(METHODS.get(n), CompressionConfig) for n in METHODS.names())
    assert {"lora", "nola", "svfit", "flora", "tlora"} == set(ADAPTERS.names())
    assert "block-influence" not in ALLOCATORS  # alloc names real allocators only
    kinds = {n: issubclass(ALLOCATORS.get(n), RankAllocator) for n in ALLOCATORS.names()}
    assert kinds == {"uniform": True, "energy": True, "welore": True, "svdllm-v2": True,
                     "sensitivity": True, "sensitivity-sqrt": True, "output-error": False}
    assert issubclass(ALLOCATORS.get("output-error"), OptionAllocator)
    assert [n for n in ALLOCATORS.names() if ALLOCATORS.get(n).needs_probe] == \
        ["sensitivity", "sensitivity-sqrt"]
    with pytest.raises(ConfigError, match="method"):
        METHODS.register(lr.SVD)


def test_configs_declare_what_they_select_and_need():
    from lowrank.surgery import CONV, LINEAR

    assert lr.SVD().selects is LINEAR and lr.ConvFactorize().selects is CONV
    assert lr.SVD().needs == frozenset() and lr.SVD().allocator.name == "uniform"
    assert lr.SVDLLM().needs == {"gram"}
    assert lr.SVD(alloc="sensitivity").needs == {"text"}
    assert lr.SVDLLM(mode="sequential").needs == {"gram", "text"}
    assert lr.FWSVD().needs == {"fisher"} and lr.ASVD().needs == {"abs_mean"}
    assert lr.MoDeGPT().allocator is None and lr.RTN().allocator is None
    with pytest.raises(ConfigError, match="does not allocate ranks"):
        lr.SVD(alloc="output-error")
    with pytest.raises(ConfigError, match="unknown allocator 'psychic'"):
        lr.SVD(alloc="psychic")


def test_one_config_base_for_methods_and_adapters():
    for config in (lr.SVDLLM(keep=0.6, targets="query", seed=3), LoRA(rank=4, targets="query")):
        assert config.targets == ["query"]
        data = json.loads(json.dumps(config.to_dict()))
        assert data["version"] == 1
        assert type(config).from_dict(data) == config
    assert lr.SVDLLM.to_dict(lr.SVDLLM())["method"] == "svdllm"
    assert LoRA().to_dict()["kind"] == "lora"
    with pytest.raises(ConfigError, match="seed must be an int"):
        LoRA(seed="0")
    with pytest.raises(ConfigError, match="seed must be an int"):
        lr.SVD(seed=1.5)


def test_from_dict_refuses_unknown_keys_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"method 'svd' has no field kepp: its fields are "
                                          r"targets, ignore, seed, keep, alloc"):
        CompressionConfig.from_dict({"method": "svd", "kepp": 0.5})
    with pytest.raises(ConfigError, match="adapter 'lora' has no field alpah"):
        AdapterConfig.from_dict({"kind": "lora", "alpah": 8})
    with pytest.raises(ConfigError, match="'method' key"):
        CompressionConfig.from_dict({"keep": 0.5})
    with pytest.raises(ConfigError, match="versions 1 to 1"):
        CompressionConfig.from_dict({"method": "svd", "version": 2})
    with pytest.raises(ConfigError, match="is a SVDLLM, not a SVD"):
        lr.SVD.from_dict({"method": "svdllm"})


def test_old_files_still_load():
    """Saved manifests hold exactly what to_dict wrote; native adapter files had no version."""
    manifest = {"method": "svdllm", "version": 1, "targets": None, "ignore": None, "seed": 0,
                "keep": 0.6, "alloc": "sensitivity", "min_keep": 0.0, "max_keep": 1.0,
                "rank_align": 1, "embeddings": True, "embedding_keep": None,
                "embedding_floor": 0.3, "floor": 1e-6, "update_left": False,
                "mode": "original", "seq_damping": 0.01}
    assert CompressionConfig.from_dict(manifest) == lr.SVDLLM(
        keep=0.6, alloc="sensitivity", embeddings=True, embedding_floor=0.3)
    conv = {"method": "conv", "version": 1, "targets": None, "ignore": None, "seed": 0,
            "keep": 0.5, "decomposition": "tucker2", "alloc": "output-error",
            "keeps": {"conv1": 0.25}}
    assert CompressionConfig.from_dict(conv).keeps == {"conv1": 0.25}
    adapter = {"kind": "lora", "rank": 4, "targets": ["query"], "ignore": None, "seed": 0}
    assert AdapterConfig.from_dict(adapter) == LoRA(rank=4, targets=["query"])
