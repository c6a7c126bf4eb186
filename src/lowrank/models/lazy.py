"""A Hugging Face model whose transformer blocks stay on the meta device until they are needed.

:class:`LazyModel` builds the architecture from ``config.json`` with empty (meta) parameters
(``accelerate.init_empty_weights``), materialises everything outside the repeated blocks
(embeddings, final norm, head) from the checkpoint's safetensors shards at once, and each block
only when :meth:`LazyModel.block` asks for it, reading its tensors straight from the
memory-mapped shards; :meth:`LazyModel.release` returns it to the meta device. Host memory
then holds the non-block weights plus one block, which is what lets a layer-wise pipeline
(:mod:`lowrank.compress.layerwise`) compress models larger than the machine's memory.

The checkpoint must match the architecture exactly: a tensor the model expects and the files
lack, or a tensor the files hold that the model does not expect, is refused before anything
is loaded (never a randomly initialised weight).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..blocks import main_blocks
from ..errors import ModelFileError
from ..io.shards import stored_tensors
from .hf import dtype_keyword

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _header(file: Path) -> tuple[int, dict[str, Any]]:
    """The byte offset of a safetensors file's data and its header (name -> dtype, shape,
    offsets)."""
    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return 8 + size, header


def _read(file: Path, header: tuple[int, dict[str, Any]], name: str) -> torch.Tensor:
    """One tensor read from the file into fresh memory. The file is read, not memory-mapped,
    so the pages of blocks already released do not stay in this process's resident set."""
    base, entries = header
    entry = entries[name]
    start, end = entry["data_offsets"]
    buffer = bytearray(end - start)
    with open(file, "rb") as f:
        f.seek(base + start)
        if f.readinto(buffer) != len(buffer):
            raise ModelFileError(f"{file} is truncated: tensor '{name}' runs past its end")
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ModelFileError(f"{file}: tensor '{name}' has dtype {entry['dtype']}, which "
                             "lowrank does not read")
    if not buffer:
        return torch.empty(entry["shape"], dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])


class LazyModel:
    """A model skeleton on the meta device whose blocks load on demand (module docstring).

    ``dtype`` is the dtype every floating tensor is cast to; ``device`` the compute device the
    blocks and the non-block modules are materialised on.
    """

    def __init__(self, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", kind: str | None = None) -> None:
        import transformers
        from accelerate import init_empty_weights

        self.path = Path(path)
        self.dtype = dtype
        self.device = torch.device(device)
        config = transformers.AutoConfig.from_pretrained(str(self.path), local_files_only=True)
        auto = transformers.AutoModelForCausalLM if kind == "causal-lm" \
            else transformers.AutoModel
        with init_empty_weights(include_buffers=False):
            self.model = auto.from_config(config, **{dtype_keyword(transformers): dtype})
        self.model.eval()
        self.model.tie_weights()
        self.prefix, self._blocks = main_blocks(self.model)
        self._files = {name: file for name, (file, _) in stored_tensors(self.path).items()}
        self._names = self._match_names()
        self._opened: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._resident: set[int] = set()
        self._kept: set[int] = set()
        block_params = {f"{self.prefix}.{i}." for i in range(len(self._blocks))}
        for name in self._names:
            if not any(name.startswith(p) for p in block_params):
                self._load(name)

    def __len__(self) -> int:
        return len(self._blocks)

    def _expected(self) -> list[str]:
        """The tensors the checkpoint must provide: parameters (tied ones once) and
        persistent buffers."""
        names = [n for n, _ in self.model.named_parameters()]
        non_persistent = {f"{m}.{b}" if m else b
                          for m, mod in self.model.named_modules()
                          for b in mod._non_persistent_buffers_set}
        names += [n for n, _ in self.model.named_buffers() if n not in non_persistent]
        return names

    def _match_names(self) -> dict[str, str]:
        """Model tensor name -> checkpoint tensor name; refuses missing or unexpected ones.

        A checkpoint saved from a model with a task head may prefix every name with the base
        model's prefix (``bert.``); that prefix is accepted, as transformers does.
        """
        expected = self._expected()
        stored = set(self._files)
        prefix = getattr(self.model, "base_model_prefix", "") or ""
        mapping = {}
        for name in expected:
            for candidate in (name, f"{prefix}.{name}" if prefix else None,
                              name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".")
                              else None):
                if candidate is not None and candidate in stored:
                    mapping[name] = candidate
                    break
        missing = [n for n in expected if n not in mapping]
        unexpected = sorted(stored - set(mapping.values()) - self._tied_aliases(stored))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
            raise ModelFileError(f"checkpoint '{self.path}' does not match its config.json: "
                                 f"tensors {'; '.join(parts)}; refusing to load a model with "
                                 "randomly initialised or ignored weights")
        return mapping

    def _tied_aliases(self, stored: set[str]) -> set[str]:
        """Stored names of weights tied to another (e.g. ``lm_head.weight`` saved beside the
        embedding it shares): present in the file, not a separate parameter of the model."""
        all_names = {n for n, _ in self.model.named_parameters(remove_duplicate=False)}
        unique = {n for n, _ in self.model.named_parameters()}
        return {n for n in all_names - unique if n in stored}

    def _tensor(self, name: str) -> torch.Tensor:
        file = self._files[self._names[name]]
        if file not in self._opened:
            self._opened[file] = _header(file)
        tensor = _read(file, self._opened[file], self._names[name])
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor.to(self.device)

    def _load(self, name: str) -> None:
        module_name, _, leaf = name.rpartition(".")
        module = self.model.get_submodule(module_name) if module_name else self.model
        value = self._tensor(name)
        current = getattr(module, leaf)
        if tuple(current.shape) != tuple(value.shape):
            raise ModelFileError(f"checkpoint '{self.path}': tensor '{name}' has shape "
                                 f"{tuple(value.shape)}, the config expects "
                                 f"{tuple(current.shape)}")
        if isinstance(current, nn.Parameter):
            module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[leaf] = value

    def block(self, index: int) -> nn.Module:
        """Block ``index`` on :attr:`device`: materialised from the shards, or moved there
        when it was committed."""
        if index in self._kept:
            return self._blocks[index].to(self.device)
        if index not in self._resident:
            prefix = f"{self.prefix}.{index}."
            for name in self._names:
                if name.startswith(prefix):
                    self._load(name)
            self._resident.add(index)
        return self._blocks[index]

    def release(self, index: int) -> None:
        """Free block ``index``: back to the meta device (a committed block to the host)."""
        if index in self._kept:
            self._blocks[index].to("cpu")
        elif index in self._resident:
            self._blocks[index].to("meta")
            self._resident.discard(index)

    def commit(self, index: int) -> None:
        """Block ``index`` is final (compressed): it stays, on the host, and is never
        reloaded from the checkpoint."""
        self._kept.add(index)
        self._resident.add(index)
        self._blocks[index].to("cpu")

    @contextmanager
    def streaming(self) -> Iterator[nn.Module]:
        """The whole model for ordinary forward passes: each block is onloaded just before it
        runs and released right after."""
        handles = []
        for i, blk in enumerate(self._blocks):
            handles.append(blk.register_forward_pre_hook(
                lambda _m, _a, i=i: (self.block(i), None)[1]))
            handles.append(blk.register_forward_hook(
                lambda _m, _a, _o, i=i: self.release(i)))
        try:
            yield self.model
        finally:
            for handle in handles:
                handle.remove()

    def to_model(self) -> nn.Module:
        """The whole model on the host once every block is committed (to save it)."""
        if len(self._kept) != len(self._blocks):
            missing = [i for i in range(len(self._blocks)) if i not in self._kept]
            raise ModelFileError(f"blocks {missing[:5]} are not final yet: compress the model "
                                 "before saving it")
        return self.model.to("cpu")
