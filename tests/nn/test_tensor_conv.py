"""Tucker2Conv2d / CPConv2d: exact at full (or planted) rank, round trips, save/load, compress."""

import pytest
import torch
from torch import nn

import lowrank as lr
from lowrank.compress.conv import ConvFactorize
from lowrank.errors import ConfigError
from lowrank.nn.cp_conv import CPConv2d, cp_rank_for_keep
from lowrank.nn.tucker_conv import Tucker2Conv2d, tucker2_ranks

CONV_ARGS = [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 5), stride=2, padding=(1, 2)),
             dict(kernel_size=3, dilation=2, padding=2, bias=False)]


@pytest.mark.parametrize("kw", CONV_ARGS)
def test_tucker2_full_rank_is_exact_and_roundtrips(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, **kw).double()
    x = torch.randn(2, 6, 11, 13, dtype=torch.float64)
    layer = Tucker2Conv2d.from_conv(conv, ranks=(6, 8))
    torch.testing.assert_close(layer(x), conv(x), atol=1e-10, rtol=0)
    back = layer.to_dense_module()
    torch.testing.assert_close(back.weight, conv.weight, atol=1e-12, rtol=0)
    torch.testing.assert_close(back(x), conv(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("kw", CONV_ARGS)
def test_cp_planted_rank_is_exact_and_dense_module_matches(kw):
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 7, **kw).double()
    kh, kwid = conv.kernel_size
    a, b, h, v = (torch.randn(n, 4, dtype=torch.float64) for n in (7, 5, kh, kwid))
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,cr,ir,jr->ocij", a, b, h, v))
    x = torch.randn(2, 5, 12, 12, dtype=torch.float64)
    layer = CPConv2d.from_conv(conv, rank=4)
    assert layer.decomposition_error < 1e-7
    ref = conv(x)  # the output error scales with the output, as the kernel's does
    torch.testing.assert_close(layer(x), ref, atol=1e-6 * float(ref.abs().max()), rtol=0)
    back = layer.to_dense_module()
    torch.testing.assert_close(back(x), layer(x), atol=1e-10, rtol=0)
    # a CP-rank-4 layer trained from scratch also equals its exported dense conv
    fresh = CPConv2d(5, 7, conv.kernel_size, 4, conv.stride, conv.padding,
                     conv.dilation).double()
    torch.testing.assert_close(fresh.to_dense_module()(x), fresh(x), atol=1e-10, rtol=0)


def test_keep_ratio_budgets():
    r_in, r_out = tucker2_ranks(64, 64, (3, 3), 0.1)
    assert 64 * r_in + r_in * r_out * 9 + r_out * 64 <= 0.1 * 64 * 64 * 9
    r = cp_rank_for_keep(64, 64, (3, 3), 0.1)
    assert r * (64 + 64 + 6) <= 0.1 * 64 * 64 * 9 < (r + 1) * (64 + 64 + 6)
    layer = Tucker2Conv2d.from_conv(nn.Conv2d(64, 64, 3), keep=0.1)
    assert layer.num_parameters() - 64 <= 0.1 * 64 * 64 * 9


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 8 * 8, 10))


@pytest.mark.parametrize("decomposition", ["tucker2", "cp"])
def test_compress_save_load_roundtrip(tmp_path, decomposition):
    torch.manual_seed(2)
    model = small_cnn()
    x = torch.randn(3, 1, 8, 8)
    result = lr.compress(model, ConvFactorize(keep=0.3, decomposition=decomposition))
    assert result.targeted_params_after <= 0.3 * result.targeted_params_before + 1
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("Tucker2Conv2d" if decomposition == "tucker2" else "CPConv2d") in kinds
    lr.save(model, tmp_path / "out")
    loaded = lr.load(tmp_path / "out", model=small_cnn())
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("decomposition", ["tucker2", "cp"])
def test_data_aware_keeps_respect_the_budget(decomposition):
    from lowrank.compress.conv import allocate_conv_keeps, factorize_convs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1))
    x = torch.randn(16, 3, 8, 8)
    kernels = {n: m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and n != "0"}
    keeps = allocate_conv_keeps(model, x, 0.25, decomposition, ignore=["0"],
                                grid=(0.1, 0.2, 0.3, 0.5))
    assert set(keeps) == set(kernels)
    with pytest.raises(ConfigError, match="keep=0.01"):
        allocate_conv_keeps(model, x, 0.01, decomposition, ignore=["0"], grid=(0.1, 0.2))
    new = factorize_convs(model, keeps, decomposition)
    used = sum(sum(p.numel() for n, p in m.named_parameters() if not n.endswith("bias"))
               for m in new.values())
    used += sum(kernels[n] for n in kernels if n not in new)  # left dense
    assert used <= 0.25 * sum(kernels.values())


def test_conv_method_is_registered():
    from lowrank.errors import ConfigError
    cls = lr.METHODS.get("conv")
    assert cls is ConvFactorize
    with pytest.raises(ConfigError, match="decomposition"):
        cls(decomposition="svd")
