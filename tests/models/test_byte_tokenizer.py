"""The byte-level tokenizer: ids are UTF-8 bytes, round trip through save_pretrained."""

from __future__ import annotations

from transformers import AutoTokenizer

from lowrank.models.byte_tokenizer import byte_level_tokenizer, byte_to_char


def test_table_is_a_bijection_onto_printable_characters():
    table = byte_to_char()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_ids_are_bytes_and_survive_save_load(tmp_path):
    text = "héllo wörld\n\tdef f(x): return {'a': 1}  # ünïcödé ✓"
    tok = byte_level_tokenizer()
    ids = tok([text], truncation=True, max_length=512, add_special_tokens=True)["input_ids"][0]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text and tok.pad_token_id == 0
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again([text])["input_ids"][0] == ids
