"""MoDeGPT: modular decomposition of matrix pairs ("MoDeGPT: Modular Decomposition for Large
Language Model Compression", Lin et al., ICLR 2025, arXiv 2408.09632).

Hidden dimensions shared by two matrices shrink, so no extra factors appear:

* **Type I, MLP (Nyström).** With ``H = act(X W_U)`` (gated: ``act(X W_G) * (X W_U)``) and
  ``C = H^T H`` (the input Gram of the down projection), keep the ``k`` intermediate neurons of
  largest ridge leverage ``[C (C + lam I)^-1]_jj`` in ``W_U`` (and ``W_G``) and refit the down
  projection by least squares, ``W_D <- (C_SS)^+ C_S: W_D``. The ridge is
  ``lam = ridge * trace(C) / d_int`` with ``ridge = 1`` (the paper gives no value that could
  be confirmed). A small ridge makes every leverage about ``1 - lam [C^-1]_jj``, lowest for
  neurons that others predict: a redundant pair of loud neurons is then dropped together and
  the refit cannot rebuild it (MiniLM layer 2 down projection at keep 0.8: relative output
  error 0.35 with ``ridge = 0.01``, 0.056-0.058 with any ridge from 0.3 to 15).
* **Type II, query-key (CR decomposition).** Per head, score each dimension ``j`` by
  ``sqrt(C_Q[j, j] C_K[j, j])`` (``C_Q``, ``C_K``: query/key correlations) and keep the same
  top dimensions in both. Rotary pairs ``(j, j + d/2)`` are scored and kept together (their
  summed diagonal is invariant under the rotation, so the pre-rotary Gram gives it exactly);
  with grouped-query attention a key head's score sums over the query heads that share it.
* **Type III, value-output (whitened SVD).** Per key/value head ``g``, the products
  ``W_O,h W_V,g`` of the query heads ``h`` that read it are stacked and truncated in the
  whitened space of the value input, ``SVD_r([W_O,h W_V,g]_h S)``: the exact optimum of the
  product's output error at rank ``r`` (the paper's step, extended to shared value heads). The
  value bias is folded into the output bias (attention rows sum to one).
* **Block budget.** ``block_budget="influence"`` spreads the removed fraction over blocks by
  ``phi_l = L * phi * softmax(-s_l / temperature)`` with block importance
  ``s_l = 1 - E[cos(h_in, h_out)]`` measured on calibration passages; ``"uniform"`` removes
  the same fraction everywhere. Inside a block the three pair types lose the same fraction.
  (This is the method's own split of ``keep`` over blocks, not a registered allocator.)

Attention layers keep their head size: the reduced query/key/value layers write zeros at the
removed dimensions and the output layer reads only the kept ones (:class:`IndexedLinear`), so
parameters shrink but attention FLOPs do not. The MLP really narrows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..calib.data import TokenBatch, TokenizedText
from ..errors import ConfigError, DataError
from ..linalg.nystrom import nystrom_correct, ridge_leverage_scores, select_columns
from ..nn.indexed_linear import IndexedLinear
from ..surgery import ModuleCall, capture_inputs, replace_module
from .base import (
    METHODS,
    Calibration,
    CompressionConfig,
    MethodOutcome,
    output_error,
)
from .probe import forward_passes
from .result import ModuleReport

# suffixes of module names per role, checked in this order ('o' before 'down')
ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("q", (".query", ".q_proj")),
    ("k", (".key", ".k_proj")),
    ("v", (".value", ".v_proj")),
    ("o", (".attention.output.dense", ".o_proj", ".out_proj")),
    ("gate", (".gate_proj",)),
    ("up", (".intermediate.dense", ".up_proj", ".fc1")),
    ("down", (".output.dense", ".down_proj", ".fc2")),
)
ROPE_MODEL_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                    "phi3", "olmo", "olmo2", "granite", "cohere", "stablelm"}

BLOCK_BUDGETS = ("influence", "uniform")


def find_blocks(names: list[str]) -> dict[str, dict[str, str]]:
    """Group module names by block (the path up to its first numeric component) and role."""
    blocks: dict[str, dict[str, str]] = {}
    for name in names:
        parts = name.split(".")
        digit = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if digit is None:
            continue
        block = ".".join(parts[:digit + 1])
        for role, suffixes in ROLES:
            if any(name.endswith(s) for s in suffixes):
                blocks.setdefault(block, {}).setdefault(role, name)
                break
    return blocks


def measure_block_importance(model: nn.Module, blocks: list[str],
                             run: Callable[[], Any]) -> list[float]:
    """``1 - mean cos(h_in, h_out)`` over real tokens for each block, during ``run()``.

    ``run`` performs forward passes of ``model`` (the padding mask is read from the
    ``attention_mask`` keyword of the top-level call).
    """
    mask: list[torch.Tensor | None] = [None]
    sums = {b: [0.0, 0.0] for b in blocks}

    def take_mask(_name: str, call: ModuleCall) -> None:
        mask[0] = call.kwargs.get("attention_mask")

    def add_cosines(block: str, call: ModuleCall) -> None:
        h_in = call.args[0] if call.args else call.kwargs.get("hidden_states")
        out = call.output
        h_out = out[0] if isinstance(out, (tuple, list)) else out
        cos = nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
        m = mask[0]
        weight = (m.to(cos.dtype) if m is not None and m.shape == cos.shape
                  else torch.ones_like(cos))
        sums[block][0] += float((cos * weight).sum())
        sums[block][1] += float(weight.sum())

    with capture_inputs({"": model}, take_mask), \
            capture_inputs({b: model.get_submodule(b) for b in blocks}, add_cosines,
                           outputs=True), torch.no_grad():
        run()
    if any(sums[b][1] == 0 for b in blocks):
        raise DataError("block importance: some blocks never ran during the calibration pass")
    return [1.0 - sums[b][0] / sums[b][1] for b in blocks]


def importance_from_hidden(h_in: list[torch.Tensor], h_out: list[torch.Tensor],
                           batches: list[TokenBatch]) -> float:
    """:func:`measure_block_importance` of one block from its stored inputs and outputs."""
    total = count = 0.0
    for x, y, batch in zip(h_in, h_out, batches, strict=True):
        cos = nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)
        weight = batch.attention_mask.to(cos.dtype)
        total += float((cos * weight).sum())
        count += float(weight.sum())
    if count == 0:
        raise DataError("block importance: no real tokens in the probe passages")
    return 1.0 - total / count


def allocate_blocks(importance: list[float], keep: float, temperature: float,
                    min_keep: float) -> list[float]:
    """Per-block kept fraction ``1 - phi_l``, ``phi_l = L phi softmax(-s_l / T)`` clipped to
    ``[0, 1 - min_keep]`` with the clipped excess spread over the other blocks."""
    s = torch.tensor(importance, dtype=torch.float64)
    n = s.numel()
    total = n * (1.0 - keep)
    cap = 1.0 - min_keep
    weights = torch.softmax(-s / temperature, dim=0)
    phi = torch.zeros(n, dtype=torch.float64)
    free = torch.ones(n, dtype=torch.bool)
    for _ in range(n + 1):
        remaining = total - float(phi[~free].sum())
        w = weights * free
        phi = torch.where(free, remaining * w / w.sum().clamp_min(1e-300), phi)
        over = free & (phi > cap)
        if not bool(over.any()):
            break
        phi[over] = cap
        free &= ~over
    phi = phi.clamp(0.0, cap)
    return [1.0 - float(p) for p in phi]


def _query_diag(weight: torch.Tensor, bias: torch.Tensor | None, site) -> torch.Tensor:
    """``diag(sum q q^T)`` for ``q = W x + b`` from the input Gram, sum and token count."""
    w = weight.to(torch.float64)
    d = torch.einsum("ij,jk,ik->i", w, site.gram.to(torch.float64), w)
    if bias is not None and site.sum is not None:
        b = bias.to(torch.float64)
        d = d + 2 * b * (w @ site.sum.to(torch.float64)) + site.tokens * b * b
    return d.clamp_min(0)


@METHODS.register
@dataclass
class MoDeGPT(CompressionConfig):
    """Structured compression of matrix pairs (see module docstring)."""

    method: ClassVar[str] = "modegpt"
    statistics: ClassVar[frozenset[str]] = frozenset({"gram"})
    version: ClassVar[int] = 2  # 2: the block split is 'block_budget' (was 'alloc')

    keep: float = field(default=0.8, metadata={
        "help": "fraction of the targeted parameters that remain (0 < keep <= 1)"})
    block_budget: str = field(default="influence", metadata={
        "help": "how keep is split over blocks: 'influence' (softmax of -block importance, "
                "measured on calibration text) or 'uniform' (same kept fraction in every "
                "block)"})
    temperature: float = field(default=0.1, metadata={
        "help": "temperature of the block-influence softmax (> 0); large = uniform"})
    min_keep: float = field(default=0.1, metadata={
        "help": "smallest kept fraction of any block under influence (0 <= x < keep)"})
    ridge: float = field(default=1.0, metadata={
        "help": "ridge lambda of the leverage scores, relative to the mean eigenvalue of H^T H "
                "(trace / d_int); small ridges (<= 0.03) drop redundant pairs of loud neurons "
                "together"})
    floor: float = field(default=1e-6, metadata={
        "help": "eigenvalue floor of the value-input Gram (type III whitening)"})
    rope: bool | None = field(default=None, metadata={
        "help": "keep rotary pairs (j, j + d/2) together; default: from the model type"})
    importance: list[float] | None = field(default=None, metadata={
        "help": "block importances to use instead of measuring them (one per block)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) \
                or not 0 < float(self.keep) <= 1:
            raise ConfigError(f"keep must be a number in (0, 1], got {self.keep!r}")
        self.keep = float(self.keep)
        if self.block_budget not in BLOCK_BUDGETS:
            raise ConfigError(f"block_budget must be one of {', '.join(BLOCK_BUDGETS)}, got "
                              f"{self.block_budget!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.min_keep <= 1:
            raise ConfigError(f"min_keep must be in [0, 1], got {self.min_keep}")
        if not self.ridge > 0:
            raise ConfigError(f"ridge must be > 0, got {self.ridge}")
        if not 0 < self.floor < 1:
            raise ConfigError(f"floor must be in (0, 1), got {self.floor}")

    @classmethod
    def upgrade(cls, fields: dict[str, Any], version: int) -> dict[str, Any]:
        fields = dict(fields)
        if "alloc" in fields:  # version 1
            alloc = fields.pop("alloc")
            fields["block_budget"] = "influence" if alloc == "block-influence" else alloc
        return fields

    def block_configs(self, count: int, importance: list[float] | None
                      ) -> list[CompressionConfig]:
        """One uniform-budget configuration per block at that block's kept fraction."""
        if self.block_budget == "uniform" or self.keep >= 1:
            keeps = [self.keep] * count
        else:
            importance = list(self.importance if self.importance is not None else importance)
            if len(importance) != count:
                raise ConfigError(f"importance has {len(importance)} entries for {count} "
                                  "blocks")
            keeps = allocate_blocks(importance, self.keep, self.temperature,
                                    min(self.min_keep, self.keep))
        return [dataclasses.replace(self, block_budget="uniform", keep=k, importance=None)
                for k in keeps]

    @property
    def measures_blocks(self) -> bool:
        """Whether the block importances are measured (on calibration text)."""
        return self.block_budget == "influence" and self.keep < 1 and self.importance is None

    @property
    def needs(self) -> frozenset[str]:
        return super().needs | ({"text"} if self.measures_blocks else set())

    # ----------------------------------------------------------------- allocation
    def block_keeps(self, model: nn.Module, blocks: list[str],
                    tokens: TokenizedText | None) -> tuple[list[float], Any]:
        if self.block_budget == "uniform" or self.keep >= 1:
            return [self.keep] * len(blocks), None
        importance = self.importance
        if importance is None:
            if tokens is None:
                raise DataError("modegpt's block_budget='influence' measures the blocks on "
                                "calibration text: call lowrank.compress with data=..., pass "
                                "importance=[...], or use block_budget='uniform'")
            importance = measure_block_importance(model, blocks,
                                                  lambda: forward_passes(model, tokens))
        if len(importance) != len(blocks):
            raise ConfigError(f"importance has {len(importance)} entries for {len(blocks)} "
                              "blocks")
        return allocate_blocks(list(importance), self.keep, self.temperature,
                               min(self.min_keep, self.keep)), list(importance)

    # ----------------------------------------------------------------- transform
    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        stats = calib.stats
        if stats is None:
            raise DataError("MoDeGPT needs calibration statistics (data=...)")
        blocks = find_blocks(list(modules))
        names = sorted(blocks, key=lambda b: list(modules).index(next(iter(blocks[b].values()))))
        keeps, importance = self.block_keeps(model, names, calib.tokens)
        reports: dict[str, ModuleReport] = {}
        config = getattr(model, "config", None)
        for block, kappa in zip(names, keeps, strict=True):
            roles = blocks[block]
            if {"up", "down"} <= roles.keys():
                reports.update(self._mlp(model, modules, stats, roles, kappa))
            if {"q", "k"} <= roles.keys():
                reports.update(self._query_key(model, modules, stats, roles, kappa, config))
            if {"v", "o"} <= roles.keys():
                reports.update(self._value_output(model, modules, stats, roles, kappa, config))
        out = []
        for name, lin in modules.items():
            if name not in reports:  # not part of a complete pair: left dense
                p = lin.weight.numel() + (0 if lin.bias is None else lin.bias.numel())
                reports[name] = ModuleReport(name, lin.out_features, lin.in_features, None, p,
                                             p, 0.0, 0.0, 1.0,
                                             notes={"left_dense": "not part of a known pair"})
            out.append(reports[name])
        before = sum(r.params_before for r in out)
        after = sum(r.params_after for r in out)
        allocation = {"block_budget": self.block_budget,
                      "block_keep": dict(zip(names, keeps, strict=True)),
                      "block_importance": None if importance is None
                      else dict(zip(names, importance, strict=True))}
        return MethodOutcome(out, allocation, self.keep, before, after)

    @staticmethod
    def _count(lin: nn.Module) -> int:
        return sum(p.numel() for p in lin.parameters())

    def _report(self, name: str, old: nn.Linear, new: IndexedLinear, width: int,
                pair_error: float, notes: dict) -> ModuleReport:
        w = old.weight.detach().double()
        approx = new.dense_weight().detach().double()
        if approx.shape != w.shape:  # a narrowed MLP layer: compare the kept part only
            w_err = float("nan")
        else:
            w_err = float((w - approx).norm() / w.norm().clamp_min(1e-300))
        return ModuleReport(name, old.out_features, old.in_features, width, self._count(old),
                            new.num_parameters(), pair_error, w_err,
                            max(0.0, 1.0 - pair_error ** 2), notes=notes)

    def _mlp(self, model, modules, stats, roles, kappa) -> dict[str, ModuleReport]:
        up, down = modules[roles["up"]], modules[roles["down"]]
        gate = modules.get(roles["gate"]) if "gate" in roles else None
        d_int = up.out_features
        k = min(d_int, max(1, round(kappa * d_int)))
        if k >= d_int:
            return {}
        corr = stats.site(roles["down"]).gram.to(torch.float64)
        keep = select_columns(ridge_leverage_scores(corr, self.ridge), k)
        w_down = down.weight.detach().to(torch.float64)
        new_down_w = nystrom_correct(corr, keep, w_down.T).T  # (d_h, k)
        approx = torch.zeros_like(w_down)
        approx[:, keep] = new_down_w
        err = output_error(w_down, approx, corr)
        dtype, dev = down.weight.dtype, down.weight.device
        reports = {}
        for role, lin in (("up", up), ("gate", gate)):
            if lin is None:
                continue
            b = None if lin.bias is None else lin.bias.detach()[keep]
            new = IndexedLinear.from_parts(lin.weight.detach()[keep], b, lin.in_features, k)
            reports[roles[role]] = self._report(roles[role], lin, new, k, err,
                                                {"type": "I", "kept_neurons": k})
            replace_module(model, roles[role], new)
        bias = None if down.bias is None else down.bias.detach()
        new = IndexedLinear.from_parts(new_down_w.to(dtype).to(dev), bias, k,
                                       down.out_features)
        reports[roles["down"]] = self._report(roles["down"], down, new, k, err,
                                              {"type": "I", "kept_neurons": k})
        replace_module(model, roles["down"], new)
        return reports

    @staticmethod
    def _heads(config: Any, q: nn.Linear, k: nn.Linear) -> tuple[int, int, int]:
        heads = getattr(config, "num_attention_heads", None)
        if not heads:
            raise DataError("MoDeGPT needs the model's number of attention heads "
                            "(model.config.num_attention_heads)")
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or q.out_features // heads
        if q.out_features != heads * head_dim or k.out_features != kv * head_dim:
            raise DataError(f"attention shapes do not match {heads} heads x {head_dim} "
                            f"({kv} key/value heads): query {q.out_features}, key "
                            f"{k.out_features}")
        return heads, kv, head_dim

    def _uses_rope(self, config: Any) -> bool:
        if self.rope is not None:
            return self.rope
        return getattr(config, "model_type", "") in ROPE_MODEL_TYPES

    def _query_key(self, model, modules, stats, roles, kappa, config) -> dict[str, ModuleReport]:
        q, k = modules[roles["q"]], modules[roles["k"]]
        heads, kv, hd = self._heads(config, q, k)
        group = heads // kv
        rope = self._uses_rope(config)
        dq = _query_diag(q.weight.detach(), None if q.bias is None else q.bias.detach(),
                         stats.site(roles["q"])).reshape(heads, hd)
        dk = _query_diag(k.weight.detach(), None if k.bias is None else k.bias.detach(),
                         stats.site(roles["k"])).reshape(kv, hd)
        if rope:
            if hd % 2:
                raise DataError(f"rotary pairs need an even head size, got {hd}")
            half = hd // 2
            dq = dq[:, :half] + dq[:, half:]
            dk = dk[:, :half] + dk[:, half:]
            units = min(half, max(1, round(kappa * half)))
        else:
            units = min(hd, max(1, round(kappa * hd)))
        if units >= dq.shape[1]:
            return {}
        # score of unit j of key head g: sum over its query heads of sqrt(C_Q,jj C_K,jj)
        scores = (dq.reshape(kv, group, -1) * dk[:, None]).sqrt().sum(1)  # (kv, units)
        kept_dims, kept_units = [], []
        for g in range(kv):
            sel = select_columns(scores[g], units)
            kept_units.append(sel)
            kept_dims.append(torch.cat([sel, sel + hd // 2]).sort().values if rope else sel)
        # the attention logits' error is no per-module output error: report the kept share
        # of the CR score mass instead
        share = float(scores.gather(1, torch.stack(kept_units)).sum()
                      / scores.sum().clamp_min(1e-300))
        width = kept_dims[0].numel()
        k_rows = torch.cat([g * hd + d for g, d in enumerate(kept_dims)])
        q_rows = torch.cat([h * hd + kept_dims[h // group] for h in range(heads)])
        reports = {}
        for role, lin, rows in (("q", q, q_rows), ("k", k, k_rows)):
            b = None if lin.bias is None else lin.bias.detach()[rows]
            new = IndexedLinear.from_parts(lin.weight.detach()[rows], b, lin.in_features,
                                           lin.out_features, out_index=rows)
            rep = self._report(roles[role], lin, new, width, math.sqrt(max(0.0, 1 - share)),
                               {"type": "II", "kept_dims_per_head": width, "rope": rope})
            rep.rel_output_error = None
            rep.energy_kept = share
            reports[roles[role]] = rep
            replace_module(model, roles[role], new)
        return reports

    def _value_output(self, model, modules, stats, roles, kappa, config
                      ) -> dict[str, ModuleReport]:
        v, o = modules[roles["v"]], modules[roles["o"]]
        heads, kv, hd = self._heads(config, modules[roles["q"]] if "q" in roles else o, v)
        group = heads // kv
        r = min(hd, max(1, round(kappa * hd)))
        if r >= hd:
            return {}
        root = stats.gram_root(roles["v"], self.floor)
        gram = stats.site(roles["v"]).gram.to(torch.float64)
        wv = v.weight.detach().to(torch.float64)
        wo = o.weight.detach().to(torch.float64)
        new_v = torch.zeros(kv * r, v.in_features, dtype=torch.float64)
        new_o = torch.zeros(o.out_features, heads * r, dtype=torch.float64)
        num = den = 0.0
        for g in range(kv):
            vg = wv[g * hd:(g + 1) * hd]
            hs = range(g * group, (g + 1) * group)
            product = torch.cat([wo[:, h * hd:(h + 1) * hd] @ vg for h in hs])  # (G d, in)
            u, s, vt = torch.linalg.svd(root.apply(product), full_matrices=False)
            new_v[g * r:(g + 1) * r] = root.apply_inverse(vt[:r])
            left = (u[:, :r] * s[:r]).reshape(group, o.out_features, r)
            for i, h in enumerate(hs):
                new_o[:, h * r:(h + 1) * r] = left[i]
            approx = (u[:, :r] * s[:r]) @ new_v[g * r:(g + 1) * r]
            delta = product - approx
            num += float(torch.einsum("ij,jk,ik->", delta, gram, delta))
            den += float(torch.einsum("ij,jk,ik->", product, gram, product))
        err = math.sqrt(max(num, 0.0) / max(den, 1e-300))
        v_rows = torch.cat([g * hd + torch.arange(r) for g in range(kv)])
        o_cols = torch.cat([h * hd + torch.arange(r) for h in range(heads)])
        o_bias = None if o.bias is None else o.bias.detach().to(torch.float64)
        if v.bias is not None:  # attention rows sum to one: the value bias passes straight on
            bv = v.bias.detach().to(torch.float64).reshape(kv, hd).repeat_interleave(group, 0)
            shift = wo @ bv.reshape(-1)
            o_bias = shift if o_bias is None else o_bias + shift
        dtype, dev = v.weight.dtype, v.weight.device
        nv = IndexedLinear.from_parts(new_v.to(dtype).to(dev), None, v.in_features,
                                      v.out_features, out_index=v_rows)
        no = IndexedLinear.from_parts(new_o.to(dtype).to(dev),
                                      None if o_bias is None else o_bias.to(dtype).to(dev),
                                      o.in_features, o.out_features, in_index=o_cols)
        notes = {"type": "III", "rank_per_head": r}
        reports = {roles["v"]: self._report(roles["v"], v, nv, r, err, notes),
                   roles["o"]: self._report(roles["o"], o, no, r, err, notes)}
        replace_module(model, roles["v"], nv)
        replace_module(model, roles["o"], no)
        return reports
