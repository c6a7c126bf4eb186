"""The ``lowrank`` checkpoint: ``model.safetensors`` + ``lowrank.json`` (+ config/tokenizer).

The manifest records the format version, the base model, the method config and, per
factorized module, its kind, rank, shapes and dtype, so :func:`load` rebuilds the architecture
from ``config.json`` and then loads the tensors: no pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelFileError
from ..nn import LowRankLinear
from ..nn.kinds import entry_of, is_serialisable, module_kind
from ..nn.manifest import DTYPES, dtype_name
from .atomic import atomic_directory

FORMAT = "lowrank"
FORMAT_VERSION = 1
MANIFEST = "lowrank.json"
WEIGHTS = "model.safetensors"


def build_manifest(model: nn.Module, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe ``model``'s factorized modules and provenance for ``lowrank.json``."""
    found = [name for name, m in model.named_modules() if is_serialisable(m)]
    # a serialisable module describes its own children (ResidualLowRankLinear's base)
    modules = {name: entry_of(model.get_submodule(name)) for name in found
               if not any(name.startswith(outer + ".") for outer in found)}
    info = dict(getattr(model, "lowrank_manifest", {}) or {})
    first = next(model.parameters(), None)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base_model": base or info.get("base_model") or {},
        "model_class": type(model).__name__,
        "dtype": dtype_name(first.dtype) if first is not None else "float32",
        "method": info.get("method"),
        "modules": modules,
        "tensors": sorted(_unique_state_keys(model)),
    }


def _unique_state_keys(model: nn.Module) -> list[str]:
    from safetensors.torch import _remove_duplicate_names

    state = model.state_dict()
    to_remove = _remove_duplicate_names(state)
    dropped = {name for names in to_remove.values() for name in names}
    return [k for k in state if k not in dropped]


def write_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    base: dict[str, Any] | None = None,
    copy_files: Iterable[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Write tensors, manifest and base config/tokenizer files into an existing directory."""
    from safetensors.torch import save_model

    directory = Path(directory)
    manifest = build_manifest(model, base)
    save_model(model, str(directory / WEIGHTS), metadata={"format": "pt"})
    for src in copy_files:
        src = Path(src)
        rel = Path(src.parent.name, src.name) if src.parent.name == "1_Pooling" else Path(src.name)
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, directory / rel)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        (directory / "config.json").write_text(config.to_json_string(), encoding="utf-8")
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def save(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    base: dict[str, Any] | None = None,
    copy_files: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (factorized modules included) to ``directory``, atomically.

    ``copy_files`` are config/tokenizer files of the base model to keep beside the weights so
    the directory is self-contained. ``directory`` may be new, empty or a previous lowrank
    output; another non-empty directory is replaced only with ``overwrite=True``, and the
    current directory, its parents and the home directory never
    (:func:`lowrank.io.atomic.check_output_dir`).
    """
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        write_checkpoint(model, tmp, base=base, copy_files=copy_files)
    return Path(directory)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``lowrank.json``; raise :class:`ModelFileError` naming the problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError(f"'{directory}' is not a directory: expected a lowrank output "
                             "directory with lowrank.json and model.safetensors")
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelFileError(f"'{directory}' has no {MANIFEST}: expected a directory written by "
                             "lowrank save / lowrank compress")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a lowrank manifest: expected \"format\": "
                             f"\"{FORMAT}\"")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path} has format_version {version!r}: expected an integer >= 1")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path} has format_version {version}, newer than this lowrank "
                             f"supports ({FORMAT_VERSION}): upgrade lowrank")
    modules = manifest.get("modules")
    if not isinstance(modules, dict):
        raise ModelFileError(f"{path}: 'modules' must be an object of module entries")
    for name, entry in modules.items():
        _module_from_entry(path, name, entry)  # validates; the module itself is discarded
    if not (directory / WEIGHTS).is_file():
        raise ModelFileError(f"'{directory}' has no {WEIGHTS}")
    return manifest


def _module_from_entry(path: Path, name: str, entry: Any) -> nn.Module:
    if not isinstance(name, str) or not name or ".." in name or name.startswith("."):
        raise ModelFileError(f"{path}: invalid module name {name!r}")
    cls = module_kind(entry.get("kind")) if isinstance(entry, dict) else None
    if cls is None:
        raise ModelFileError(f"{path}: malformed entry for module '{name}': expected an object "
                             "whose 'kind' is a lowrank module such as LowRankLinear")
    try:
        return cls.from_manifest_entry(entry)
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: malformed entry for module '{name}': {exc}") from exc


def _skeleton_from_config(directory: Path, manifest: dict[str, Any]) -> nn.Module:
    if not (directory / "config.json").is_file():
        raise ModelFileError(f"'{directory}' has no config.json: pass model=<skeleton module> "
                             "to load() for models that are not Hugging Face models")
    try:
        import transformers
    except ImportError as exc:
        raise ModelFileError("loading a Hugging Face checkpoint needs transformers: "
                             "pip install 'lowrank[hf]'") from exc
    try:
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{directory / 'config.json'} is not a readable Hugging Face "
                             f"config: {first}") from exc
    cls = getattr(transformers, str(manifest.get("model_class", "")), None)
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        model = cls(config)  # the saved class itself (allow-listed: transformers models only)
    else:
        kind = (manifest.get("base_model") or {}).get("kind")
        auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
        model = auto.from_config(config)
    return model.to(DTYPES.get(manifest.get("dtype", "float32"), torch.float32))


def load(directory: str | os.PathLike, model: nn.Module | None = None,
         device: str | torch.device | None = None) -> nn.Module:
    """Rebuild a saved model: architecture from ``config.json`` (or the given skeleton
    ``model``), factorized modules from ``lowrank.json``, tensors from ``model.safetensors``.

    The result's outputs equal those of the model that was saved (bit-identical on the same
    machine). Raises :class:`ModelFileError` (one line naming the tensors) for a
    missing/malformed/newer manifest, tensors missing from or unexpected in the safetensors file,
    tensors whose stored shape differs from the model's (checked from the file header before
    loading), and tensors holding NaN or inf (checked after loading): never a silently wrong
    model.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = directory / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # corrupt header
        raise ModelFileError(f"{weights} is not a readable safetensors file: "
                             f"{exc}") from exc
    listed = manifest.get("tensors") or []
    missing = [k for k in listed if k not in stored]
    if missing:
        raise ModelFileError(f"{weights} lacks {_count(missing, 'tensor')} named in "
                             f"{MANIFEST}: {_names(missing)}")
    if model is None:
        model = _skeleton_from_config(directory, manifest)
    named = dict(model.named_modules())
    for name, entry in manifest["modules"].items():
        target = named.get(name)
        if target is None:
            raise ModelFileError(f"{MANIFEST} names module '{name}', which the model lacks")
        layer = _module_from_entry(directory / MANIFEST, name, entry)
        if isinstance(target, nn.Linear) and isinstance(layer, LowRankLinear) and (
                (target.in_features, target.out_features)
                != (layer.in_features, layer.out_features)):
            raise ModelFileError(f"{MANIFEST}: shape of '{name}' disagrees with the model")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    _check_shapes(weights, stored, model)
    try:
        missing_keys, unexpected = load_model(model, str(weights), strict=False)
    except RuntimeError as exc:
        raise ModelFileError(f"{weights} does not fit the model described by "
                             f"{MANIFEST}: {str(exc).splitlines()[0]}") from exc
    if missing_keys or unexpected:
        parts = [f"{_count(keys, f'{what} tensor')} ({_names(keys)})"
                 for what, keys in (("missing", sorted(missing_keys)),
                                    ("unexpected", sorted(unexpected))) if keys]
        raise ModelFileError(f"{weights} does not match the model described by {MANIFEST}: "
                             + ", ".join(parts))
    _check_finite(weights, stored, model)
    model.lowrank_manifest = {k: manifest.get(k) for k in ("method", "base_model")}
    if device is not None:
        model.to(device)
    return model.eval()


def _count(items: Any, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _names(items: Iterable[str], first: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``: a bounded list for one-line messages."""
    items = list(items)
    shown = ", ".join(items[:first])
    return shown + (f" and {len(items) - first} more" if len(items) > first else "")


def _shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _check_shapes(weights: Path, stored: dict[str, tuple[int, ...]], model: nn.Module) -> None:
    """Refuse stored tensors whose shape differs from the model's (read from the header only,
    before anything is loaded), naming each tensor with the expected and the stored shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k} expected {_shape(expected[k])}, stored {_shape(shape)}"
             for k, shape in stored.items() if k in expected and expected[k] != shape]
    if wrong:
        verb = "has" if len(wrong) == 1 else "have"
        raise ModelFileError(f"{weights}: {_count(wrong, 'tensor')} {verb} the wrong shape for "
                             f"the model described by {MANIFEST}: {_names(wrong, 3)}")


def _check_finite(weights: Path, stored: dict[str, tuple[int, ...]], model: nn.Module) -> None:
    """Refuse NaN or inf in any floating tensor that came from the file (one cheap
    ``isfinite().all()`` per tensor; values are counted only for the bad ones)."""
    bad = []
    for key, tensor in model.state_dict().items():
        if key in stored and (tensor.is_floating_point() or tensor.is_complex()):
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                count = int(finite.numel() - finite.sum())
                bad.append(f"{key} ({count} of {finite.numel()} values)")
    if bad:
        verb = "holds" if len(bad) == 1 else "hold"
        raise ModelFileError(f"{weights}: {_count(bad, 'tensor')} {verb} NaN or inf: "
                             f"{_names(bad, 3)}; expected finite weights")
