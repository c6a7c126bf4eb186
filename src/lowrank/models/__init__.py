"""Models: the bundled default and loading of Hugging Face models from disk (``loading``), what
a ``config.json`` declares without loading weights (``config``), family-aware forwards
(``forward``) and the byte-level tokenizer of the pretraining runs (``byte_tokenizer``)."""

from .forward import causal_lm_loss, contrastive_loss, hidden_states, sentence_embeddings
from .loading import (
    DEFAULT_MODEL_NAME,
    LoadedModel,
    default_model_path,
    is_causal_lm,
    load_model,
    model_kind,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "LoadedModel",
    "causal_lm_loss",
    "contrastive_loss",
    "default_model_path",
    "hidden_states",
    "is_causal_lm",
    "load_model",
    "model_kind",
    "sentence_embeddings",
]
