"""Sharded safetensors files in Hugging Face's layout, read lazily.

A model that fits one shard is written as ``model.safetensors``; a larger one as
``model-00001-of-0000N.safetensors``, ... beside ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {tensor: shard file}}``), the layout
``save_pretrained`` writes and ``from_pretrained`` reads. :class:`ShardWriter` holds at most
one shard of tensors in host memory; :func:`stored_tensors` reads file headers only and
:func:`iter_tensors` memory-maps tensor data on demand (on the CPU the tensors are views of
the file: nothing is read until used).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ..errors import ConfigError, ModelFileError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 10**9
"""Largest shard by default: transformers' ``max_shard_size="5GB"``."""

Stored = dict[str, tuple[Path, tuple[int, ...]]]


def check_shard_bytes(max_shard_bytes: int) -> int:
    """Return ``max_shard_bytes`` if it is a positive integer; else raise :class:`ConfigError`."""
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) \
            or max_shard_bytes < 1:
        raise ConfigError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}")
    return max_shard_bytes


def shard_name(index: int, count: int) -> str:
    """transformers' shard file name: ``model-00002-of-00005.safetensors``."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


class ShardWriter:
    """Write named tensors into ``directory`` as safetensors shards of at most
    ``max_shard_bytes`` each (a larger single tensor gets a shard of its own).

    ``metadata`` goes into every shard's header. Tensors are copied to the CPU as they are
    added and a shard is written as soon as the next tensor would overflow it, so host memory
    holds at most one shard. :meth:`close` names the files (``model.safetensors`` alone when
    one shard was enough) and writes the index. Used as a context manager, it closes on success
    and removes its partial files on error. Tied tensors must be added once.
    """

    def __init__(self, directory: str | os.PathLike, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 *, metadata: Mapping[str, str] | None = None) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigError(f"shard directory '{self.directory}' is not a directory")
        self.max_shard_bytes = check_shard_bytes(max_shard_bytes)
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise ConfigError(f"shard metadata must map strings to strings, got {meta!r}")
        self.metadata = meta or None
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._storages: set[int] = set()
        self._parts: list[tuple[Path, list[str]]] = []
        self._names: set[str] = set()
        self.total_size = 0
        self._closed = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` (copied to the CPU, contiguous) under ``name``."""
        if self._closed:
            raise ConfigError(f"cannot add '{name}': the shard writer for '{self.directory}' "
                              "is closed")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tensor name must be a non-empty string, got {name!r}")
        if name in self._names:
            raise ConfigError(f"tensor '{name}' was already added to the shards in "
                              f"'{self.directory}': names must be unique")
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"'{name}' must be a torch.Tensor, got {type(tensor).__name__}")
        data = tensor.detach().to("cpu").contiguous()
        if data.untyped_storage().data_ptr() in self._storages:
            data = data.clone()  # safetensors refuses two names on one storage in a file
        nbytes = data.numel() * data.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._names.add(name)
        self._pending[name] = data
        self._pending_bytes += nbytes
        self._storages.add(data.untyped_storage().data_ptr())
        self.total_size += nbytes

    def _flush(self) -> None:
        path = self.directory / f".model-part-{len(self._parts) + 1:05d}.safetensors"
        self._parts.append((path, list(self._pending)))
        write_safetensors(path, self._pending, self.metadata)
        self._pending, self._pending_bytes, self._storages = {}, 0, set()

    def close(self, metadata: Mapping[str, str] | None = None) -> list[str]:
        """Write the last shard, name the shards and write the index (only when there are
        several shards; ``metadata`` joins ``total_size`` in its ``"metadata"`` object).
        Return the file names written, shards first."""
        if self._closed:
            raise ConfigError(f"the shard writer for '{self.directory}' is already closed")
        if self._pending or not self._parts:
            self._flush()
        self._closed = True
        if len(self._parts) == 1:
            self._parts[0][0].replace(self.directory / WEIGHTS)
            return [WEIGHTS]
        names, weight_map = [], {}
        for number, (path, keys) in enumerate(self._parts, start=1):
            name = shard_name(number, len(self._parts))
            path.replace(self.directory / name)
            names.append(name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {**dict(metadata or {}), "total_size": self.total_size},
                 "weight_map": weight_map}
        (self.directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
        return [*names, INDEX]

    def abort(self) -> None:
        """Drop pending tensors and remove the shards written so far."""
        self._closed = True
        self._pending = {}
        for path, _ in self._parts:
            path.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            if not self._closed:
                self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------- reading


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no tensor data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from exc


def _plain_file_name(name: object) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and Path(name).name == name)


def _read_index(index: Path) -> dict[str, str]:
    try:
        info = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{index} is not valid JSON ({exc})") from exc
    weight_map = info.get("weight_map") if isinstance(info, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFileError(f"{index}: expected an object whose 'weight_map' maps tensor names "
                             "to shard files")
    for key, name in weight_map.items():
        if not _plain_file_name(name):
            raise ModelFileError(f"{index}: shard {name!r} of tensor '{key}' is not a plain file "
                                 "name inside the directory")
    return weight_map


def _few(items: list[str], first: int = 5) -> str:
    more = f" and {len(items) - first} more" if len(items) > first else ""
    return ", ".join(items[:first]) + more


_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
          torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
          torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` as one safetensors file, one tensor at a time (``safetensors``'
    ``save_file`` first copies every tensor into Python bytes, doubling the memory a large
    checkpoint needs). The layout is the format's: an 8-byte little-endian header length, the
    JSON header (names, dtypes, shapes, data offsets, ``__metadata__``) padded with spaces to
    8 bytes, then the data."""
    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _CODES:
            raise ConfigError(f"tensor '{name}' has dtype {tensor.dtype}, which safetensors "
                              "files do not hold")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _CODES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for tensor in tensors.values():
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            if data.numel():
                f.write(memoryview(data.view(torch.uint8).numpy()))


def stored_tensors(directory: str | os.PathLike) -> Stored:
    """Tensor name -> (file, shape) of the weights in ``directory``, from headers only.

    Reads ``model.safetensors`` if present (as transformers does), else
    ``model.safetensors.index.json`` and its shards. Raises :class:`ModelFileError` for a
    missing or unreadable file, a shard name that is not a plain file name, a missing shard, a
    tensor the index places in a shard that lacks it, a tensor stored in two shards or one the
    index does not list.
    """
    directory = Path(directory)
    single = directory / WEIGHTS
    if single.is_file():
        return {k: (single, shape) for k, shape in _header(single).items()}
    index = directory / INDEX
    if not index.is_file():
        raise ModelFileError(f"'{directory}' has no {WEIGHTS} (nor a sharded {INDEX})")
    weight_map = _read_index(index)
    by_shard: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        by_shard.setdefault(name, []).append(key)
    stored: Stored = {}
    for name, keys in by_shard.items():
        path = directory / name
        if not path.is_file():
            raise ModelFileError(f"{index} places {len(keys)} tensor(s) ({_few(keys, 3)}) in "
                                 f"shard {name}, which is missing from '{directory}'")
        header = _header(path)
        absent = [k for k in keys if k not in header]
        if absent:
            raise ModelFileError(f"{path} lacks {len(absent)} tensor(s) that {INDEX} places "
                                 f"there: {_few(absent)}")
        for key, shape in header.items():
            if key in stored:
                raise ModelFileError(f"tensor '{key}' is stored in two shards, "
                                     f"{stored[key][0].name} and {name}: expected one")
            stored[key] = (path, shape)
    unlisted = [k for k in stored if k not in weight_map]
    if unlisted:
        raise ModelFileError(f"{len(unlisted)} stored tensor(s) are not listed in {index}: "
                             f"{_few(unlisted)}")
    return stored


def iter_tensors(stored: Stored, names: Iterable[str] | None = None,
                 device: str | torch.device | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for ``names`` (default: all of ``stored``), one shard file
    open at a time, each tensor read onto ``device`` (default CPU, where it is a view of the
    memory-mapped file)."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name in stored if names is None else names:
        if name not in stored:
            raise ConfigError(f"tensor '{name}' is not among the stored tensors")
        by_file.setdefault(stored[name][0], []).append(name)
    where = "cpu" if device is None else str(torch.device(device))
    for path, keys in by_file.items():
        try:
            handle = safe_open(str(path), framework="pt", device=where)
        except Exception as exc:
            raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from exc
        with handle as f:
            for key in keys:
                yield key, f.get_tensor(key)


def open_tensor(path: str | os.PathLike, name: str,
                device: str | torch.device | None = None) -> torch.Tensor:
    """One stored tensor, read lazily from ``path`` onto ``device`` (see :func:`iter_tensors`)."""
    path = Path(path)
    shapes = _header(path)
    if name not in shapes:
        raise ModelFileError(f"{path} holds no tensor '{name}'")
    return next(iter_tensors({name: (path, shapes[name])}, device=device))[1]
