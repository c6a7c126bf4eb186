"""The data of a job and the checks that run before any model loads.

A compression job calibrates and evaluates on text (:class:`TextData`) or, for vision models,
on images (:class:`ImageData`, scikit-learn's digits by default). Each is built from the
user's sources before the model loads, so a bad path or too little data is a one-line error
before any heavy work; :meth:`JobData.prepare` then tokenises or resizes for the loaded model.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from ..api import compress
from ..calib.data import (
    MIN_CALIBRATION_PASSAGES,
    MIN_EVALUATION_PASSAGES,
    TextSource,
    TokenizedText,
    read_texts,
    require_passages,
    tokenize,
)
from ..compress import CompressionConfig
from ..compress.result import CompressResult
from ..data.images import Images, image_files, image_size, prepare_images, read_images
from ..defaults import describe_config
from ..errors import ConfigError, DataError
from ..models.loading import DEFAULT_MODEL_NAME, LoadedModel, model_positions


def check_seq_len(model: str | None, seq_len: int) -> None:
    """``seq_len`` within the positions the model's config declares."""
    positions = model_positions(model)
    if positions is not None and seq_len > positions:
        raise ConfigError(f"seq_len {seq_len} exceeds the {positions} positions of model "
                          f"'{model or DEFAULT_MODEL_NAME}': use --seq-len {positions} or "
                          "less")


def describe_source(source: TextSource, vision: bool = False, *, split: str = "calibration",
                    held_out: bool = False, calibration: TextSource = None) -> str:
    """Where a split's data came from, as report.json states it."""
    if source is None and split == "evaluation" and calibration is not None:
        return f"held-out fifth of {describe_source(calibration, vision)}"
    if source is None or source == "default":
        return "embedded default (scikit-learn digits)" if vision \
            else "embedded default (pydoc_data.topics)"
    if isinstance(source, (str, os.PathLike)):
        text = f"'{source}'" if source != "licenses" else "licence texts of installed packages"
        return f"{text} (every fifth passage held out)" if held_out and \
            split == "calibration" else text
    return f"{len(source)} strings"


def model_images(loaded: LoadedModel, raw: list) -> Images:
    """Raw images as the loaded vision model takes them, on its device."""
    config = loaded.model.config
    device = next(loaded.model.parameters()).device
    images = prepare_images(raw, image_size(config), int(config.num_channels), loaded.processor)
    return Images(images.pixel_values.to(device))


class JobData(ABC):
    """Calibration and held-out evaluation data of a compression job: read and checked when
    built (before the model loads), prepared for the loaded model by :meth:`prepare`."""

    #: What one sample is called in messages and report keys.
    unit: ClassVar[str]
    #: Whether the samples are images (the reports name the embedded default accordingly).
    vision: ClassVar[bool]

    def __init__(self, data: TextSource, eval_data: TextSource) -> None:
        self.data, self.eval_data = data, eval_data
        self.calibration: TokenizedText | Images | None = None
        self.evaluation: TokenizedText | Images | None = None
        self.overlap = 0  # evaluation passages that are also calibration passages (text)

    @abstractmethod
    def prepare(self, loaded: LoadedModel, samples: int, log: Callable[[str], None]) -> None:
        """Set :attr:`calibration` (at most ``samples``) and :attr:`evaluation` for
        ``loaded``."""

    @abstractmethod
    def compress(self, loaded: LoadedModel, config: CompressionConfig, quiet: bool,
                 log: Callable[[str], None], **options: Any) -> CompressResult:
        """Compress ``loaded.model`` with ``config`` on the calibration data (``options``:
        more keywords of :func:`lowrank.compress`)."""

    def info(self) -> dict[str, Any]:
        """The ``data`` section of report.json."""
        return {"calibration": describe_source(self.data, self.vision, split="calibration",
                                               held_out=self.eval_data is None),
                "evaluation": describe_source(self.eval_data, self.vision, split="evaluation",
                                              calibration=self.data),
                f"calibration_{self.unit}": len(self.calibration),
                f"evaluation_{self.unit}": len(self.evaluation)}


class TextData(JobData):
    """Calibration and evaluation text: the embedded default, a file or a list of strings;
    with calibration text of the user's and no evaluation text, every fifth passage is held
    out."""

    unit = "passages"
    vision = False

    def __init__(self, model: str | None, data: TextSource, eval_data: TextSource,
                 seq_len: int) -> None:
        super().__init__(data, eval_data)
        check_seq_len(model, seq_len)
        self.seq_len = seq_len
        self.calib_texts = read_texts(data, "calibration")
        self.eval_texts = read_texts(eval_data, "evaluation") \
            if eval_data is not None or data is None else None
        if self.eval_texts is None:  # user calibration text: every fifth passage is held out
            _check_split(len(self.calib_texts), data)
            self.eval_texts = self.calib_texts[::5]
            self.calib_texts = [t for i, t in enumerate(self.calib_texts) if i % 5]
        # counted again after tokenising (passages of special tokens only are dropped)
        self._require(len(self.calib_texts), len(self.eval_texts))

    def _require(self, calibration: int, evaluation: int) -> None:
        require_passages(calibration, MIN_CALIBRATION_PASSAGES, "calibration",
                         describe_source(self.data, split="calibration",
                                         held_out=self.eval_data is None))
        require_passages(evaluation, MIN_EVALUATION_PASSAGES, "evaluation",
                         describe_source(self.eval_data, split="evaluation",
                                         calibration=self.data))

    def prepare(self, loaded: LoadedModel, samples: int, log: Callable[[str], None]) -> None:
        self.evaluation = tokenize(self.eval_texts, loaded.tokenizer, self.seq_len)
        self.calibration = tokenize(self.calib_texts, loaded.tokenizer, self.seq_len, samples)
        self._require(len(self.calibration), len(self.evaluation))
        self.overlap = len(set(self.evaluation.texts) & set(self.calibration.texts))
        if self.overlap:
            log(f"warning: {self.overlap} of {len(self.evaluation)} evaluation passages are "
                "also calibration passages: the quality after compression is not held out")

    def compress(self, loaded: LoadedModel, config: CompressionConfig, quiet: bool,
                 log: Callable[[str], None], **options: Any) -> CompressResult:
        log(f"compressing with {config.method} on {len(self.calibration)} calibration "
            "passages")
        model = loaded.lazy if loaded.lazy is not None else loaded.model
        return compress(model, config, self.calibration, tokenizer=loaded.tokenizer,
                        quiet=quiet, **options)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "seq_len": self.seq_len,
                "evaluation_overlap_passages": self.overlap}


class ImageData(JobData):
    """Calibration and evaluation images: the embedded digits' two parts, or the user's
    directory of PNG/JPEG files with every fifth image held out."""

    unit = "images"
    vision = True

    def __init__(self, data: TextSource, eval_data: TextSource) -> None:
        super().__init__(data, eval_data)
        for source in (data, eval_data):
            if source is not None and source != "default":
                image_files(source)  # the one-line error before any heavy work

    def prepare(self, loaded: LoadedModel, samples: int, log: Callable[[str], None]) -> None:
        data, eval_data = self.data, self.eval_data
        raw_calib = read_images(data, "calibration")
        if eval_data is not None:
            raw_eval = read_images(eval_data, "evaluation")
        elif data is None or data == "default":
            raw_eval = read_images(None, "evaluation")
        else:  # the user's directory: every fifth image is held out
            raw_eval = raw_calib[::5]
            raw_calib = [x for i, x in enumerate(raw_calib) if i % 5]
        raw_calib = raw_calib[:samples]
        require_passages(len(raw_calib), MIN_CALIBRATION_PASSAGES, "calibration",
                         describe_source(data, True, held_out=eval_data is None),
                         unit="images")
        require_passages(len(raw_eval), MIN_EVALUATION_PASSAGES, "evaluation",
                         describe_source(eval_data, True, split="evaluation",
                                         calibration=data),
                         unit="images")
        self.calibration = model_images(loaded, raw_calib)
        self.evaluation = model_images(loaded, raw_eval)

    def compress(self, loaded: LoadedModel, config: CompressionConfig, quiet: bool,
                 log: Callable[[str], None], **options: Any) -> CompressResult:
        images = self.calibration.pixel_values if "images" in config.needs else None
        log(f"compressing with {describe_config(config)}"
            + (f" on {len(self.calibration)} calibration images" if images is not None else ""))
        return compress(loaded.model, config, images, quiet=quiet, **options)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "image_size": list(self.evaluation.pixel_values.shape[-2:])}


def _check_split(count: int, source: TextSource) -> None:
    """Enough passages to hold every fifth out and still calibrate and evaluate on enough."""
    needed = max(5 * MIN_EVALUATION_PASSAGES - 4,
                 (MIN_CALIBRATION_PASSAGES * 5 + 3) // 4)
    if count < needed:
        raise DataError(f"{describe_source(source)} gives {count} passage(s); with no "
                        f"--eval-data every fifth is held out for evaluation, so at least "
                        f"{needed} are needed ({MIN_CALIBRATION_PASSAGES} to calibrate, "
                        f"{MIN_EVALUATION_PASSAGES} to evaluate): give more text (passages "
                        "are cut at blank lines) or --eval-data")
