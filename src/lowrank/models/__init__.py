"""Models: the bundled default and loading of Hugging Face models from disk (``loading``), what
a ``config.json`` declares without loading weights (``config``), family-aware forwards
(``forward``), models whose blocks load from the checkpoint on demand (``lazy``, for the
layer-wise pipeline) and the byte-level tokenizer of the pretraining runs
(``byte_tokenizer``)."""

from .forward import causal_lm_loss, contrastive_loss, hidden_states, sentence_embeddings
from .loading import (
    DEFAULT_MODEL_NAME,
    DTYPES,
    LoadedModel,
    default_model_path,
    is_causal_lm,
    load_lazy,
    load_model,
    model_kind,
    resolve_dtype,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DTYPES",
    "LoadedModel",
    "causal_lm_loss",
    "contrastive_loss",
    "default_model_path",
    "hidden_states",
    "is_causal_lm",
    "load_lazy",
    "load_model",
    "model_kind",
    "resolve_dtype",
    "sentence_embeddings",
]
