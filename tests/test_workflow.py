"""Method configs from CLI-style options."""

from __future__ import annotations

import pytest

from lowrank.errors import ConfigError
from lowrank.workflow import make_config


def test_make_config_fills_only_given_options():
    config = make_config("svdllm", keep=0.6, alloc=None, mode="sequential", seed=3)
    assert (config.keep, config.alloc, config.mode, config.seed) == (0.6, "uniform",
                                                                     "sequential", 3)
    eora = make_config("eora", rank=16, base="quant-int8", keep=None)
    assert eora.rank == 16 and eora.base == "quant-int8"


def test_make_config_rejects_foreign_options():
    with pytest.raises(ConfigError, match="no field keep"):
        make_config("eora", keep=0.5)
    with pytest.raises(ConfigError, match="unknown method"):
        make_config("nope")


def test_compress_job_on_a_tiny_model_directory_with_fine_tuning(tiny_bert, tokenizer,
                                                                   tmp_path):
    """The whole job (load, calibrate, compress, fine-tune, evaluate, save, report) on a tiny
    BERT saved as a Hugging Face directory; results are tagged fine_tuned."""
    import copy
    import json

    import lowrank
    from lowrank.workflow import compress_job, eval_job

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
    reloaded = lowrank.load(out)
    assert any(isinstance(m, lowrank.LowRankLinear) for m in reloaded.modules())
    evaluated = eval_job(str(out), quiet=True, seq_len=32)
    assert abs(evaluated["quality"]["cosine"] - summary["quality_after"]["cosine"]) < 1e-5
    with pytest.raises(ConfigError, match="finetune_steps"):
        compress_job(str(source), finetune_steps=-1, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()
