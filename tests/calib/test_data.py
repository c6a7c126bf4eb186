"""Reading calibration text and tokenising it to fixed-length, right-padded, masked batches."""

from __future__ import annotations

import pytest
import torch

import lowrank.data
from lowrank.calib import read_texts, split_halves, tokenize
from lowrank.errors import DataError

SEQ_LEN = 32


def test_tokenize_pads_and_masks(tokenizer, calib_texts):
    texts = ["Short one.", "A somewhat longer sentence with a few more words in it.",
             calib_texts[0]]
    tok = tokenize(texts, tokenizer, seq_len=SEQ_LEN)
    assert tok.input_ids.shape == (3, SEQ_LEN) == tok.attention_mask.shape
    assert tok.input_ids.dtype == torch.long and tok.texts == texts and len(tok) == 3
    for i, text in enumerate(texts):
        ref = tokenizer(text, truncation=True, max_length=SEQ_LEN)["input_ids"]
        n = len(ref)
        assert int(tok.attention_mask[i].sum()) == n
        # right padded: ones then zeros
        assert torch.equal(tok.attention_mask[i, :n], torch.ones(n, dtype=torch.long))
        assert torch.equal(tok.attention_mask[i, n:], torch.zeros(SEQ_LEN - n, dtype=torch.long))
        assert tok.input_ids[i, :n].tolist() == ref
        assert (tok.input_ids[i, n:] == tokenizer.pad_token_id).all()
    # the long passage is truncated to exactly seq_len
    assert int(tok.attention_mask[2].sum()) == SEQ_LEN
    assert tok.num_tokens == int(tok.attention_mask.sum())


def test_batches_trim_trailing_padding(tokenizer, calib_texts):
    texts = ["One.", "Two words.", "Three short words.", calib_texts[1]]
    tok = tokenize(texts, tokenizer, seq_len=SEQ_LEN)
    batches = list(tok.batches(2))
    assert len(batches) == 2
    first, second = batches
    assert first.input_ids.shape[1] == int(tok.attention_mask[:2].sum(1).max()) < SEQ_LEN
    assert second.input_ids.shape[1] == SEQ_LEN
    assert sum(b.num_tokens for b in batches) == tok.num_tokens
    untrimmed = list(tok.batches(3, trim=False))
    assert [b.input_ids.shape for b in untrimmed] == [(3, SEQ_LEN), (1, SEQ_LEN)]


def test_tokenize_max_samples(tokenizer, calib_texts):
    tok = tokenize(calib_texts, tokenizer, seq_len=16, max_samples=5)
    assert len(tok) == 5 and tok.texts == calib_texts[:5]


def test_tokenize_errors(tokenizer):
    with pytest.raises(DataError, match="seq_len"):
        tokenize(["hello"], tokenizer, seq_len=1)
    with pytest.raises(DataError):
        tokenize([], tokenizer)


def test_read_texts_sources(tmp_path):
    assert read_texts(None) == lowrank.data.default_passages("calibration")
    assert read_texts("default", "evaluation") == lowrank.data.default_passages("evaluation")
    assert read_texts(["a b", "  ", "c"]) == ["a b", "c"]
    path = tmp_path / "corpus.txt"
    para = " ".join(f"word{i}" for i in range(60))
    path.write_text(f"{para}\n\n{para}\n", encoding="utf-8")
    passages = read_texts(path)
    assert passages and all(p.split()[0] == "word0" for p in passages)
    assert read_texts(str(path)) == passages


def test_read_texts_errors(tmp_path):
    with pytest.raises(DataError, match="not a readable file"):
        read_texts(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="empty"):
        read_texts(["", "   "])
    with pytest.raises(DataError, match="strings"):
        read_texts(["fine", 3])
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        read_texts(empty)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DataError, match="UTF-8"):
        read_texts(binary)
    with pytest.raises(DataError, match="unsupported"):
        read_texts(42)


def test_split_halves():
    first, second = split_halves(["a b c d e", "solo"])
    assert first == ["a b", "solo"]
    assert second == ["c d e", "solo"]
