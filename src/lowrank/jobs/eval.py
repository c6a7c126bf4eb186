"""``lowrank eval``: the quality of a model, or of a compressed directory against its base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..calib.data import MIN_EVALUATION_PASSAGES, TextSource, read_texts, require_passages, tokenize
from ..data.images import image_files, read_images
from ..eval import Evaluator
from ..io.checkpoint import load as load_checkpoint
from ..models.loading import DEFAULT_MODEL_NAME, load_model, peek_kind
from ..nn import count_parameters
from ..utils.checks import check_int
from ..utils.env import resolve_device
from ..utils.log import StageLog
from .inputs import check_seq_len, describe_source, model_images


def eval_job(
    model_or_dir: str | None = None,
    *,
    data: TextSource = None,
    device: str | None = None,
    seq_len: int = 128,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate a model or a ``lowrank`` directory on held-out text (images for vision models:
    ``data`` is then a directory of PNG/JPEG files, default the held-out digits).

    For a compressed directory the base model named in its manifest is the reference
    (embedding cosine / neighbour overlap for encoders and pooled outputs of vision models,
    perplexity for causal LMs).
    """
    log = StageLog(quiet)
    check_int("seq_len", seq_len, 2)
    device = resolve_device(device)
    vision = peek_kind(model_or_dir) == "vision"
    if vision:
        if data is not None and data != "default":
            image_files(data)  # the one-line error before loading anything
    else:
        check_seq_len(model_or_dir, seq_len)
        texts = read_texts(data, "evaluation")
    path = Path(model_or_dir) if model_or_dir else None
    is_lowrank = path is not None and path.is_dir() and (
        (path / "lowrank.json").is_file() or not (path / "config.json").is_file())
    if is_lowrank:
        log(f"loading compressed model from {path}")
        compressed = load_checkpoint(path, device=device)
        base = (compressed.lowrank_manifest.get("base_model") or {})
        base_ref = base.get("path") if base.get("path") and Path(base["path"]).exists() \
            else (None if base.get("name") in (None, DEFAULT_MODEL_NAME) else base.get("name"))
        log(f"loading base model {base_ref or DEFAULT_MODEL_NAME}")
        loaded = load_model(base_ref, device=device)
    else:
        loaded = load_model(model_or_dir, device=device)
        compressed = None
    if loaded.kind == "vision":
        inputs, unit = model_images(loaded, read_images(data, "evaluation")), "images"
    else:
        inputs, unit = tokenize(texts, loaded.tokenizer, seq_len), "passages"
    require_passages(len(inputs), MIN_EVALUATION_PASSAGES, "evaluation",
                     describe_source(data, loaded.kind == "vision", split="evaluation"),
                     unit=unit)
    evaluator = Evaluator(loaded.kind, inputs)
    log(f"evaluating on {len(inputs)} {unit}")
    reference = evaluator.reference(loaded.model)
    out = {"model": str(model_or_dir or DEFAULT_MODEL_NAME), "kind": loaded.kind,
           unit: len(inputs), "params": count_parameters(loaded.model),
           "quality": reference}
    if compressed is not None:
        out.update({"base_model": loaded.name, "base_quality": reference,
                    "params": count_parameters(compressed),
                    "base_params": count_parameters(loaded.model),
                    "quality": evaluator.measure(compressed)})
    return out
