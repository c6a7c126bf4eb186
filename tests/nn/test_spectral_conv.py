"""Factorized spectral convolution: full-rank factorizations equal the dense layer; the
factorized contraction equals the reconstructed weight; multi-grid patching is consistent."""

import pytest
import torch

from lowrank.nn.spectral_conv import FactorizedSpectralConv2d, MultigridPatching2D, TFNO2d


def dense_layer():
    torch.manual_seed(0)
    return FactorizedSpectralConv2d(3, 4, (8, 5), "dense", dtype=torch.float64)


@pytest.mark.parametrize("fac,rank", [("tucker", (3, 4, 8, 5)), ("tt", (3, 12, 5))])
def test_full_rank_factorization_equals_dense(fac, rank):
    dense = dense_layer()
    x = torch.randn(2, 3, 16, 18, dtype=torch.float64)
    w = torch.view_as_complex(dense.weight)
    layer = FactorizedSpectralConv2d.from_dense(w, fac, rank)
    torch.testing.assert_close(layer.dense_weight(), w, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-12, rtol=0)


def test_dense_spectral_conv_matches_explicit_fourier_multiplier():
    dense = dense_layer()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    w = torch.view_as_complex(dense.weight)
    xf = torch.fft.rfft2(x, norm="forward")
    full = torch.zeros(1, 4, 16, 9, dtype=torch.complex128)
    for rows, wrows in ((slice(0, 4), slice(0, 4)), (slice(12, 16), slice(4, 8))):
        full[:, :, rows, :5] = torch.einsum("bixy,ioxy->boxy", xf[:, :, rows, :5],
                                            w[:, :, wrows])
    torch.testing.assert_close(dense(x), torch.fft.irfft2(full, s=(16, 16), norm="forward"))


@pytest.mark.parametrize("fac", ["tucker", "cp", "tt"])
def test_factorized_equals_reconstructed_and_accounting(fac):
    torch.manual_seed(1)
    layer = FactorizedSpectralConv2d(8, 8, (8, 8), fac, 0.1).double()
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer(x, reconstructed=True), atol=1e-12, rtol=0)
    assert layer.num_parameters() <= 0.12 * layer.dense_parameters()
    big = FactorizedSpectralConv2d(32, 32, (16, 16), fac, 0.1)
    dense = FactorizedSpectralConv2d(32, 32, (16, 16), "dense")
    # dense contraction: one complex multiply-add (8 real flops) per (batch, i, o, mode)
    assert dense.flops(64, 64, 8, include_fft=False) == 8 * 8 * 32 * 32 * 16 * 16
    assert dense.flops(64, 64, 8) > dense.flops(64, 64, 8, include_fft=False)
    assert big.num_parameters() <= 0.11 * dense.num_parameters()


def test_multigrid_patching():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 16, 16)
    mg = MultigridPatching2D(None, levels=2, padding_fraction=0.25)
    patches = mg.patch(x)
    assert patches.shape == (2 * 16, 9, 6, 6)
    torch.testing.assert_close(mg.unpatch(patches[:, :3], 16, 16), x)
    # level-1 view of patch (0, 0): the 8x8 window centred on it (periodic), pooled by 2
    mg1 = MultigridPatching2D(None, levels=1)
    p = mg1.patch(x)
    win = torch.roll(x, shifts=(4, 4), dims=(-2, -1))[..., :16, :16]
    ref = torch.nn.functional.avg_pool2d(win, 2)
    torch.testing.assert_close(p[0, 3:], ref[0])
    identity = MultigridPatching2D(lambda t: t[:, :3], levels=1, padding_fraction=0.25)
    torch.testing.assert_close(identity(x), x)


def test_tfno_model_runs_and_is_smaller():
    dense = TFNO2d(1, 1, width=16, modes=(8, 8), n_layers=2, factorization="dense")
    tuck = TFNO2d(1, 1, width=16, modes=(8, 8), n_layers=2, factorization="tucker", rank=0.1)
    x = torch.randn(2, 1, 32, 32)
    assert tuck(x).shape == dense(x).shape == (2, 1, 32, 32)
    n = sum(p.numel() for p in tuck.parameters())
    assert n < 0.3 * sum(p.numel() for p in dense.parameters())
