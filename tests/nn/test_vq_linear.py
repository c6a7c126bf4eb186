"""VQLinear: bit-packed codes round-trip, byte accounting, the legacy unpacked layout."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank.nn.vq_linear import VQLinear, pack_codes, packed_bytes, unpack_codes


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 13, 17, 31, 32])
def test_pack_unpack_round_trip(bits, rng):
    n = 1001
    codes = torch.randint(0, 2 ** bits, (n,), generator=rng, dtype=torch.int64)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)
    with pytest.raises(ValueError):
        pack_codes(torch.tensor([2 ** bits]), bits)


def test_layer_stores_packed_codes(rng):
    out_f, in_f, m, d, k = 12, 16, 4, 3, 37  # 6-bit codes
    codes = torch.randint(0, k, (out_f * in_f // m,), generator=rng)
    cent, basis, mean = torch.randn(k, d), torch.randn(m, d), torch.randn(m)
    layer = VQLinear.from_parts(codes, cent, basis, mean, out_f, in_f, torch.randn(out_f))
    assert torch.equal(layer.code_indices(), codes)
    book = mean + cent @ basis.T
    assert torch.allclose(layer.dense_weight(), book[codes].reshape(out_f, in_f))
    values = k * d + m * d + m + out_f
    assert layer.num_bytes() == packed_bytes(codes.numel(), 6) + 4 * values
    assert layer.storage_bits() == codes.numel() * 6 + 32 * (k * d + m * d + m)
    x = torch.randn(5, in_f, generator=rng)
    assert torch.allclose(layer(x), x @ layer.dense_weight().T + layer.bias)


def test_manifest_round_trip_and_legacy_layout():
    layer = VQLinear(16, 8, 300, 4, 2)
    entry = layer.manifest_entry()
    assert entry["packed"] is True
    rebuilt = VQLinear.from_manifest_entry(entry)
    assert rebuilt.codes.shape == layer.codes.shape == (packed_bytes(32, 9),)
    legacy = {k: v for k, v in entry.items() if k != "packed"}  # saved before packing
    old = VQLinear.from_manifest_entry(legacy)
    assert not old.packed and old.codes.dtype == torch.int16 and old.codes.numel() == 32
    with torch.no_grad():
        old.codes.copy_(torch.arange(32) % 300)
    assert torch.equal(old.code_indices(), torch.arange(32) % 300)
