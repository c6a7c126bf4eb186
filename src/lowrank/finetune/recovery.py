"""Recovery fine-tuning of a compressed model through its low-rank factors only.

Two objectives, both of which update nothing but the ``A`` and ``B`` factors of the model's
:class:`~lowrank.nn.LowRankLinear` modules (and, with ``train_bias=True``, their biases):

``"distill"`` — PELA feature distillation ("PELA: Learning Parameter-Efficient Models with
Low-Rank Approximation", Guo et al., arXiv 2310.10700, spec section 12.1). The original model is
a frozen teacher; the compressed model learns its hidden states on calibration text::

    loss = mean_{l in layers} MSE(h_l(student), h_l(teacher))          (real tokens only)
         + embedding_weight * mean_batch ||e(student) - e(teacher)||^2    (encoders only)
         + inf_norm_weight * mean_{factorized W} (||B A - W||_max - epsilon)^2

``e`` is the mean-pooled, L2-normalised sentence embedding, so its term equals
``2 (1 - cosine)``, the quantity the embedding evaluation measures; it is off by default
(``embedding_weight=0``): the last hidden state, which it pools, is already matched, and on the
embedded MiniLM the extra term gave no better held-out cosine while making larger learning
rates unstable. The last term is PELA's
weight-perturbation regulariser: ``||.||_max`` is the largest absolute entry (what
``torch.norm(x, inf)`` gives on a flattened matrix), so its gradient reaches only the argmax
entries of ``|B A - W|`` — one row of ``B`` and one column of ``A`` per layer and step. (On
the embedded MiniLM it changed the held-out cosine by less than 1e-3 at weights 1 and 10; it is
kept, at weight :data:`DEFAULT_INF_NORM_WEIGHT`, as PELA's guard against drifting weights.)

``"task"`` — WeLore's "train only the low-rank components" ("From GaLore to WeLore", Jaiswal et
al., arXiv 2407.11239, spec section 9): the model's own training objective, next-token loss for
causal LMs and, for sentence-embedding encoders, the in-batch contrastive loss between the two
halves of each passage (:func:`lowrank.models.forward.contrastive_loss`). No teacher is needed;
``original`` only serves the optional regulariser.

Overfitting the calibration text is the main risk of either objective on a few hundred
passages. Pass ``eval_fn`` (a callable ``model -> float``, lower is better) that measures the
model on held-out text — disjoint from the training tokens *and* from any split you report
final numbers on. It runs before the first step and every ``eval_every`` steps; the factors of
the best evaluation are restored at the end, and ``patience`` evaluations without improvement
stop training early. :func:`embedding_gap` and :func:`causal_lm_nll` build such callables.

Training runs in float32 with AdamW (no weight decay by default), linear warm-up over a fifth
of the steps (Adam's first full-rate steps move every factor entry at once and knock the model
away from its SVD starting point), then cosine or linear decay to zero, and gradient-norm
clipping. The model is kept in eval mode (dropout
off, so the student matches the teacher's deterministic function); batches are drawn from a
permutation seeded by ``seed``, so the same seed and inputs give identical factors.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from ..calib.data import TokenBatch, TokenizedText, split_halves, tokenize
from ..errors import ConfigError, DataError
from ..models.forward import causal_lm_loss, contrastive_loss, sentence_embeddings
from ..models.loading import is_causal_lm
from ..nn import LowRankLinear
from ..utils.checks import check_finite, check_int
from ..utils.progress import progress

Objective = Literal["distill", "task"]
OBJECTIVES = ("distill", "task")
SCHEDULES = ("cosine", "linear")
#: PELA regulariser weight used by ``"distill"`` when ``inf_norm_weight`` is not given.
DEFAULT_INF_NORM_WEIGHT = 1.0
TAG = "fine_tuned"


@dataclass(frozen=True)
class RecoveryConfig:
    """Hyper-parameters of :func:`recover`, checked on construction.

    ``objective``: ``"distill"`` (PELA feature distillation) or ``"task"`` (WeLore's own
    objective). ``layers``: the hidden states ``"distill"`` matches: ``"all"`` (every block's
    output; the embedding output is left out, factorization does not change it), ``"last"``, or
    indices into the model's ``hidden_states`` tuple (0 = embedding output).
    ``inf_norm_weight``: PELA's regulariser weight; None is :data:`DEFAULT_INF_NORM_WEIGHT` for
    ``"distill"`` and 0 for ``"task"`` (:attr:`regulariser_weight`). ``train_bias`` trains the
    factorized layers' biases too. ``warmup``: the fraction of ``steps`` with a linear
    learning-rate ramp before the ``schedule`` (``"cosine"`` or ``"linear"``) decays it to zero.
    ``max_grad_norm``: gradient-norm clipping (0: off). ``eval_every``: steps between held-out
    evaluations (None: a tenth of ``steps``); ``patience``: evaluations without improvement
    before stopping early (None: never); both need ``eval_fn``. ``seed`` orders the batches.
    """

    objective: Objective = "distill"
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 16
    layers: str | Sequence[int] = "all"
    inf_norm_weight: float | None = None
    epsilon: float = 1e-3
    embedding_weight: float = 0.0
    train_bias: bool = False
    schedule: str = "cosine"
    warmup: float = 0.2
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    eval_every: int | None = None
    patience: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown recovery objective {self.objective!r}: expected one of "
                              f"{', '.join(OBJECTIVES)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}: expected one of "
                              f"{', '.join(SCHEDULES)}")
        if isinstance(self.layers, str) and self.layers not in ("all", "last") or \
                not isinstance(self.layers, (str, Sequence)):
            raise ConfigError(f"layers must be 'all', 'last' or a list of hidden-state indices, "
                              f"got {self.layers!r}")
        check_int("steps", self.steps)
        check_int("batch_size", self.batch_size)
        check_int("seed", self.seed, 0)
        check_finite("lr", self.lr, 0, low_open=True)
        check_finite("warmup", self.warmup, 0, 1, high_open=True)
        check_finite("epsilon", self.epsilon, 0)
        check_finite("embedding_weight", self.embedding_weight, 0)
        check_finite("max_grad_norm", self.max_grad_norm, 0)
        check_finite("weight_decay", self.weight_decay, 0)
        if self.inf_norm_weight is not None:
            check_finite("inf_norm_weight", self.inf_norm_weight, 0)
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every)
        if self.patience is not None:
            check_int("patience", self.patience)

    @property
    def regulariser_weight(self) -> float:
        """``inf_norm_weight``, or the objective's default when it is None."""
        if self.inf_norm_weight is not None:
            return float(self.inf_norm_weight)
        return DEFAULT_INF_NORM_WEIGHT if self.objective == "distill" else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = self.layers if isinstance(self.layers, str) else list(self.layers)
        return data


@dataclass
class RecoveryReport:
    """What :func:`recover` did: steps, time, loss curve, held-out evaluations, parameters."""

    objective: str
    steps: int  # optimisation steps run (fewer than max_steps after early stopping)
    max_steps: int
    seconds: float
    trainable_parameters: int
    trainable_modules: int
    loss_curve: list[dict[str, float]]  # {"step", "loss"}: mean training loss of a window
    eval_curve: list[dict[str, float]] = field(default_factory=list)  # {"step", "value"}
    best_step: int | None = None  # step whose factors were kept (0: the starting point)
    best_eval: float | None = None
    stopped_early: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    tag: str = TAG

    @property
    def first_loss(self) -> float:
        return self.loss_curve[0]["loss"]

    @property
    def final_loss(self) -> float:
        return self.loss_curve[-1]["loss"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_perturbation(product: torch.Tensor, weight: torch.Tensor,
                        epsilon: float = 1e-3) -> torch.Tensor:
    """PELA's regulariser for one layer: ``(max_ij |product - weight|_ij - epsilon)^2``.

    ``amax`` passes the gradient only to the entries that attain the maximum (shared evenly
    between exact ties), so a step moves the rebuilt weight only where it deviates most.
    """
    return ((product - weight).abs().amax() - epsilon) ** 2


def embedding_gap(original: nn.Module, tokens: TokenizedText,
                  batch_size: int = 32) -> Callable[[nn.Module], float]:
    """A held-out criterion for encoders: mean ``1 - cosine`` between a model's sentence
    embeddings of ``tokens`` and the original's (computed once, here)."""
    if not isinstance(tokens, TokenizedText) or len(tokens) == 0:
        raise DataError("embedding_gap needs non-empty TokenizedText (lowrank.calib.tokenize)")
    device = _device(original)
    with torch.no_grad():
        reference = [sentence_embeddings(original, b.to(device))
                     for b in tokens.batches(batch_size)]

    def gap(model: nn.Module) -> float:
        dev = _device(model)
        total = 0.0
        with torch.no_grad():
            for ref, batch in zip(reference, tokens.batches(batch_size), strict=True):
                emb = sentence_embeddings(model, batch.to(dev))
                total += float((1.0 - (emb * ref.to(dev)).sum(-1)).sum())
        return total / len(tokens)

    return gap


def causal_lm_nll(tokens: TokenizedText, batch_size: int = 8) -> Callable[[nn.Module], float]:
    """A held-out criterion for causal LMs: mean next-token negative log-likelihood."""
    if not isinstance(tokens, TokenizedText) or len(tokens) == 0:
        raise DataError("causal_lm_nll needs non-empty TokenizedText (lowrank.calib.tokenize)")

    def nll(model: nn.Module) -> float:
        dev = _device(model)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in tokens.batches(batch_size):
                s, n = causal_lm_loss(model, batch.to(dev))
                total, count = total + float(s), count + n
        return total / max(count, 1)

    return nll


def recover(model: nn.Module, original: nn.Module | None, tokens: TokenizedText,
            config: RecoveryConfig | None = None, *,
            eval_fn: Callable[[nn.Module], float] | None = None, tokenizer: Any = None,
            quiet: bool = True) -> RecoveryReport:
    """Fine-tune the low-rank factors of compressed ``model`` in place; return a report.

    ``original`` is the uncompressed model (same architecture, dense ``nn.Linear`` where
    ``model`` has :class:`LowRankLinear`): the teacher for ``objective="distill"`` and the
    reference weights ``W`` of the regulariser. It is never modified. ``tokens`` is the
    training text (:func:`lowrank.calib.tokenize`); ``config`` the hyper-parameters
    (:class:`RecoveryConfig`; its defaults when None).

    Only the ``A`` / ``B`` factors train unless ``config.train_bias`` (then the factorized
    layers' biases too); every other parameter is frozen, and all ``requires_grad`` flags and
    the train/eval mode are restored on return. ``"task"`` on an encoder needs ``tokenizer`` (to
    tokenise the two halves of each passage) and ``batch_size >= 2`` (in-batch negatives).

    With ``eval_fn`` (``model -> float``, lower is better, on held-out text), the factors
    with the best value — the starting point included — are kept, evaluated every
    ``config.eval_every`` steps, stopping early after ``config.patience`` evaluations without
    improvement. ``quiet=False`` shows a progress bar. The report is tagged ``"fine_tuned"``.
    """
    config = RecoveryConfig() if config is None else config
    if not isinstance(config, RecoveryConfig):
        raise ConfigError(f"config must be a RecoveryConfig, got {type(config).__name__}")
    if (config.patience is not None or config.eval_every is not None) and eval_fn is None:
        raise ConfigError("patience and eval_every need eval_fn (a held-out criterion, lower "
                          "is better), e.g. lowrank.finetune.embedding_gap(original, tokens)")
    if not isinstance(tokens, TokenizedText) or len(tokens) == 0:
        raise DataError("recover needs non-empty tokenised training text: pass "
                        "lowrank.calib.tokenize(texts, tokenizer, seq_len)")
    # this run's settings: the batch no larger than the data, the regulariser's weight and
    # the evaluation period resolved
    every = (config.eval_every or max(1, config.steps // 10)) if eval_fn is not None else None
    run = replace(config, batch_size=min(config.batch_size, len(tokens)),
                  inf_norm_weight=config.regulariser_weight, eval_every=every)
    factored = [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
    if not factored:
        raise ConfigError(f"{type(model).__name__} has no LowRankLinear modules to fine-tune: "
                          "expected a model compressed with lowrank.compress")
    if run.objective == "distill" and original is None:
        raise ConfigError("objective 'distill' needs the original (uncompressed) model as the "
                          "teacher: recover(model, original, tokens)")
    if run.inf_norm_weight > 0 and original is None:
        raise ConfigError(f"inf_norm_weight={run.inf_norm_weight} needs the original model's "
                          "weights: pass original, or inf_norm_weight=0")
    if original is model:
        raise ConfigError("original must be a separate copy of the uncompressed model "
                          "(copy.deepcopy before lowrank.compress), not the model itself")
    if any(p.dtype != torch.float32 for _, m in factored for p in m.parameters()):
        raise ConfigError("recovery fine-tuning runs in float32: convert the model with "
                          "model.float() first")
    halves = None
    if run.objective == "task" and not is_causal_lm(model):
        if run.batch_size < 2:
            raise ConfigError(f"the contrastive task loss needs batch_size >= 2 and at least 2 "
                              f"passages (in-batch negatives), got batch_size {run.batch_size}")
        if tokenizer is None:
            raise ConfigError("objective 'task' on an encoder tokenises the two halves of each "
                              "passage: pass tokenizer=...")
        halves = _halves(tokens, tokenizer)

    reference: dict[str, torch.Tensor] = {}
    if run.inf_norm_weight > 0:
        reference = _reference_weights(original, factored, _device(model))
    trainable = [m.A for _, m in factored] + [m.B for _, m in factored]
    if run.train_bias:
        trainable += [m.bias for _, m in factored if m.bias is not None]

    flags = {id(p): (p, p.requires_grad) for net in (model, original) if net is not None
             for p in net.parameters()}
    modes = [(net, net.training) for net in (model, original) if net is not None]
    t0 = time.perf_counter()
    try:
        for p, _ in flags.values():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        for net, _ in modes:
            net.eval()
        with torch.enable_grad():
            report = _train(model, original, tokens, halves, factored, reference, trainable, run,
                            eval_fn, quiet)
    finally:
        for p in trainable:
            p.grad = None
        for p, flag in flags.values():
            p.requires_grad_(flag)
        for net, mode in modes:
            net.train(mode)
    report.seconds = time.perf_counter() - t0
    report.settings = {**run.to_dict(), "training_passages": len(tokens)}
    return report


# --------------------------------------------------------------------------- training loop


def _train(model, original, tokens, halves, factored, reference, trainable,
           run: RecoveryConfig, eval_fn, quiet: bool) -> RecoveryReport:
    """The optimisation loop of :func:`recover` with this run's resolved settings ``run``."""
    steps, objective = run.steps, run.objective
    device, causal = _device(model), is_causal_lm(model)
    optimizer = torch.optim.AdamW(trainable, lr=run.lr, weight_decay=run.weight_decay)
    warm = int(round(run.warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: _lr_factor(i, steps, warm, run.schedule))
    batches = _index_stream(len(tokens), run.batch_size, run.seed)
    extra_kw = _cheap_forward_kwargs(model) if objective == "distill" and causal else {}
    log_every = max(1, steps // 10)

    best_state: dict[int, torch.Tensor] | None = None
    best_eval: float | None = None
    best_step: int | None = None
    eval_curve: list[dict[str, float]] = []
    stale = 0
    stopped = False
    if eval_fn is not None:
        best_eval, best_step = _evaluate(eval_fn, model), 0
        best_state = _snapshot(trainable)
        eval_curve.append({"step": 0, "value": best_eval})

    loss_curve: list[dict[str, float]] = []
    window: list[float] = []
    done = 0
    for step in progress(range(1, steps + 1), f"recovery ({objective})", quiet=quiet):
        idx = next(batches)
        if objective == "distill":
            loss = _distill_loss(model, original, _gather(tokens, idx).to(device), run, causal,
                                 extra_kw)
        elif causal:
            total, count = causal_lm_loss(model, _gather(tokens, idx).to(device))
            loss = total / max(count, 1)
        else:
            loss = contrastive_loss(model, _gather(halves[0], idx).to(device),
                                    _gather(halves[1], idx).to(device))
        if run.inf_norm_weight > 0:
            loss = loss + run.inf_norm_weight * _regulariser(factored, reference, run.epsilon)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"recovery loss became {float(loss)} at step {step}: "
                                     f"lower lr (now {run.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if run.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(trainable, run.max_grad_norm)
        optimizer.step()
        scheduler.step()
        done = step
        window.append(float(loss.detach()))
        if step == 1 or step % log_every == 0 or step == steps:
            loss_curve.append({"step": step, "loss": sum(window) / len(window)})
            window = []
        if eval_fn is not None and (step % run.eval_every == 0 or step == steps):
            value = _evaluate(eval_fn, model)
            eval_curve.append({"step": step, "value": value})
            if value < best_eval:
                best_eval, best_step, best_state, stale = value, step, _snapshot(trainable), 0
            else:
                stale += 1
                if run.patience is not None and stale >= run.patience:
                    stopped = True
                    break
    if window:
        loss_curve.append({"step": done, "loss": sum(window) / len(window)})
    if best_state is not None and best_step != done:
        with torch.no_grad():
            for p, saved in zip(trainable, best_state.values(), strict=True):
                p.copy_(saved)
    return RecoveryReport(
        objective=objective, steps=done, max_steps=steps, seconds=0.0,
        trainable_parameters=sum(p.numel() for p in trainable),
        trainable_modules=len(factored), loss_curve=loss_curve, eval_curve=eval_curve,
        best_step=best_step, best_eval=best_eval, stopped_early=stopped,
    )


def _distill_loss(model, original, batch: TokenBatch, run: RecoveryConfig, causal: bool,
                  extra_kw: dict) -> torch.Tensor:
    with torch.no_grad():
        teacher = original(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=True, **extra_kw).hidden_states
    student = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    output_hidden_states=True, **extra_kw).hidden_states
    if len(student) != len(teacher):
        raise ConfigError(f"model and original return {len(student)} and {len(teacher)} "
                          "hidden states: expected the same architecture")
    picked = _layer_indices(run.layers, len(student))
    mask = batch.attention_mask.unsqueeze(-1).to(student[-1].dtype)
    denom = mask.sum() * student[-1].shape[-1]
    terms = [(((student[i] - teacher[i]) ** 2) * mask).sum() / denom for i in picked]
    loss = torch.stack(terms).mean()
    if not causal and run.embedding_weight > 0:
        loss = loss + run.embedding_weight * _pooled_gap(student[-1], teacher[-1], mask)
    return loss


def _pooled_gap(student: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of normalised mean-pooled embeddings, ``2 (1 - cosine)``."""
    count = mask.sum(1).clamp_min(1.0)
    s = nn.functional.normalize((student * mask).sum(1) / count, dim=-1)
    t = nn.functional.normalize((teacher * mask).sum(1) / count, dim=-1)
    return ((s - t) ** 2).sum(-1).mean()


def _regulariser(factored, reference: dict[str, torch.Tensor], epsilon: float) -> torch.Tensor:
    terms = [weight_perturbation(m.dense_weight(), reference[n], epsilon)
             for n, m in factored]
    return torch.stack(terms).mean()


# --------------------------------------------------------------------------- helpers


def _layer_indices(layers: str | Sequence[int], count: int) -> list[int]:
    """Indices into ``hidden_states`` (``count`` = blocks + 1, index 0 the embedding output)."""
    if layers == "all":
        return list(range(1, count))
    if layers == "last":
        return [count - 1]
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ConfigError(f"layers must be 'all', 'last' or a non-empty list of hidden-state "
                          f"indices, got {layers!r}")
    out = []
    for i in layers:
        if not isinstance(i, int) or isinstance(i, bool) or not -count <= i < count:
            raise ConfigError(f"layer index {i!r} is outside the model's {count} hidden states "
                              f"(0 = embedding output, {count - 1} = last block)")
        out.append(i % count)
    return out


def _lr_factor(i: int, steps: int, warm: int, schedule: str) -> float:
    """Learning-rate multiplier before step ``i + 1``: linear warm-up, then decay to zero."""
    if i < warm:
        return (i + 1) / warm
    progress_ = (i - warm) / max(1, steps - warm)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress_))
    return max(0.0, 1.0 - progress_)


def _index_stream(n: int, batch_size: int, seed: int):
    """Full batches of distinct passage indices, epoch after epoch of seeded permutations."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def _gather(tokens: TokenizedText, idx: torch.Tensor) -> TokenBatch:
    """The passages ``idx`` as one batch, trailing all-padding columns dropped."""
    mask = tokens.attention_mask[idx]
    width = max(1, int(mask.sum(1).max()))
    return TokenBatch(tokens.input_ids[idx, :width], mask[:, :width])


def _halves(tokens: TokenizedText, tokenizer: Any) -> tuple[TokenizedText, TokenizedText]:
    first, second = split_halves(tokens.texts)
    seq_len = int(tokens.input_ids.shape[1])
    a, b = tokenize(first, tokenizer, seq_len), tokenize(second, tokenizer, seq_len)
    if len(a) != len(tokens) or len(b) != len(tokens):
        raise DataError("some passage halves produced no tokens: expected passages of at least "
                        "two words")
    return a, b


def _reference_weights(original, factored, device) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in factored:
        try:
            source = original.get_submodule(name)
        except AttributeError as exc:
            raise ConfigError(f"original has no module '{name}': expected the uncompressed "
                              "model the compressed one was made from") from exc
        if isinstance(source, LowRankLinear):
            weight = source.dense_weight()
        elif isinstance(getattr(source, "weight", None), torch.Tensor):
            weight = source.weight
        else:
            raise ConfigError(f"original module '{name}' ({type(source).__name__}) has no "
                              "weight matrix: expected an nn.Linear")
        shape = (module.out_features, module.in_features)
        if tuple(weight.shape) != shape:
            raise ConfigError(f"original '{name}' has weight {tuple(weight.shape)}, the "
                              f"factorized layer represents {shape}: expected the same model")
        out[name] = weight.detach().to(device=device, dtype=torch.float32)
    return out


def _cheap_forward_kwargs(model: nn.Module) -> dict:
    """Distillation needs hidden states only: skip most of a causal LM's vocabulary head."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _snapshot(params: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    return {i: p.detach().clone() for i, p in enumerate(params)}


def _evaluate(eval_fn: Callable[[nn.Module], float], model: nn.Module) -> float:
    with torch.no_grad():
        value = float(eval_fn(model))
    if not math.isfinite(value):
        raise FloatingPointError(f"eval_fn returned {value}: expected a finite number "
                                 "(lower is better)")
    return value
