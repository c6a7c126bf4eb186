"""WeLore threshold allocation (spec §9) and SVD-LLM V2 group allocation (spec §5.1)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import lowrank
from lowrank import SVDLLM, LowRankLinear
from lowrank.alloc import ALLOCATORS, BudgetItem, RankConstraints, WeLore
from lowrank.alloc.v2 import group_fractions, group_key, inverse_log, truncation_loss
from lowrank.alloc.welore import normalised_spectrum, threshold_for_rank_reduction
from lowrank.errors import ConfigError

NAMES = ["uniform", "energy", "welore", "svdllm-v2"]


def _heavy(n: int, power: float = 2.0) -> torch.Tensor:
    return torch.arange(1, n + 1, dtype=torch.float64) ** -power


def _flat(n: int) -> torch.Tensor:
    return torch.linspace(1.0, 0.5, n, dtype=torch.float64)


# --- WeLore -----------------------------------------------------------------------------------

def test_normalised_spectrum():
    s = normalised_spectrum(torch.tensor([4.0, 3.0, 2.0]))
    assert torch.allclose(s, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    assert torch.equal(normalised_spectrum(torch.ones(5)), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_welore_prunes_heavy_tailed_matrices_more(keep):
    n = 128
    items = [BudgetItem(f"heavy{i}", n, n, False, _heavy(n, 0.5 + 0.5 * i)) for i in range(3)]
    items += [BudgetItem(f"flat{i}", n, n, False, _flat(n) * (1 + i)) for i in range(3)]
    alloc = ALLOCATORS.get("welore")().allocate(items, keep)
    assert abs(alloc.keep_actual - keep) / keep <= 0.005
    r = alloc.ranks
    heavy = [r[f"heavy{i}"] for i in range(3)]
    assert all(k is not None for k in heavy)
    for i in range(3):
        flat = r[f"flat{i}"]
        assert flat is None or flat > max(heavy)
    # heavier tails (larger power) lose more rank
    assert heavy[0] >= heavy[1] >= heavy[2]
    if keep == 0.6:
        # the flat matrices would keep more than their break-even rank: they stay dense
        assert heavy[0] > heavy[1] > heavy[2]
        assert alloc.details["dense"] == ["flat0", "flat1", "flat2"]


def test_welore_threshold_rule_and_details():
    gen = torch.Generator().manual_seed(3)
    items = []
    for i in range(12):
        m, n = int(torch.randint(32, 160, (1,), generator=gen)), 96
        power = float(0.2 + 2 * torch.rand(1, generator=gen))
        items.append(BudgetItem(f"layers.{i}.w", m, n, bool(i % 3 == 0),
                                _heavy(min(m, n), power)))
    for keep in [0.3, 0.6, 0.85]:
        alloc = ALLOCATORS.get("welore")().allocate(items, keep)
        d = alloc.details
        tau = d["tau"]
        assert 0 <= tau <= 1
        assert abs(alloc.keep_actual - keep) / keep <= 0.005
        full = sum(min(it.out_features, it.in_features) for it in items)
        nominal = sum(int((normalised_spectrum(it.spectrum) < tau).sum()) for it in items)
        assert d["rank_reduction_at_tau"] == pytest.approx(nominal / full)
        realised = sum(min(it.out_features, it.in_features) - alloc.ranks[it.name]
                       for it in items if alloc.ranks[it.name] is not None)
        assert d["rank_reduction"] == pytest.approx(realised / full)
        assert d["dense"] == [it.name for it in items if alloc.ranks[it.name] is None]
        assert d["spectrum"] == "method"
        for it in items:
            k = alloc.ranks[it.name]
            kept_at_tau = int((normalised_spectrum(it.spectrum) >= tau).sum())
            if k is not None:  # the threshold's rank, plus at most the greedy top-up
                assert kept_at_tau <= k


def test_welore_rank_reduction_bisection_hits_target():
    """WeLore's own rule: tau for a rank reduction, within one singular value per matrix."""
    gen = torch.Generator().manual_seed(7)
    spectra = [_heavy(int(torch.randint(40, 200, (1,), generator=gen)),
                      float(0.3 + 2 * torch.rand(1, generator=gen))) for _ in range(10)]
    total = sum(s.numel() for s in spectra)
    for target in [0.1, 0.3, 0.5, 0.7]:
        tau = threshold_for_rank_reduction(spectra, target)
        pruned = sum(int((normalised_spectrum(s) < tau).sum()) for s in spectra)
        assert pruned <= target * total
        assert target * total - pruned <= len(spectra)
    with pytest.raises(ConfigError, match="rank reduction"):
        threshold_for_rank_reduction(spectra, 1.5)


def test_welore_uses_the_weight_spectrum_when_given():
    n = 96
    heavy = [BudgetItem(f"h{i}", n, n, False, _heavy(n, 0.5 + 0.4 * i)) for i in range(4)]
    # same weight spectra, but a flat "whitened" method spectrum: the allocation must not move
    masked = [BudgetItem(it.name, n, n, False, _flat(n), weight_spectrum=it.spectrum)
              for it in heavy]
    a = ALLOCATORS.get("welore")().allocate(heavy, 0.4)
    b = ALLOCATORS.get("welore")().allocate(masked, 0.4)
    assert a.ranks == b.ranks
    assert b.details["spectrum"] == "weight"
    assert ALLOCATORS.get("welore").needs_weight_spectrum


def test_welore_min_ratio_keeps_lightly_pruned_matrices_dense():
    n = 128
    items = [BudgetItem(f"m{i}", n, n, False, _heavy(n, 0.3 + 0.3 * i)) for i in range(6)]
    alloc = WeLore(min_ratio=0.7).allocate(items, 0.6)
    tau = alloc.details["tau"]
    for it in items:
        pruned = int((normalised_spectrum(it.spectrum) < tau).sum())
        if alloc.ranks[it.name] is not None:
            assert pruned / n > 0.7
    assert alloc.details["min_ratio"] == 0.7
    with pytest.raises(ConfigError, match="min_ratio"):
        WeLore(min_ratio=1.0)


# --- SVD-LLM V2 -------------------------------------------------------------------------------

def test_group_key():
    assert group_key("encoder.layer.3.attention.self.query") == "attention.self.query"
    assert group_key("encoder.layer.3.attention.output.dense") == "attention.output.dense"
    assert group_key("encoder.layer.3.output.dense") == "output.dense"
    assert group_key("model.layers.11.self_attn.q_proj") == "self_attn.q_proj"
    assert group_key("model.layers.0.mlp.down_proj") == "mlp.down_proj"
    assert group_key("head.proj") == "proj"
    assert group_key("blocks.2") == "2"


def test_inverse_log_guards():
    v = inverse_log([0.5, 2.0, 10.0, 0.0, math.inf, math.nan])
    assert all(math.isfinite(x) and x > 0 for x in v)
    assert v[0] > v[1] > v[2]  # larger loss, smaller value (removes less)
    assert v[3] == v[0] and v[4] == v[2] and v[5] == v[2]
    # large losses (unnormalised Grams, as in the paper): plain 1/log
    assert inverse_log([100.0, 1000.0]) == [1 / math.log(100.0), 1 / math.log(1000.0)]
    assert inverse_log([0.0, math.nan]) == [1.0, 1.0]


def _grouped_items() -> list[BudgetItem]:
    """Four layers of q (64x64), k (32x64) and an FFN up (256x64), tails of varying weight."""
    out = []
    for layer in range(4):
        for kind, (m, n) in {"q_proj": (64, 64), "k_proj": (32, 64), "up_proj": (256, 64)}.items():
            r = min(m, n)
            decay = 0.80 + 0.05 * layer + (0.02 if kind == "k_proj" else 0.0)
            s = 1e3 * decay ** torch.arange(r, dtype=torch.float64)
            out.append(BudgetItem(f"model.layers.{layer}.{kind}", m, n, kind == "up_proj", s))
    return out


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.8])
def test_v2_group_means_stay_at_target_before_the_fix(keep):
    items = _grouped_items()
    fr = group_fractions(items, keep)
    assert set(fr.groups) == {"q_proj", "k_proj", "up_proj"}
    kept = fr.kept()
    for names in fr.groups.values():
        assert sum(kept[n] for n in names) / len(names) == pytest.approx(keep)
    alloc = ALLOCATORS.get("svdllm-v2")().allocate(items, keep)
    assert alloc.details["group_keep"] == pytest.approx(kept)
    assert abs(alloc.keep_actual - keep) / keep <= 0.005
    assert alloc.details["scale"] == pytest.approx(1.0, rel=0.2)


def test_v2_larger_truncation_loss_gets_larger_rank():
    items = _grouped_items()
    keep = 0.5
    alloc = ALLOCATORS.get("svdllm-v2")().allocate(items, keep)
    losses = alloc.details["truncation_loss"]
    for it in items:
        k_u = math.floor(keep * it.break_even)
        assert losses[it.name] == pytest.approx(truncation_loss(it.spectrum, k_u))
    for names in alloc.details["groups"].values():
        by_loss = sorted(names, key=lambda n: losses[n])
        ranks = [alloc.ranks[n] for n in by_loss]
        assert ranks == sorted(ranks)
        assert ranks[-1] > ranks[0]
        # a uniform allocation would give them all the same rank
        assert len(set(ranks)) > 1


def test_v2_singleton_groups_match_uniform():
    gen = torch.Generator().manual_seed(1)
    items = [BudgetItem(f"w{i}", 64 + 8 * i, 96, bool(i % 2),
                        torch.rand(64 + 8 * i if i < 4 else 96, generator=gen,
                                   dtype=torch.float64).sort(descending=True).values)
             for i in range(8)]
    v2 = ALLOCATORS.get("svdllm-v2")().allocate(items, 0.5)
    uni = ALLOCATORS.get("uniform")().allocate(items, 0.5)
    assert all(abs(v2.ranks[n] - uni.ranks[n]) <= 1 for n in uni.ranks)


# --- end to end through lowrank.compress ------------------------------------------------------

@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_bert"])
@pytest.mark.parametrize("alloc", NAMES)
def test_compress_end_to_end(request, model_name, alloc, tokenizer, calib_texts):
    model = copy.deepcopy(request.getfixturevalue(model_name))
    result = lowrank.compress(model, SVDLLM(keep=0.6, alloc=alloc), data=calib_texts,
                              tokenizer=tokenizer, seq_len=32)
    assert result.allocation["allocator"] == alloc
    assert abs(result.keep_actual - 0.6) / 0.6 <= 0.005
    factored = [m for m in result.modules if m.rank is not None]
    assert factored
    for m in factored:
        assert isinstance(model.get_submodule(m.name), LowRankLinear)
        assert math.isfinite(m.rel_output_error)
    if alloc == "welore":
        assert result.allocation["details"]["spectrum"] == "weight"


@pytest.mark.parametrize("alloc", ["welore", "svdllm-v2"])
def test_compress_with_bounds_and_alignment(alloc, tiny_llama, tokenizer, calib_texts):
    model = copy.deepcopy(tiny_llama)
    config = SVDLLM(keep=0.5, alloc=alloc, min_keep=0.2, max_keep=0.9, rank_align=8)
    result = lowrank.compress(model, config, data=calib_texts, tokenizer=tokenizer, seq_len=32)
    for m in result.modules:
        assert m.rank is not None and m.rank % 8 == 0
        assert 0.2 <= m.params_after / m.params_before <= 0.9
    step = max(8 * (m.out_features + m.in_features) for m in result.modules)
    assert 0 <= 0.5 * result.targeted_params_before - result.targeted_params_after < step
    assert result.allocation["details"]["constraints"] == {"min_keep": 0.2, "max_keep": 0.9,
                                                           "align": 8}


def test_compress_infeasible_bounds_raise(tiny_llama, tokenizer, calib_texts):
    model = copy.deepcopy(tiny_llama)
    with pytest.raises(ConfigError, match="allow keep between"):
        lowrank.compress(model, SVDLLM(keep=0.9, max_keep=0.5), data=calib_texts,
                         tokenizer=tokenizer, seq_len=32)


def test_constraints_default_is_unconstrained():
    assert SVDLLM().constraints == RankConstraints()
