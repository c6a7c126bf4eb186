"""The compress and eval jobs end to end on a tiny model directory."""

from __future__ import annotations

import copy
import json

import pytest

import lowrank
from lowrank.errors import ConfigError
from lowrank.jobs import compress_job, eval_job


def test_compress_job_on_a_tiny_model_directory_with_fine_tuning(tiny_bert, tokenizer,
                                                                   tmp_path):
    """The whole job (load, calibrate, compress, fine-tune, evaluate, save, report) on a tiny
    BERT saved as a Hugging Face directory; results are tagged fine_tuned."""
    source = tmp_path / "tiny"
    copy.deepcopy(tiny_bert).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "out"
    summary = compress_job(str(source), keep=0.6, out=out, samples=16, seq_len=32,
                           quiet=True, plots=False, finetune_steps=2)
    assert summary["tag"] == "fine_tuned"
    assert abs(summary["keep_actual"] - 0.6) <= 0.003
    assert summary["default_configuration"] is True  # no method given
    assert summary["configuration"] == ("svdllm (alloc=sensitivity, embeddings=True, "
                                        "embedding_floor=0.3)")
    report = json.loads((out / "report.json").read_text())
    assert report["fine_tune"]["tag"] == "fine_tuned"
    assert "fine_tune" in report["result"]["timings"]
    assert report["data"]["seq_len"] == 32 and report["data"]["evaluation_overlap_passages"] == 0
    reloaded = lowrank.load(out)
    assert any(isinstance(m, lowrank.LowRankLinear) for m in reloaded.modules())
    evaluated = eval_job(str(out), quiet=True, seq_len=32)
    assert abs(evaluated["quality"]["cosine"] - summary["quality_after"]["cosine"]) < 1e-5
    with pytest.raises(ConfigError, match="finetune_steps"):
        compress_job(str(source), finetune_steps=-1, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()
