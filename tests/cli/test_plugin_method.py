"""Adding a compression method is one file with a config dataclass and a transform plus one
registration line: a toy method defined here, outside the package, runs through
``lr.compress``, ``lr.save``, ``lr.load`` and the CLI's ``--method``."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from cli_runner import run_cli  # tests/cli/cli_runner.py
from torch import nn

import lowrank as lr
from lowrank.compress import METHODS, Calibration, CompressionConfig, MethodOutcome
from lowrank.compress.result import ModuleReport
from lowrank.nn import LowRankLinear
from lowrank.surgery import replace_module


@METHODS.register
@dataclass
class FixedRankSVD(CompressionConfig):
    """Every targeted linear layer becomes a plain truncated SVD at one fixed rank."""

    method: ClassVar[str] = "toy-fixed-rank"

    rank: int = field(default=4, metadata={"help": "rank of every factorized layer"})

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        reports = []
        for name, lin in modules.items():
            w = lin.weight.detach().double()
            u, s, vt = torch.linalg.svd(w, full_matrices=False)
            B, A = u[:, :self.rank] * s[:self.rank], vt[:self.rank]
            bias = None if lin.bias is None else lin.bias.detach()
            new = LowRankLinear.from_factors(B.to(lin.weight.dtype), A.to(lin.weight.dtype),
                                             bias)
            replace_module(model, name, new)
            before = sum(p.numel() for p in lin.parameters())
            after = sum(p.numel() for p in new.parameters())
            err = float((w - B @ A).norm() / w.norm())
            reports.append(ModuleReport(name, lin.out_features, lin.in_features, self.rank,
                                        before, after, None, err, 1 - err ** 2))
        before = sum(r.params_before for r in reports)
        after = sum(r.params_after for r in reports)
        return MethodOutcome(reports, {"rank": self.rank}, None, before, after)


def test_registered_method_runs_through_compress_save_and_load(tiny_bert, calib_tokens,
                                                                tmp_path):
    assert METHODS.get("toy_fixed_rank") is FixedRankSVD  # one spelling of the name
    config = CompressionConfig.from_dict({"method": "toy-fixed-rank", "rank": 3})
    assert config == FixedRankSVD(rank=3) and config.needs == frozenset()
    model = copy.deepcopy(tiny_bert)
    result = lr.compress(model, config)
    assert {m.rank for m in result.modules} == {3}
    assert result.method == {"method": "toy-fixed-rank", "version": 1, "targets": None,
                             "ignore": None, "seed": 0, "rank": 3}
    batch = next(calib_tokens.batches(4))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    lr.save(model, tmp_path / "toy")
    loaded = lr.load(tmp_path / "toy")
    with torch.no_grad():
        again = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert torch.equal(again.last_hidden_state, out.last_hidden_state)
    assert loaded.lowrank_manifest["method"] == config.to_dict()


def test_registered_method_runs_from_the_cli(monkeypatch, capsys, tmp_path, tiny_bert,
                                             tokenizer):
    source = tmp_path / "tiny"
    copy.deepcopy(tiny_bert).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "compress", str(source), "--method",
                                "toy-fixed-rank", "--set", "rank=2", "--samples", "16",
                                "--seq-len", "32", "--out", str(out), "--json", "-q")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "toy-fixed-rank" and summary["alloc"] is None
    assert summary["configuration"] == "toy-fixed-rank (rank=2)"
    reloaded = lr.load(out)
    ranks = {m.rank for m in reloaded.modules() if isinstance(m, LowRankLinear)}
    assert ranks == {2}
    code, _, err = run_cli(monkeypatch, capsys, "compress", str(source), "--method",
                           "toy-fixed-rank", "--keep", "0.5", "--out", str(tmp_path / "no"))
    assert code == 2 and "no field keep" in err  # keep: a parameter fraction it does not have
