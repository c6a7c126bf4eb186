"""The ``lowrank`` checkpoint: ``model.safetensors`` + ``lowrank.json`` (+ config/tokenizer).

The manifest records the format version, the base model, the method config and, per
factorized module, its kind, rank, shapes and dtype, so :func:`load` rebuilds the architecture
from ``config.json`` and then loads the tensors: no pickle anywhere. Models larger than one
shard (5 GB by default) are written as Hugging Face shards with ``model.safetensors.index.json``
(:mod:`lowrank.io.shards`); :func:`load` memory-maps either layout and fills a skeleton whose
parameters were never allocated, tensor by tensor, on the requested device.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelFileError
from ..nn import LowRankLinear
from ..nn.kinds import entry_of, is_serialisable, module_kind
from ..nn.manifest import DTYPES, dtype_name
from .atomic import atomic_directory
from .shards import (
    DEFAULT_SHARD_BYTES,
    INDEX,
    WEIGHTS,
    ShardWriter,
    Stored,
    check_shard_bytes,
    iter_tensors,
    stored_tensors,
)

FORMAT = "lowrank"
FORMAT_VERSION = 1
MANIFEST = "lowrank.json"


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
    max_shard_bytes: int | None = None,
) -> dict[str, Any]:
    """Write tensors, manifest and base config/tokenizer files into an existing directory.

    Tensors go to ``model.safetensors`` when they fit in ``max_shard_bytes`` (default
    :data:`~lowrank.io.shards.DEFAULT_SHARD_BYTES`, 5 GB), else to Hugging Face shards and
    ``model.safetensors.index.json``; tied tensors are stored once, dtypes as they are.
    """
    limit = DEFAULT_SHARD_BYTES if max_shard_bytes is None else check_shard_bytes(
        max_shard_bytes)
    directory = Path(directory)
    manifest = build_manifest(model, base)
    _write_tensors(model, directory, limit)
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


def _write_tensors(model: nn.Module, directory: Path, max_shard_bytes: int) -> None:
    import safetensors.torch as st

    state = model.state_dict()
    dropped = {alias: kept for kept, aliases in st._remove_duplicate_names(state).items()
               for alias in aliases}
    keys = [k for k in state if k not in dropped]
    # like safetensors' save_model, each header names the tied aliases that were not stored
    with ShardWriter(directory, max_shard_bytes, metadata={"format": "pt", **dropped}) as out:
        for key in keys:
            out.add(key, state[key])


def save(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    base: dict[str, Any] | None = None,
    copy_files: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    max_shard_bytes: int | None = None,
) -> Path:
    """Save ``model`` (factorized modules included) to ``directory``, atomically.

    ``copy_files`` are config/tokenizer files of the base model to keep beside the weights so
    the directory is self-contained. Weights larger than ``max_shard_bytes`` (default 5 GB)
    are sharded as :func:`write_checkpoint` says. ``directory`` may be new, empty or a previous
    lowrank output; another non-empty directory is replaced only with ``overwrite=True``, and the
    current directory, its parents and the home directory never
    (:func:`lowrank.io.atomic.check_output_dir`).
    """
    if max_shard_bytes is not None:
        check_shard_bytes(max_shard_bytes)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        write_checkpoint(model, tmp, base=base, copy_files=copy_files,
                         max_shard_bytes=max_shard_bytes)
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
    with _parameters_on_meta():  # validates; the (unallocated) modules are discarded
        for name, entry in modules.items():
            _module_from_entry(path, name, entry)
    if not (directory / WEIGHTS).is_file() and not (directory / INDEX).is_file():
        raise ModelFileError(f"'{directory}' has no {WEIGHTS} (nor a sharded {INDEX})")
    return manifest


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create modules whose parameters live on the meta device (no memory, no initialisation
    cost); buffers stay real, so values computed at construction (rotary frequencies, index
    buffers) survive. A parameter already on meta keeps its identity, so ties survive."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"),
                                                    requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


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
    ``model``), factorized modules from ``lowrank.json``, tensors from ``model.safetensors``
    or from the shards listed in ``model.safetensors.index.json``.

    The skeleton built from ``config.json`` and the factorized modules get no parameter memory
    (meta device); each stored tensor is then read straight from the memory-mapped file onto
    ``device`` (default: the CPU, or the device of a given skeleton's parameter) and put in
    place, so the host never holds a second copy of the model. Tied parameters stay tied.

    The result's outputs equal those of the model that was saved (bit-identical on the same
    machine). Raises :class:`ModelFileError` (one line naming the tensors and their file) for a
    missing/malformed/newer manifest, a malformed index or missing shard, tensors missing from
    or unexpected in the files, tensors whose stored shape differs from the model's (checked
    from the headers before loading), and tensors holding NaN or inf (checked as they are
    read): never a silently wrong model.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    target = None if device is None else torch.device(device)
    files = stored_tensors(directory)
    source = directory / WEIGHTS if (directory / WEIGHTS).is_file() else directory / INDEX
    stored = {k: shape for k, (_, shape) in files.items()}
    listed = manifest.get("tensors") or []
    missing = [k for k in listed if k not in stored]
    if missing:
        raise ModelFileError(f"{source} lacks {_count(missing, 'tensor')} named in "
                             f"{MANIFEST}: {_names(missing)}")
    if model is None:
        with _parameters_on_meta():
            model = _skeleton_from_config(directory, manifest)
    named = dict(model.named_modules())
    for name, entry in manifest["modules"].items():
        target_module = named.get(name)
        if target_module is None:
            raise ModelFileError(f"{MANIFEST} names module '{name}', which the model lacks")
        with _parameters_on_meta():
            layer = _module_from_entry(directory / MANIFEST, name, entry)
        if isinstance(target_module, nn.Linear) and isinstance(layer, LowRankLinear) and (
                (target_module.in_features, target_module.out_features)
                != (layer.in_features, layer.out_features)):
            raise ModelFileError(f"{MANIFEST}: shape of '{name}' disagrees with the model")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    where = _locator(files, source)
    _check_shapes(where, stored, model)
    plan = _match_state(where, stored, model)
    _assign(model, files, plan, target, where)
    model.lowrank_manifest = {k: manifest.get(k) for k in ("method", "base_model")}
    if target is not None:
        model.to(target)  # buffers that are not stored (rotary frequencies, ...)
    return model.eval()


Locator = Callable[[Iterable[str]], Path]


def _locator(files: Stored, source: Path) -> Locator:
    """``where(keys)``: the one file holding all ``keys``, else ``source`` (the index)."""
    def where(keys: Iterable[str]) -> Path:
        paths = {files[k][0] for k in keys if k in files}
        return paths.pop() if len(paths) == 1 else source
    return where


def _tie_groups(state: dict[str, Any]) -> list[list[str]]:
    """State keys grouped by the tensor they name: the same object (ties, also on meta) or
    overlapping storage (ties made through ``.data``)."""
    from safetensors.torch import _find_shared_tensors

    group_of: dict[str, int] = {}
    by_id: dict[int, int] = {}
    for key, value in state.items():
        group_of[key] = by_id.setdefault(id(value), len(by_id))
    real = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not v.is_meta}
    for shared in _find_shared_tensors(real):
        ids = {group_of[k] for k in shared}
        first = min(ids)
        for key, gid in group_of.items():
            if gid in ids:
                group_of[key] = first
    groups: dict[int, list[str]] = {}
    for key, gid in group_of.items():
        groups.setdefault(gid, []).append(key)
    return list(groups.values())


def _match_state(where: Locator, stored: dict[str, tuple[int, ...]],
                 model: nn.Module) -> dict[str, list[str]]:
    """Stored key -> the model's state keys it fills. Raises for model tensors no file holds
    and for stored tensors the model lacks (a tie's second stored name included)."""
    state = model.state_dict(keep_vars=True)
    plan: dict[str, list[str]] = {}
    missing_keys, unexpected = [], [k for k in stored if k not in state]
    for group in _tie_groups(state):
        found = sorted(k for k in group if k in stored)
        if not found:
            missing_keys.append(sorted(group)[0])
            continue
        plan[found[0]] = group
        unexpected += found[1:]
    if missing_keys or unexpected:
        parts = [f"{_count(keys, f'{what} tensor')} ({_names(keys)})"
                 for what, keys in (("missing", sorted(missing_keys)),
                                    ("unexpected", sorted(unexpected))) if keys]
        raise ModelFileError(f"{where(unexpected)} does not match the model described by "
                             f"{MANIFEST}: " + ", ".join(parts))
    return plan


def _assign(model: nn.Module, files: Stored, plan: dict[str, list[str]],
            target: torch.device | None, where: Locator) -> None:
    """Read each planned tensor onto its device and put it in every slot it fills (one
    ``Parameter`` per tied parameter object). A tensor is converted only where the slot's
    dtype (or a given skeleton's device) differs, as ``load_state_dict`` would."""
    other: dict[str, torch.Tensor] = {}
    bad = []
    for key, tensor in iter_tensors(files, plan, device=target):
        count = _nonfinite(tensor)
        if count:
            bad.append((key, f"{key} ({count} of {tensor.numel()} values)"))
            continue
        made: dict[int, nn.Parameter] = {}
        for slot in plan[key]:
            owner, _, leaf = slot.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            old = module._parameters.get(leaf, module._buffers.get(leaf))
            if old is None:
                other[slot] = tensor  # extra state and other custom state entries
                continue
            value = tensor
            if old.dtype != tensor.dtype and old.is_floating_point():
                value = value.to(old.dtype)
            if target is None and not old.is_meta and old.device != value.device:
                value = value.to(old.device)
            if leaf in module._parameters:
                if id(old) not in made:
                    made[id(old)] = nn.Parameter(value, requires_grad=old.requires_grad)
                module._parameters[leaf] = made[id(old)]
            else:
                module._buffers[leaf] = value
    if bad:
        verb = "holds" if len(bad) == 1 else "hold"
        raise ModelFileError(f"{where(k for k, _ in bad)}: {_count(bad, 'tensor')} {verb} NaN "
                             f"or inf: {_names((text for _, text in bad), 3)}; expected finite "
                             "weights")
    if other:
        model.load_state_dict(other, strict=False, assign=True)
    empty = [name for name, p in model.named_parameters() if p.is_meta]
    if empty:
        raise ModelFileError(f"{where(())}: {_count(empty, 'parameter')} of the model described "
                             f"by {MANIFEST} got no stored value: {_names(empty)}")


def _nonfinite(tensor: torch.Tensor, chunk: int = 1 << 20) -> int:
    """How many NaN/inf values a floating tensor holds. The common all-finite case is one
    NaN-propagating min/max reduction (no temporary the size of the tensor); values are
    counted, in chunks, only when it fails."""
    if tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    flat = tensor.reshape(-1)
    if not tensor.is_complex():
        low, high = torch.aminmax(flat)
        if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
            return 0
    return sum(int(part.numel() - torch.isfinite(part).sum()) for part in flat.split(chunk))


def _count(items: Any, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _names(items: Iterable[str], first: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``: a bounded list for one-line messages."""
    items = list(items)
    shown = ", ".join(items[:first])
    return shown + (f" and {len(items) - first} more" if len(items) > first else "")


def _shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _check_shapes(where: Locator, stored: dict[str, tuple[int, ...]], model: nn.Module) -> None:
    """Refuse stored tensors whose shape differs from the model's (read from the headers only,
    before anything is loaded), naming each tensor with the expected and the stored shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    keys = [k for k, shape in stored.items() if k in expected and expected[k] != shape]
    wrong = [f"{k} expected {_shape(expected[k])}, stored {_shape(stored[k])}" for k in keys]
    if wrong:
        verb = "has" if len(wrong) == 1 else "have"
        raise ModelFileError(f"{where(keys)}: {_count(wrong, 'tensor')} {verb} the wrong shape "
                             f"for the model described by {MANIFEST}: {_names(wrong, 3)}")
