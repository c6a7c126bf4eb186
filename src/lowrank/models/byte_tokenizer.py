"""A byte-level tokenizer (vocabulary 256: token id = UTF-8 byte value) as a Hugging Face
fast tokenizer, so byte-level models trained here (``lowrank.optim.pretrain``) save as ordinary
model directories that :func:`lowrank.models.load_model` and ``lowrank compress`` accept.

Bytes map to printable characters the way GPT-2's byte-level BPE does (printable Latin-1
bytes stand for themselves, the others for code points from 256 up); with an empty merge list
every byte is one token. Padding uses byte 0, which real text does not contain.
"""

from __future__ import annotations

from typing import Any


def byte_to_char() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` whose ids are the UTF-8 bytes of the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = byte_to_char()
    tok = Tokenizer(models.BPE(vocab={c: b for b, c in table.items()}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=table[0])
