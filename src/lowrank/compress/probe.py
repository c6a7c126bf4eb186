"""End-to-end measurements on calibration passages: the output probe of sensitivity allocation.

:class:`OutputProbe` answers "how much does the model's output move when module ``name`` alone
is replaced by ``replacement``" on the first :data:`PROBE_PASSAGES` calibration passages, with
the measure the evaluation reports: ``1 - cosine`` of the sentence embeddings for encoders, the
mean next-token KL divergence for causal LMs (both second order in a small perturbation).
:func:`forward_passes` runs the same passages through the model without measuring (MoDeGPT's
block importance hooks into it).
"""

from __future__ import annotations

import torch
from torch import nn

from ..calib.data import TokenBatch, TokenizedText
from ..models.forward import hidden_states, sentence_embeddings
from ..models.loading import is_causal_lm
from ..surgery import replace_module

PROBE_PASSAGES = 32
PROBE_BATCH = 16


def probe_passages(tokens: TokenizedText, count: int = PROBE_PASSAGES) -> TokenizedText:
    """The first ``count`` passages of ``tokens``."""
    return TokenizedText(tokens.input_ids[:count], tokens.attention_mask[:count],
                         tokens.texts[:count])


def _batches(model: nn.Module, passages: TokenizedText, batch_size: int) -> list[TokenBatch]:
    device = next(model.parameters()).device
    return [b.to(device) for b in passages.batches(batch_size)]


def forward_passes(model: nn.Module, tokens: TokenizedText) -> None:
    """Run the probe passages of ``tokens`` through ``model`` (no gradients, nothing kept)."""
    with torch.no_grad():
        for batch in _batches(model, probe_passages(tokens), PROBE_BATCH):
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)


class OutputProbe:
    """``probe(name, replacement)``: the end-to-end change when module ``name`` alone is
    replaced (see module docstring). The reference outputs are those of ``model`` as it is
    when the probe is built."""

    def __init__(self, model: nn.Module, tokens: TokenizedText) -> None:
        self.model = model
        self.passages = probe_passages(tokens)
        self.causal = is_causal_lm(model)
        self._batches = _batches(model, self.passages, PROBE_BATCH)
        with torch.no_grad():
            self._reference = [self._outputs(b) for b in self._batches]

    def _outputs(self, batch: TokenBatch) -> torch.Tensor:
        if self.causal:
            return torch.log_softmax(hidden_states(self.model, batch).float(), dim=-1)
        return sentence_embeddings(self.model, batch)

    def __call__(self, name: str, replacement: nn.Module) -> float:
        original = self.model.get_submodule(name)
        replace_module(self.model, name, replacement)
        try:
            total = count = 0.0
            with torch.no_grad():
                for batch, ref in zip(self._batches, self._reference, strict=True):
                    out = self._outputs(batch)
                    if self.causal:
                        mask = batch.attention_mask.bool()
                        kl = (ref.exp() * (ref - out)).sum(-1)
                        total += float(kl[mask].sum())
                        count += int(mask.sum())
                    else:
                        total += float((1 - (out * ref).sum(-1)).sum())
                        count += out.shape[0]
        finally:
            replace_module(self.model, name, original)
        return max(total / max(count, 1), 0.0)
