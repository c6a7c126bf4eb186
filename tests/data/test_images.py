"""Embedded digits and image folders: disjoint deterministic split, exact preparation maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank.data import images as im
from lowrank.errors import DataError


def test_digits_split_disjoint_deterministic_and_complete():
    from sklearn.datasets import load_digits

    calib, held = im.digits("calibration"), im.digits("evaluation")
    assert len(held) == 360 and len(calib) == 1797 - 360
    # by index: one image in five of the seeded permutation is held out, the rest calibrate
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0)).tolist()
    held_idx = order[::5]
    calib_idx = [i for i in order if i not in set(held_idx)]
    assert not set(held_idx) & set(calib_idx) and len(held_idx) + len(calib_idx) == 1797
    everything = load_digits().images.astype(np.float32) / 16.0
    assert all(np.array_equal(a, everything[i]) for a, i in zip(held, held_idx, strict=True))
    assert all(np.array_equal(a, everything[i]) for a, i in zip(calib, calib_idx, strict=True))
    assert all(a.shape == (8, 8) and 0 <= a.min() and a.max() <= 1 for a in calib)
    again = im.digits("evaluation")
    assert all(np.array_equal(a, b) for a, b in zip(held, again, strict=True))
    other = im.digits("evaluation", seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(held, other, strict=True))


def test_prepare_constant_image_gives_the_normalisation_exactly():
    # a constant grey image stays constant under bilinear resizing, so every pixel of channel
    # c must equal (g - mean_c) / std_c
    g = 0.25
    out = im.prepare_images([np.full((8, 8), g, dtype=np.float32)], (16, 16), 3).pixel_values
    assert out.shape == (1, 3, 16, 16)
    expected = (g - torch.tensor(im.IMAGENET_MEAN)) / torch.tensor(im.IMAGENET_STD)
    torch.testing.assert_close(out[0].mean((1, 2)), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.amax((2, 3)), out.amin((2, 3)), rtol=0, atol=1e-6)
    one = im.prepare_images([np.full((8, 8, 3), g, dtype=np.float32)], (4, 4), 1).pixel_values
    torch.testing.assert_close(one, torch.full((1, 1, 4, 4), (g - 0.5) / 0.5))


def test_prepare_upsampling_keeps_the_image_mean():
    # bilinear upsampling by an integer factor with half-pixel centres preserves the mean up to
    # border effects; check it against the original 8x8 mean
    x = im.digits("calibration")[0]
    out = im.prepare_images([x], (64, 64), 1).pixel_values[0, 0] * 0.5 + 0.5
    assert abs(float(out.mean()) - float(x.mean())) < 0.02


def test_image_directory_roundtrip_and_errors(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
    Image.fromarray(arrays[0][..., 0]).save(tmp_path / "grey.png")
    (tmp_path / "notes.txt").write_text("not an image")
    got = im.read_images(tmp_path)
    assert len(got) == 4  # the .txt is not an image file
    for a, b in zip(arrays, got[1:], strict=True):  # sorted: grey.png, img0, img1, img2
        np.testing.assert_array_equal(b, a.astype(np.float32) / 255.0)
    assert got[0].shape == (6, 5)
    with pytest.raises(DataError, match="not a directory"):
        im.read_images(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no"):
        im.read_images(empty)
    with pytest.raises(DataError, match="not a directory"):
        im.read_images(["a", "b"])


def test_image_size_from_config():
    class C:
        image_size = 32

    assert im.image_size(C()) == (32, 32)
    assert im.image_size(object()) == (im.DEFAULT_IMAGE_SIZE, im.DEFAULT_IMAGE_SIZE)
