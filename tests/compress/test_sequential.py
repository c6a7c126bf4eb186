"""Sequential (error-correcting) calibration against the original-statistics fit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowrank
from lowrank import SVDLLM
from lowrank.calib.data import TokenizedText
from lowrank.errors import ConfigError


class ToyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden + self.down(torch.tanh(self.up(hidden))) * attention_mask.unsqueeze(-1)


class ToyModel(nn.Module):
    """Embedding + two residual MLP blocks, called like a Hugging Face model."""

    def __init__(self, vocab: int = 50, width: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList([ToyBlock(width) for _ in range(2)])
        mix = torch.randn(width, width) * torch.logspace(0, -1, width)  # anisotropic inputs
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, width) @ mix * 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask.to(hidden.dtype))
        return hidden


def _tokens(n: int = 24, length: int = 16, vocab: int = 50) -> TokenizedText:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, length // 2:] = 0
    return TokenizedText(ids, mask, ["x"] * n)


def _end_to_end_error(reference: nn.Module, model: nn.Module, tokens: TokenizedText) -> float:
    with torch.no_grad():
        a = reference(tokens.input_ids, tokens.attention_mask)
        b = model(tokens.input_ids, tokens.attention_mask)
    mask = tokens.attention_mask.bool()
    return float((a - b)[mask].norm() / a[mask].norm())


@pytest.mark.parametrize("keep", [0.2, 0.35, 0.5, 0.65, 0.8])
def test_sequential_beats_original_statistics_end_to_end(keep):
    torch.manual_seed(0)
    model = ToyModel()
    tokens = _tokens()
    plain, seq = copy.deepcopy(model), copy.deepcopy(model)
    lowrank.compress(plain, SVDLLM(keep=keep), data=tokens)
    result = lowrank.compress(seq, SVDLLM(keep=keep, mode="sequential", seq_damping=0.0),
                              data=tokens)
    assert result.ranks == {m.name: m.rank for m in result.modules}
    for name in ("layers.0.up", "layers.1.down"):
        assert seq.get_submodule(name).rank == plain.get_submodule(name).rank
    err_plain = _end_to_end_error(model, plain, tokens)
    err_seq = _end_to_end_error(model, seq, tokens)
    assert err_seq < err_plain, (err_seq, err_plain)


def test_first_layer_is_unchanged_without_damping():
    """The first layer sees identical inputs in both models: the refit is SVD-LLM itself."""
    torch.manual_seed(0)
    model = ToyModel()
    tokens = _tokens()
    plain, seq = copy.deepcopy(model), copy.deepcopy(model)
    lowrank.compress(plain, SVDLLM(keep=0.5), data=tokens)
    result = lowrank.compress(seq, SVDLLM(keep=0.5, mode="sequential", seq_damping=0.0),
                              data=tokens)
    # identical on the inputs (weights may differ only along directions no input reaches)
    first = {m.name: m for m in result.modules}["layers.0.up"]
    tokens_in = model.embed(tokens.input_ids)[tokens.attention_mask.bool()]
    with torch.no_grad():
        a = plain.get_submodule("layers.0.up")(tokens_in)
        b = seq.get_submodule("layers.0.up")(tokens_in)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert first.rel_output_error is not None
    notes = {m.name: m.notes for m in result.modules}
    assert notes["layers.1.down"]["refit_relative_change"] > 1e-4


def test_sequential_on_tiny_hf_models(tiny_bert, tiny_llama, tokenizer, calib_texts):
    for model in (tiny_bert, tiny_llama):
        m = copy.deepcopy(model)
        result = lowrank.compress(m, SVDLLM(keep=0.6, mode="sequential"), data=calib_texts,
                                  tokenizer=tokenizer, seq_len=32)
        assert abs(result.keep_actual - 0.6) <= 0.003
        assert all(torch.isfinite(torch.tensor(r.rel_output_error)) for r in result.modules)


def test_sequential_config_errors():
    with pytest.raises(ConfigError, match="mode"):
        SVDLLM(mode="backwards")
    with pytest.raises(ConfigError, match="alternatives"):
        SVDLLM(mode="sequential", update_left=True)
    with pytest.raises(ConfigError, match="seq_damping"):
        SVDLLM(seq_damping=-1.0)
