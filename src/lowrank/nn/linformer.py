"""Linformer self-attention: keys and values projected to ``k`` rows along the sequence.

Wang et al., "Linformer: Self-Attention with Linear Complexity" (2020), as used in the
Greenformers thesis (Cahyawijaya, 2021): ``softmax(Q (E K)^T / sqrt(d)) (F V)`` with
``E, F`` (k x n_max), of which the first ``n`` columns serve a sequence of length ``n``. Cost is
``O(n k)`` per head instead of ``O(n^2)``. Padded positions are zeroed in ``K`` and ``V``
before the projection, so they contribute nothing.

:class:`LinformerSelfAttention` has the call signature of a BERT-style self-attention module
(``forward(hidden_states, attention_mask=None, **kwargs) -> (context, None)``), so
:func:`linformer_attention` can swap it into a Hugging Face encoder. The projection mixes all
positions, so it is not causal: decoder (causal) attention is refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LinformerSelfAttention(nn.Module):
    """Multi-head attention with sequence-projected keys and values (module docstring)."""

    def __init__(self, hidden_size: int, num_heads: int, max_seq_len: int, proj_dim: int,
                 share_kv: bool = False, bias: bool = True, seed: int | None = None) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not a multiple of "
                             f"num_heads={num_heads}")
        if not 1 <= proj_dim:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.head_dim = hidden_size // num_heads
        self.max_seq_len, self.proj_dim = max_seq_len, proj_dim
        self.query = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=bias)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = 1.0 / math.sqrt(proj_dim)
        self.E = nn.Parameter(torch.randn(proj_dim, max_seq_len, generator=gen) * std)
        self.F = self.E if share_kv else nn.Parameter(
            torch.randn(proj_dim, max_seq_len, generator=gen) * std)

    @classmethod
    def from_attention(cls, attention: nn.Module, max_seq_len: int, proj_dim: int,
                       share_kv: bool = False, seed: int | None = 0) -> LinformerSelfAttention:
        """Reuse the query/key/value layers of a BERT-style self-attention module."""
        if getattr(attention, "is_causal", False) or getattr(attention, "is_decoder", False):
            raise ValueError("Linformer's sequence projection is not causal: it cannot replace "
                             "decoder self-attention")
        heads = getattr(attention, "num_attention_heads", None)
        q = getattr(attention, "query", None)
        if heads is None or not isinstance(q, nn.Module):
            raise ValueError(f"{type(attention).__name__} is not a BERT-style self-attention "
                             "(needs query/key/value and num_attention_heads)")
        hidden = attention.key.in_features
        new = cls(hidden, heads, max_seq_len, proj_dim, share_kv, bias=q.bias is not None,
                  seed=seed)
        new.query, new.key, new.value = attention.query, attention.key, attention.value
        p = q.weight
        return new.to(device=p.device, dtype=p.dtype)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
        b, n, _ = hidden_states.shape
        if n > self.max_seq_len:
            raise ValueError(f"sequence length {n} exceeds the projection's max_seq_len "
                             f"{self.max_seq_len}")
        q = self._split(self.query(hidden_states))
        k = self._split(self.key(hidden_states))
        v = self._split(self.value(hidden_states))
        keep = _key_mask(attention_mask, b, n)
        if keep is not None:
            k = k * keep[:, None, :, None]
            v = v * keep[:, None, :, None]
        k = torch.matmul(self.E[:, :n].to(k.dtype), k)  # (b, h, proj, d)
        v = torch.matmul(self.F[:, :n].to(v.dtype), v)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, n, self.hidden_size), None

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, "
                f"max_seq_len={self.max_seq_len}, proj_dim={self.proj_dim}, "
                f"share_kv={self.F is self.E}")


def _key_mask(mask: torch.Tensor | None, batch: int, n: int) -> torch.Tensor | None:
    """1.0 for real key positions, 0.0 for padding, from a 2-D or 4-D attention mask."""
    if mask is None:
        return None
    if mask.ndim == 4:
        mask = mask[:, 0, -1, :]  # last query row: the key padding pattern
        real = mask if mask.dtype == torch.bool else mask == 0
    elif mask.ndim == 2:
        real = mask.bool()
    else:
        raise ValueError(f"unsupported attention mask shape {tuple(mask.shape)}")
    return real.to(torch.float32).expand(batch, n)


def linformer_attention(model: nn.Module, proj_dim: int, max_seq_len: int | None = None,
                        share_kv: bool = False, seed: int = 0) -> list[str]:
    """Replace every BERT-style self-attention in ``model`` with Linformer; returns the names.

    ``max_seq_len`` defaults to ``model.config.max_position_embeddings``. The projections are
    random (the method needs fine-tuning to recover quality); query/key/value weights are kept.
    """
    if max_seq_len is None:
        max_seq_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if max_seq_len is None:
            raise ValueError("pass max_seq_len (the model has no max_position_embeddings)")
    replaced = []
    for name, module in list(model.named_modules()):
        if hasattr(module, "num_attention_heads") and all(
                isinstance(getattr(module, a, None), nn.Linear) for a in ("query", "key",
                                                                           "value")):
            parent, _, child = name.rpartition(".")
            holder = model.get_submodule(parent) if parent else model
            setattr(holder, child, LinformerSelfAttention.from_attention(
                module, max_seq_len, proj_dim, share_kv, seed))
            replaced.append(name)
    if not replaced:
        raise ValueError("no BERT-style self-attention (query/key/value + num_attention_heads) "
                         "found in the model")
    return replaced
