"""Recovery fine-tuning (PELA distillation, WeLore LRC training) on tiny BERT and Llama models."""

from __future__ import annotations

import copy
import json
from dataclasses import FrozenInstanceError, replace

import pytest
import torch
from torch import nn

import lowrank
from lowrank import SVD, LowRankLinear
from lowrank.errors import ConfigError, DataError
from lowrank.finetune import (
    DEFAULT_INF_NORM_WEIGHT,
    RecoveryConfig,
    RecoveryReport,
    embedding_gap,
    recover,
    weight_perturbation,
)
from lowrank.finetune.recovery import _lr_factor, _regulariser

FAST = {"lr": 1e-3, "batch_size": 8}  # settings of the short runs below


def _compressed(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(compressed copy at keep 0.5 by plain SVD, untouched original)."""
    student = copy.deepcopy(model)
    lowrank.compress(student, SVD(keep=0.5))
    return student, model


def _distill_mse(student: nn.Module, teacher: nn.Module, tokens) -> float:
    """Oracle: mean over blocks of the masked hidden-state MSE, on the first 16 passages."""
    batch = next(tokens.batches(16))
    kw = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
          "output_hidden_states": True}
    with torch.no_grad():
        hs = student(**kw).hidden_states
        ht = teacher(**kw).hidden_states
    mask = batch.attention_mask.unsqueeze(-1).float()
    terms = [float(((s - t) ** 2 * mask).sum() / (mask.sum() * s.shape[-1]))
             for s, t in zip(hs[1:], ht[1:], strict=True)]
    return sum(terms) / len(terms)


def _factor_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, LowRankLinear) for p in (m.A, m.B)}


def test_only_factors_change(tiny_bert, calib_tokens):
    student, teacher = _compressed(tiny_bert)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    report = recover(student, teacher, calib_tokens, RecoveryConfig(steps=3, **FAST))
    factors = _factor_ids(student)
    assert factors
    changed = 0
    for name, p in student.named_parameters():
        if id(p) in factors:
            changed += not torch.equal(p, before[name])
        else:
            assert torch.equal(p, before[name]), f"{name} changed but is not a factor"
    assert changed == len(factors)
    for name, p in teacher.named_parameters():
        assert torch.equal(p, teacher_before[name]), f"original's {name} changed"
    assert report.trainable_parameters == sum(
        m.A.numel() + m.B.numel() for m in student.modules() if isinstance(m, LowRankLinear))
    assert report.tag == "fine_tuned"
    assert report.steps == 3


def test_train_bias_adds_the_factorized_biases(tiny_bert, calib_tokens):
    student, teacher = _compressed(tiny_bert)
    layers = [m for m in student.modules() if isinstance(m, LowRankLinear)]
    bias_before = [m.bias.detach().clone() for m in layers]
    config = RecoveryConfig(steps=2, **FAST, train_bias=True)
    report = recover(student, teacher, calib_tokens, config)
    assert report.trainable_parameters == sum(m.num_parameters() for m in layers)
    assert all(not torch.equal(m.bias, b) for m, b in zip(layers, bias_before, strict=True))


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_distillation_loss_decreases(family, tiny_bert, tiny_llama, calib_tokens):
    student, teacher = _compressed(tiny_bert if family == "bert" else tiny_llama)
    start = _distill_mse(student, teacher, calib_tokens)
    report = recover(student, teacher, calib_tokens, RecoveryConfig(steps=40, **FAST))
    end = _distill_mse(student, teacher, calib_tokens)
    assert end < 0.7 * start, (start, end)
    assert report.final_loss < report.first_loss
    assert len(report.loss_curve) <= 13


def test_regulariser_gradient_reaches_only_the_argmax():
    torch.manual_seed(0)
    weight = torch.randn(12, 9)
    layer = LowRankLinear.from_linear(nn.Linear(9, 12), rank=3)
    eps = 1e-3
    value = weight_perturbation(layer.dense_weight(), weight, eps)
    deviation = (layer.B @ layer.A - weight).detach().abs()
    assert torch.allclose(value, (deviation.max() - eps) ** 2)

    product = (layer.B @ layer.A).detach().requires_grad_(True)
    weight_perturbation(product, weight, eps).backward()
    i, j = divmod(int(deviation.argmax()), deviation.shape[1])
    nonzero = product.grad.nonzero().tolist()
    assert nonzero == [[i, j]]

    value.backward()  # through the factors: one column of A, one row of B
    assert layer.A.grad[:, j].abs().sum() > 0 and layer.B.grad[i].abs().sum() > 0
    a_rest = torch.cat([layer.A.grad[:, :j], layer.A.grad[:, j + 1:]], 1)
    b_rest = torch.cat([layer.B.grad[:i], layer.B.grad[i + 1:]], 0)
    assert torch.count_nonzero(a_rest) == 0 and torch.count_nonzero(b_rest) == 0


def test_regulariser_in_recover_is_the_mean_over_layers(tiny_bert):
    student, teacher = _compressed(tiny_bert)
    factored = [(n, m) for n, m in student.named_modules() if isinstance(m, LowRankLinear)]
    reference = {n: teacher.get_submodule(n).weight.detach() for n, _ in factored}
    expected = sum(float(((m.B @ m.A - reference[n]).detach().abs().max() - 1e-3) ** 2)
                   for n, m in factored) / len(factored)
    value = float(_regulariser(factored, reference, 1e-3).detach())
    assert value == pytest.approx(expected, rel=1e-5)


def test_same_seed_same_factors(tiny_llama, calib_tokens):
    runs = []
    for seed in (3, 3, 4):
        student, teacher = _compressed(tiny_llama)
        recover(student, teacher, calib_tokens, RecoveryConfig(steps=4, **FAST, seed=seed))
        runs.append([p.detach().clone() for p in student.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_requires_grad_and_mode_restored(tiny_bert, calib_tokens):
    student, teacher = _compressed(tiny_bert)
    for i, p in enumerate(student.parameters()):
        p.requires_grad_(i % 3 == 0)
    flags = [p.requires_grad for p in student.parameters()]
    teacher_flags = [p.requires_grad for p in teacher.parameters()]
    student.train()
    recover(student, teacher, calib_tokens, RecoveryConfig(steps=2, **FAST))
    assert [p.requires_grad for p in student.parameters()] == flags
    assert [p.requires_grad for p in teacher.parameters()] == teacher_flags
    assert student.training and not teacher.training
    assert all(p.grad is None for p in student.parameters())

    def broken(_model):
        raise RuntimeError("held-out evaluation failed")

    with pytest.raises(RuntimeError, match="held-out"):
        recover(student, teacher, calib_tokens, RecoveryConfig(steps=2), eval_fn=broken)
    assert [p.requires_grad for p in student.parameters()] == flags


def test_task_objective_causal_lm(tiny_llama, calib_tokens):
    student, _ = _compressed(tiny_llama)
    before = [p.detach().clone() for p in student.parameters()]
    report = recover(student, None, calib_tokens,
                     RecoveryConfig(objective="task", steps=3, **FAST))
    assert report.objective == "task" and report.settings["inf_norm_weight"] == 0.0
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in report.loss_curve)
    assert any(not torch.equal(p, b) for p, b in zip(student.parameters(), before, strict=True))


def test_task_objective_contrastive_encoder(tiny_bert, calib_tokens, tokenizer):
    student, teacher = _compressed(tiny_bert)
    config = RecoveryConfig(objective="task", steps=3, **FAST, inf_norm_weight=0.5)
    report = recover(student, teacher, calib_tokens, config, tokenizer=tokenizer)
    assert report.steps == 3 and report.settings["inf_norm_weight"] == 0.5
    with pytest.raises(ConfigError, match="tokenizer"):
        recover(student, teacher, calib_tokens, RecoveryConfig(objective="task", steps=1))


def test_early_stopping_keeps_the_best_state(tiny_bert, calib_tokens, eval_texts, tokenizer):
    from lowrank.calib import tokenize

    student, teacher = _compressed(tiny_bert)
    start = [p.detach().clone() for p in student.parameters()]
    calls = iter(range(100))
    config = RecoveryConfig(steps=20, **FAST, eval_every=2, patience=2)
    report = recover(student, teacher, calib_tokens, config,
                     eval_fn=lambda _m: float(next(calls)))
    assert report.stopped_early and report.steps == 4 and report.best_step == 0
    assert [e["step"] for e in report.eval_curve] == [0, 2, 4]
    assert all(torch.equal(p, s) for p, s in zip(student.parameters(), start, strict=True))

    held_out = tokenize(eval_texts, tokenizer, seq_len=32)
    gap = embedding_gap(teacher, held_out)
    assert gap(teacher) == pytest.approx(0.0, abs=1e-5)
    report = recover(student, teacher, calib_tokens, RecoveryConfig(steps=20, **FAST, eval_every=5),
                     eval_fn=gap)
    assert not report.stopped_early and report.steps == 20
    values = [e["value"] for e in report.eval_curve]
    assert report.best_eval == min(values) < values[0]
    assert gap(student) == pytest.approx(report.best_eval, abs=1e-6)


def test_report_serialises(tiny_bert, calib_tokens):
    student, teacher = _compressed(tiny_bert)
    config = RecoveryConfig(steps=2, layers="last", batch_size=8)
    report = recover(student, teacher, calib_tokens, config)
    assert isinstance(report, RecoveryReport)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["tag"] == "fine_tuned" and data["settings"]["layers"] == "last"
    assert data["seconds"] > 0 and data["trainable_modules"] == 12


def test_learning_rate_schedules():
    assert _lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert _lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert _lr_factor(99, 100, 0, "linear") == pytest.approx(0.01)
    assert _lr_factor(100, 100, 0, "cosine") == pytest.approx(0.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"),
    ({"steps": -3}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"objective": "pela"}, "objective"),
    ({"lr": 0.0}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"schedule": "step"}, "schedule"),
    ({"inf_norm_weight": -1.0}, "inf_norm_weight"),
    ({"patience": 0}, "patience"),
    ({"patience": 3}, "eval_fn"),
    ({"layers": [7]}, "layer index"),
    ({"layers": "middle"}, "layers"),
])
def test_bad_arguments_raise_config_error(tiny_bert, calib_tokens, kwargs, match):
    student, teacher = _compressed(tiny_bert)
    with pytest.raises(ConfigError, match=match):
        recover(student, teacher, calib_tokens, RecoveryConfig(**{"steps": 1, **kwargs}))


def test_model_without_lowrank_modules(tiny_bert, calib_tokens):
    with pytest.raises(ConfigError, match="no LowRankLinear"):
        recover(copy.deepcopy(tiny_bert), tiny_bert, calib_tokens, RecoveryConfig(steps=5))


def test_missing_teacher_or_data(tiny_bert, calib_tokens):
    student, teacher = _compressed(tiny_bert)
    with pytest.raises(ConfigError, match="teacher"):
        recover(student, None, calib_tokens, RecoveryConfig(steps=5))
    with pytest.raises(ConfigError, match="separate copy"):
        recover(student, student, calib_tokens, RecoveryConfig(steps=5))
    with pytest.raises(DataError, match="tokenised"):
        recover(student, teacher, ["some text"], RecoveryConfig(steps=5))


def test_recovery_config_is_checked_frozen_and_serialisable():
    config = RecoveryConfig(layers=(1, 2), eval_every=5)
    assert config.regulariser_weight == DEFAULT_INF_NORM_WEIGHT
    assert RecoveryConfig(objective="task").regulariser_weight == 0.0
    assert RecoveryConfig(objective="task", inf_norm_weight=0.5).regulariser_weight == 0.5
    data = json.loads(json.dumps(config.to_dict()))
    assert data["layers"] == [1, 2] and RecoveryConfig(**data) == replace(config, layers=[1, 2])
    with pytest.raises(FrozenInstanceError):
        config.steps = 3
    for bad, match in (({"warmup": 1.0}, "warmup"), ({"eval_every": 0}, "eval_every"),
                       ({"seed": -1}, "seed"), ({"weight_decay": -0.1}, "weight_decay")):
        with pytest.raises(ConfigError, match=match):
            RecoveryConfig(**bad)
    with pytest.raises(ConfigError, match="config must be a RecoveryConfig"):
        recover(nn.Linear(2, 2), None, None, {"steps": 1})
