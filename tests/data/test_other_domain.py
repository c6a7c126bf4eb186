"""The out-of-domain text: licence passages of the installed packages."""

from __future__ import annotations

from lowrank.calib import read_texts
from lowrank.data import default_passages, other_domain_passages


def test_licence_passages_are_real_distinct_text():
    passages = other_domain_passages(None)
    assert len(passages) >= 50  # torch alone ships dozens of licence files
    assert len(set(passages)) == len(passages)
    docs = set(default_passages("calibration")) | set(default_passages("evaluation"))
    assert not docs & set(passages)
    assert all(len(p.split()) >= 20 for p in passages)
    assert any("warrant" in p.lower() for p in passages)  # legal prose, another domain


def test_licence_passages_deterministic_and_limited():
    assert other_domain_passages(30) == other_domain_passages(None)[:30]
    assert read_texts("licenses") == other_domain_passages()
