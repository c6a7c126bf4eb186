"""One rank of the 2-process calibration test, run by ``python -m torch.distributed.run``.

Usage: ``_dist_worker.py OUT_DIR``. Every rank collects distributed statistics of the tiny BERT
(contrastive Fisher) and the tiny Llama (causal-LM Fisher) on the first 16 calibration passages
and saves them to ``OUT_DIR/{bert,llama}_rank{r}.safetensors``; then it checks that a rank
whose modules differ is refused on every rank (``OUT_DIR/mismatch_rank{r}.txt`` holds the error)
and that token-id counts of different lengths are padded and summed (``counts_rank{r}.txt``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

import lowrank.data
import lowrank.models
from lowrank.calib import CalibrationStats, tokenize
from lowrank.calib.distributed import (
    Dist,
    all_reduce_stats,
    broadcast_object,
    collect_statistics_distributed,
    dist_barrier,
    gather_objects,
)
from lowrank.errors import DataError
from lowrank.surgery import LINEAR

PASSAGES = 16
SEQ_LEN = 32
BATCH = 8  # passages per rank (8) a multiple of it: the ranks' batches are the single run's


def build(kind: str, vocab_size: int):
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    if kind == "bert":
        torch.manual_seed(1234)
        return BertModel(BertConfig(
            vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    torch.manual_seed(4321)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=256, max_position_embeddings=64)).eval()


def setup():
    """Tokenizer, the 16 tokenised passages, and the collection keyword arguments per model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lowrank.models.default_model_path())
    tokens = tokenize(lowrank.data.default_passages("calibration")[:PASSAGES], tokenizer,
                      seq_len=SEQ_LEN)
    kwargs = {
        "bert": {"batch_size": BATCH, "fisher_loss": "contrastive", "tokenizer": tokenizer,
                 "fisher_batch_size": BATCH},
        "llama": {"batch_size": BATCH, "fisher_loss": "causal-lm", "fisher_batch_size": BATCH},
    }
    return tokenizer, tokens, kwargs


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist = Dist.from_env()
    assert dist.world == 2 and torch.distributed.get_backend() == "gloo", dist
    tokenizer, tokens, kwargs = setup()
    for kind in ("bert", "llama"):
        model = build(kind, tokenizer.vocab_size)
        stats = collect_statistics_distributed(model, LINEAR.select(model), tokens, dist,
                                               **kwargs[kind])
        stats.save(out / f"{kind}_rank{dist.rank}.safetensors")
    assert broadcast_object({"rank": dist.rank}, dist) == {"rank": 0}
    gathered = gather_objects(dist.rank * 10, dist)
    assert gathered == ([0, 10] if dist.is_main else None), gathered
    dist_barrier(dist)
    bad = copy.deepcopy(stats)
    if dist.rank == 1:
        bad.module_site.pop(next(iter(bad.module_site)))
    try:
        all_reduce_stats(bad, dist)
        message = "no error"
    except DataError as exc:
        message = f"DataError: {exc}"
    (out / f"mismatch_rank{dist.rank}.txt").write_text(message)
    counts = CalibrationStats(token_counts=torch.arange(5.0 + dist.rank, dtype=torch.float64))
    all_reduce_stats(counts, dist)  # vocabularies of 5 and 6 ids: padded, then summed
    (out / f"counts_rank{dist.rank}.txt").write_text(str(counts.token_counts.tolist()))
    dist_barrier(dist)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
