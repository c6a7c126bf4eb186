"""Images for vision models: scikit-learn's bundled handwritten digits (no network) or a folder
of PNG/JPEG files, prepared as a model's ``pixel_values``.

The digits are the 1,797 8x8 grey-level images of ``sklearn.datasets.load_digits``, which ship
inside scikit-learn. A fixed permutation (``seed``) sends one image in five to the held-out
evaluation part and the rest to calibration, so the two parts never overlap and every run sees
the same images. Preparation upsamples each image to the model's input size, replicates grey
levels over the model's channels and normalises them (ImageNet mean and deviation for three
channels, ``(x - 0.5) / 0.5`` otherwise), or hands the images to the model's own image
processor when it has one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import DataError

Split = Literal["calibration", "evaluation"]
ImageSource = str | os.PathLike | None

EVAL_EVERY = 5  # one image in five (after the seeded permutation) is held out for evaluation
DEFAULT_IMAGE_SIZE = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageBatch:
    """A batch of prepared images ``(batch, channels, height, width)``."""

    pixel_values: torch.Tensor

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(self.pixel_values.to(device))


@dataclass
class Images:
    """Prepared images, one row of ``pixel_values`` each (float32)."""

    pixel_values: torch.Tensor

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])

    def batches(self, batch_size: int) -> Iterator[ImageBatch]:
        for i in range(0, len(self), batch_size):
            yield ImageBatch(self.pixel_values[i : i + batch_size])

    def subset(self, index: Sequence[int] | slice) -> Images:
        rows = self.pixel_values[index] if isinstance(index, slice) else \
            self.pixel_values[torch.as_tensor(list(index), dtype=torch.long)]
        return Images(rows)


def _load_digits() -> Any:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("the embedded images are scikit-learn's digits: pip install "
                        "scikit-learn, or pass --data <directory of PNG/JPEG images>") from exc
    return load_digits()


def _digit_index(split: Split, seed: int, n: int) -> np.ndarray:
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    held = order[::EVAL_EVERY]
    return held if split == "evaluation" else np.setdiff1d(order, held, assume_unique=True)


def digits(split: Split = "calibration", seed: int = 0) -> list[np.ndarray]:
    """The bundled digits of ``split`` as 8x8 float arrays in [0, 1]."""
    data = _load_digits()
    images = data.images.astype(np.float32) / 16.0
    return [images[i] for i in _digit_index(split, seed, len(images))]


def digit_labels(split: Split = "calibration", seed: int = 0) -> list[int]:
    """The class (0-9) of each image that :func:`digits` returns, in the same order."""
    target = _load_digits().target
    return [int(target[i]) for i in _digit_index(split, seed, len(target))]


def read_images(source: ImageSource, split: Split = "calibration", seed: int = 0
                ) -> list[np.ndarray]:
    """Images from the embedded digits (``None`` or ``"default"``: the part ``split``) or from
    every PNG/JPEG file of a directory (sorted by name, all of them), as float arrays in [0, 1]
    of shape ``(H, W)`` or ``(H, W, 3)``. Raises :class:`DataError` for anything else."""
    if source is None or (isinstance(source, str) and source == "default"):
        return digits(split, seed)
    from PIL import Image, UnidentifiedImageError

    out = []
    for file in image_files(source):
        try:
            with Image.open(file) as image:
                mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                out.append(np.asarray(image.convert(mode), dtype=np.float32) / 255.0)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"image '{file}' could not be read: {exc}") from exc
    return out


def image_files(source: ImageSource) -> list[Path]:
    """The PNG/JPEG files of an image directory, sorted by name; :class:`DataError` for
    anything else (a text file, a missing path, a directory without images)."""
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_dir():
        raise DataError(f"image data {source!r} is not a directory: vision models calibrate on "
                        "a directory of PNG/JPEG images (or the embedded digits by default)")
    files = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image directory '{source}' holds no .png/.jpg/.jpeg file: expected "
                        "some images")
    return files


def image_size(config: Any) -> tuple[int, int]:
    """Input height and width of a vision model: its config's ``image_size``, else 64x64."""
    size = getattr(config, "image_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    return DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE


def prepare_images(raw: Sequence[np.ndarray], size: tuple[int, int], channels: int,
                   processor: Any = None) -> Images:
    """``pixel_values`` for a model with ``channels`` input channels.

    With an image processor (``AutoImageProcessor`` of the model directory) the images go
    through it as RGB ``uint8`` arrays. Otherwise each image is resized bilinearly to ``size``,
    grey levels are replicated over ``channels`` (RGB becomes grey for one channel) and the
    values are normalised as the module docstring says.
    """
    if not raw:
        raise DataError("no images to prepare: expected at least one image")
    if processor is not None:
        rgb = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in raw]
        rgb = [np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8) for a in rgb]
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"].float()
        if pixels.shape[1] != channels:
            raise DataError(f"the image processor gives {pixels.shape[1]} channels but the "
                            f"model expects {channels}")
        return Images(pixels)
    rows = []
    for a in raw:
        x = torch.as_tensor(a, dtype=torch.float32)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if x.shape[0] != channels:
            if x.shape[0] == 1:
                x = x.expand(channels, -1, -1)
            elif channels == 1:
                x = x.mean(0, keepdim=True)
            else:
                raise DataError(f"an image with {x.shape[0]} channels cannot feed a model with "
                                f"{channels} input channels")
        rows.append(F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                                  antialias=x.shape[-1] > size[1] or x.shape[-2] > size[0]))
    pixels = torch.cat(rows)
    if channels == 3:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    else:
        mean, std = torch.tensor(0.5), torch.tensor(0.5)
    return Images(((pixels - mean) / std).contiguous())


__all__ = ["DEFAULT_IMAGE_SIZE", "ImageBatch", "Images", "digit_labels", "digits",
           "image_files", "image_size", "prepare_images", "read_images"]
