"""Method matrix of lowrank.adapt: no-op at init, parameter counts against the papers'
formulas, merge/unmerge, native save/load bit-identity, and each method's own identity."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lowrank.adapt as la
from lowrank.errors import ConfigError, LowRankError, ModelFileError, TargetError
from lowrank.surgery import LINEAR, LINEAR_OR_CONV

TARGETS = ["query", "value"]


def _configs():
    return [
        la.LoRA(rank=4, alpha=8, targets=TARGETS),
        la.LoRA(rank=4, init="pissa", targets=TARGETS),
        la.NOLA(rank=2, num_basis=16, targets=TARGETS),
        la.NOLA(rank=2, num_basis=16, cache_basis=False, targets=TARGETS),
        la.SVFit(rank=4, targets=TARGETS),
        la.FLoRA(rank=4, targets=TARGETS),
        la.TLoRA(rank=2, targets=TARGETS),
    ]


IDS = ["lora", "pissa", "nola", "nola_nocache", "svfit", "flora", "tlora"]


def _perturb(model: nn.Module, seed: int = 0) -> None:
    """Move every trainable adapter parameter away from its (no-op) initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in la.trainable_parameters(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _ids(n: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(1000, 2000, (n, length), generator=torch.Generator().manual_seed(1))


def _out(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("config", _configs(), ids=IDS)
def test_noop_at_init_then_merge_unmerge(tiny_bert, config):
    model = copy.deepcopy(tiny_bert)
    ids = _ids()
    ref = _out(model, ids)
    names = la.apply(model, config)
    assert len(names) == 4  # 2 layers x (query, value)
    # At init the forward is the base model's (PiSSA moves W into the adapter: float error).
    torch.testing.assert_close(_out(model, ids), ref, rtol=0, atol=2e-5)
    _perturb(model)
    adapted = _out(model, ids)
    assert (adapted - ref).abs().max() > 1e-3
    before = {n: lay.base_layer.weight.clone() for n, lay in la.adapter_layers(model).items()}
    la.merge(model)
    torch.testing.assert_close(_out(model, ids), adapted, rtol=1e-5, atol=1e-5)
    la.unmerge(model)
    for n, lay in la.adapter_layers(model).items():
        torch.testing.assert_close(lay.base_layer.weight, before[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(_out(model, ids), adapted, rtol=1e-5, atol=1e-5)


def test_trainable_counts_follow_the_formulas(tiny_bert):
    h = tiny_bert.config.hidden_size
    expected = {
        "lora": 4 * 4 * (h + h),
        "nola": 4 * 2 * 16,                          # 2k per module, independent of r and shape
        "svfit": 4 * 4,                              # r per matrix
        "flora": 4 * (4 * 4 + h * 4 + h * 4),        # prod r_i + sum d_i r_i
        "tlora": 4 * (8 * 8 + 8 * 8 + 2 * (8 * 8 + 8 * 8)),  # d1^2+d2^2 + R(o1 i1 + o2 i2)
    }
    cfgs = {"lora": la.LoRA(rank=4, targets=TARGETS), "nola": la.NOLA(rank=3, num_basis=16,
            targets=TARGETS), "svfit": la.SVFit(rank=4, targets=TARGETS),
            "flora": la.FLoRA(rank=4, targets=TARGETS), "tlora": la.TLoRA(rank=2, targets=TARGETS)}
    for key, cfg in cfgs.items():
        model = copy.deepcopy(tiny_bert)
        la.apply(model, cfg)
        assert la.num_trainable(model) == expected[key], key
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == set(la.trainable_parameters(model)), key


@pytest.mark.parametrize("config", _configs(), ids=IDS)
def test_native_save_load_is_bit_identical(tiny_bert, tmp_path, config):
    model = copy.deepcopy(tiny_bert)
    la.apply(model, config)
    _perturb(model, seed=3)
    la.save(model, tmp_path / "ad")
    fresh = copy.deepcopy(tiny_bert)
    la.load(fresh, tmp_path / "ad")
    ids = _ids()
    assert torch.equal(_out(fresh, ids), _out(model, ids))
    for (n1, p1), (n2, p2) in zip(la.trainable_parameters(model).items(),
                                  la.trainable_parameters(fresh).items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


def test_native_nola_stores_only_coefficients_and_checks_the_basis(tiny_bert, tmp_path):
    import json

    from safetensors.torch import load_file

    model = copy.deepcopy(tiny_bert)
    la.apply(model, la.NOLA(rank=2, num_basis=16, seed=7, targets=TARGETS))
    _perturb(model)
    la.save(model, tmp_path / "ad")
    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == 4 * 2 * 16
    cfg_path = tmp_path / "ad" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["config"]["seed"] == 7 and cfg["peft_type"] == "LOWRANK_NOLA"
    name = next(iter(cfg["modules"]))
    cfg["modules"][name]["basis_sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="checksum"):
        la.load(copy.deepcopy(tiny_bert), tmp_path / "ad")


def test_pissa_residual_plus_adapter_is_w_and_adapter_is_best_rank_r(tiny_bert):
    model = copy.deepcopy(tiny_bert)
    w = dict(model.named_modules())["encoder.layer.0.attention.self.query"].weight.detach().clone()
    la.apply(model, la.LoRA(rank=4, alpha=2, init="pissa", targets=TARGETS))
    lay = la.adapter_layers(model)["encoder.layer.0.attention.self.query"]
    torch.testing.assert_close(lay.base_layer.weight + lay.delta_weight(), w, rtol=0, atol=1e-5)
    u, s, vh = torch.linalg.svd(w.double())
    best = (u[:, :4] * s[:4]) @ vh[:4]
    torch.testing.assert_close((lay.lora_B @ lay.lora_A).double(), best / lay.scaling,
                               rtol=0, atol=1e-5)


def test_svfit_keeps_singular_vectors_and_trains_values(tiny_bert):
    model = copy.deepcopy(tiny_bert)
    w = dict(model.named_modules())["encoder.layer.1.attention.self.value"].weight.detach().clone()
    la.apply(model, la.SVFit(rank=3, targets=TARGETS))
    lay = la.adapter_layers(model)["encoder.layer.1.attention.self.value"]
    with torch.no_grad():
        lay.sigma.mul_(1.5)
    merged = lay.base_layer.weight + lay.delta_weight()
    u, s, vh = torch.linalg.svd(w.double())
    s2 = s.clone()
    s2[:3] *= 1.5
    torch.testing.assert_close(merged.double(), (u * s2) @ vh, rtol=0, atol=1e-5)


def test_flora_linear_delta_is_u_out_gt_u_in(tiny_bert):
    model = copy.deepcopy(tiny_bert)
    la.apply(model, la.FLoRA(rank=3, scale=2.0, targets=TARGETS))
    lay = la.adapter_layers(model)["encoder.layer.0.attention.self.query"]
    _perturb(model)
    expect = 2.0 * lay.factor_1 @ lay.core.t() @ lay.factor_0.t()
    torch.testing.assert_close(lay.delta_weight(), expect, rtol=1e-5, atol=1e-6)
    sv = torch.linalg.svdvals(lay.delta_weight().detach().double())
    assert (sv > 1e-5 * sv[0]).sum() <= 3  # rank <= min(r0, r1) up to float32 noise


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_flora_conv_grouped_matches_dense_conv(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=True)
    model = nn.Sequential(conv)
    la.apply(model, la.FLoRA(rank=2, kernel_rank=2, targets=["0"]))
    _perturb(model)
    lay = la.adapter_layers(model)["0"]
    assert lay.delta_weight().shape == conv.weight.shape  # [out, in / groups, k, k]
    x = torch.randn(2, 8, 6, 6)
    ref = nn.functional.conv2d(x, conv.weight + lay.delta_weight(), conv.bias, padding=1,
                               groups=groups)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_adapters_select_with_the_shared_grammar():
    """Adapters select through lowrank.surgery: FLoRA declares linear-or-conv layers, the
    others linear layers; 're:' patterns are checked for every adapter."""
    assert la.FLoRA.selects is LINEAR_OR_CONV and la.LoRA.selects is LINEAR
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    assert la.apply(copy.deepcopy(model), la.FLoRA(rank=1)) == ["0", "2"]
    assert la.apply(copy.deepcopy(model), la.LoRA(rank=1)) == ["2"]
    for config in (la.FLoRA(rank=1, targets=["re:(["]), la.LoRA(rank=1, targets=["re:(["])):
        with pytest.raises(TargetError, match="invalid regular expression"):
            la.apply(copy.deepcopy(model), config)


def test_tlora_is_transform_plus_residual_and_lora_when_t_is_identity(tiny_bert):
    model = copy.deepcopy(tiny_bert)
    la.apply(model, la.TLoRA(rank=2, targets=TARGETS))
    lay = la.adapter_layers(model)["encoder.layer.0.attention.self.query"]
    w0 = lay.base_layer.weight.detach().clone()
    _perturb(model)
    t = torch.kron(lay.T1, lay.T2)
    (o1, o2), (i1, i2) = lay.out_split, lay.in_split
    res = torch.zeros(o1 * o2, i1 * i2)
    for a in range(o1):
        for c in range(i1):
            block = sum(lay.C1[a, c, r] * lay.C2[r] for r in range(lay.rank))
            res[a * o2:(a + 1) * o2, c * i2:(c + 1) * i2] = block
    torch.testing.assert_close(lay.delta_weight() + w0, t @ w0 + res, rtol=1e-5, atol=1e-5)
    assert torch.linalg.matrix_rank(t.double()) == t.shape[0]  # full-rank transform
    with pytest.raises(LowRankError, match="no exact PEFT"):
        lay.to_lora()


def test_nola_gradcheck_of_regenerated_basis():
    from lowrank.adapt.nola import combine, nola_basis

    coef = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: combine(c, 3, "m", "A", 2, 4), (coef,))
    basis, _ = nola_basis(3, "m", "A", 5, 2, 4)
    torch.testing.assert_close(combine(coef, 3, "m", "A", 2, 4),
                               torch.einsum("k,krc->rc", coef, basis.double()))


def test_errors_restate_bad_input(tiny_bert):
    with pytest.raises(ConfigError, match="rank must be a positive integer, got 0"):
        la.LoRA(rank=0)
    with pytest.raises(ConfigError, match="init must be one of"):
        la.LoRA(init="olora")
    model = copy.deepcopy(tiny_bert)
    la.apply(model, la.LoRA(rank=2, targets=TARGETS))
    with pytest.raises(LowRankError, match="already carries adapters"):
        la.apply(model, la.LoRA(rank=2, targets=TARGETS))
    assert math.isfinite(float(_out(model, _ids()).sum()))
