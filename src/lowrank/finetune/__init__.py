"""Recovery fine-tuning of compressed models through their low-rank factors only.

>>> from lowrank.finetune import recover, embedding_gap
>>> report = recover(model, original, tokens, objective="distill", steps=200,
...                  eval_fn=embedding_gap(original, held_out_tokens))
>>> report.tag
'fine_tuned'
"""

from .recovery import (
    DEFAULT_INF_NORM_WEIGHT,
    OBJECTIVES,
    RecoveryReport,
    causal_lm_nll,
    embedding_gap,
    recover,
    weight_perturbation,
)

__all__ = [
    "DEFAULT_INF_NORM_WEIGHT",
    "OBJECTIVES",
    "RecoveryReport",
    "causal_lm_nll",
    "embedding_gap",
    "recover",
    "weight_perturbation",
]
