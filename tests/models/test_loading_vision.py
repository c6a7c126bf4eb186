"""Which configs are vision models, and loading one with no tokenizer (optional processor)."""

from __future__ import annotations

import pytest
import torch

from lowrank.errors import ModelFileError
from lowrank.models.loading import load_model, model_kind, peek_kind


def test_model_kind_rule():
    import transformers as t

    vision = [t.ResNetConfig(), t.ConvNextConfig(), t.RegNetConfig(), t.ViTConfig(),
              t.MobileNetV2Config()]
    text = [t.BertConfig(), t.LlamaConfig(), t.WhisperConfig(), t.CLIPConfig()]
    assert [model_kind(c) for c in vision] == ["vision"] * len(vision)
    assert "vision" not in [model_kind(c) for c in text]


def test_load_vision_dir(tmp_path):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
                ).save_pretrained(tmp_path / "rn")
    assert peek_kind(tmp_path / "rn") == "vision"
    assert peek_kind(None) == "encoder"
    assert peek_kind(tmp_path / "missing") is None
    loaded = load_model(tmp_path / "rn")
    assert (loaded.kind, loaded.tokenizer, loaded.processor) == ("vision", None, None)
    assert type(loaded.model).__name__ == "ResNetModel" and not loaded.model.training
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(tmp_path / "rn")
    with_processor = load_model(tmp_path / "rn")
    assert with_processor.processor is not None
    assert (tmp_path / "rn" / "preprocessor_config.json") in with_processor.config_files()
    (tmp_path / "rn" / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="could not load model"):
        load_model(tmp_path / "rn")
