"""The embedded default text: non-empty, disjoint, deterministic calibration/evaluation split."""

from __future__ import annotations

import pytest

from lowrank.data import default_passages
from lowrank.data import default_text as dt


def test_splits_non_empty_and_disjoint():
    calib = default_passages("calibration")
    evaluation = default_passages("evaluation")
    assert len(calib) > 100 and len(evaluation) > 20
    assert not set(calib) & set(evaluation)
    assert len(set(calib)) == len(calib) and len(set(evaluation)) == len(evaluation)
    assert set(calib) | set(evaluation) == set(dt._all_passages())
    assert default_passages() == calib


def test_deterministic():
    first = (default_passages("calibration"), default_passages("evaluation"))
    dt._all_passages.cache_clear()
    second = (default_passages("calibration"), default_passages("evaluation"))
    assert first == second


def test_passage_lengths():
    for p in default_passages("calibration") + default_passages("evaluation"):
        n = len(p.split())
        assert dt.MIN_WORDS // 2 <= n <= dt.MAX_WORDS
        assert p == " ".join(p.split())  # whitespace normalised


def test_split_is_by_checksum_not_order():
    import zlib

    for p in default_passages("evaluation")[:50]:
        assert zlib.crc32(p.encode("utf-8")) % dt.EVAL_EVERY == 0
    for p in default_passages("calibration")[:50]:
        assert zlib.crc32(p.encode("utf-8")) % dt.EVAL_EVERY != 0


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        default_passages("train")


def test_chunking():
    words = [f"w{i}" for i in range(400)]
    passages = dt._chunk(dt._paragraphs(" ".join(words[:200]) + "\n\n" + " ".join(words[200:])))
    assert all(len(p.split()) <= dt.MAX_WORDS for p in passages)
    assert " ".join(passages).split() == words  # nothing lost, order kept
    assert dt._chunk(dt._paragraphs("too short")) == []
