"""Recovery fine-tuning of compressed models through their low-rank factors only.

>>> from lowrank.finetune import RecoveryConfig, embedding_gap, recover
>>> report = recover(model, original, tokens, RecoveryConfig(objective="distill", steps=200),
...                  eval_fn=embedding_gap(original, held_out_tokens))
>>> report.tag
'fine_tuned'

``recovery`` holds the training loop, its objectives (PELA distillation, WeLore's task loss) and
the held-out criteria; :class:`RecoveryConfig` its hyper-parameters. (Recovering a low-rank
*matrix* from few or corrupted entries is :mod:`lowrank.matrix`.)
"""

from .recovery import (
    DEFAULT_INF_NORM_WEIGHT,
    OBJECTIVES,
    RecoveryConfig,
    RecoveryReport,
    causal_lm_nll,
    embedding_gap,
    recover,
    weight_perturbation,
)

__all__ = [
    "DEFAULT_INF_NORM_WEIGHT",
    "OBJECTIVES",
    "RecoveryConfig",
    "RecoveryReport",
    "causal_lm_nll",
    "embedding_gap",
    "recover",
    "weight_perturbation",
]
