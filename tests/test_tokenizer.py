"""The serving front's byte-level tokenizer: one printable character per token id, reversible."""

from __future__ import annotations

import unicodedata

import pytest

from engine.config import PRESETS
from workloads.tokenizer import ByteTokenizer


def test_every_id_decodes_to_one_printable_character_of_its_own():
    for vocab in sorted({cfg.vocab_size for cfg in PRESETS.values()}):
        tok = ByteTokenizer(vocab)
        pieces = [tok.decode_token(t) for t in range(vocab)]
        assert all(len(p) == 1 and p.isprintable() and not p.isspace() or p == " " for p in pieces)
        assert len(set(pieces)) == vocab  # one id per character: the map can be read backwards


def test_the_documented_map():
    tok = ByteTokenizer(512)
    assert tok.decode(list(b"Hello, world ~")) == "Hello, world ~"
    # the other ids, in order, to the letters from U+0100 up: the 33 control bytes first
    assert [tok.decode_token(t) for t in (0x00, 0x01, 0x1F)] == ["Ā", "ā", chr(0x11F)]
    assert tok.decode_token(0x7F) == chr(0x120) and tok.decode_token(0x0A) == "Ċ"
    letters = [chr(c) for c in range(0x100, 0x300) if unicodedata.category(chr(c)).startswith("L")]
    others = [t for t in range(512) if not 0x20 <= t < 0x7F]
    assert [tok.decode_token(t) for t in others] == letters[: len(others)]


def test_encode_reverses_decode_and_keeps_utf8_for_the_rest():
    tok = ByteTokenizer(512)
    ids = list(range(512))
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.encode("Hi") == [0x48, 0x69]
    # characters no id decodes to are their UTF-8 bytes, which decode to letters
    assert tok.encode("é\n") == [0xC3, 0xA9, 0x0A]
    assert tok.decode(tok.encode("é\n")) == tok.decode_token(0xC3) + tok.decode_token(0xA9) + "Ċ"
    # a letter past this vocabulary's ids is its bytes too
    far = ByteTokenizer(100_000).decode_token(90_000)
    assert ByteTokenizer(100_000).encode(far) == [90_000] and tok.encode(far) == list(far.encode())


def test_vocabularies_out_of_reach_are_refused():
    with pytest.raises(ValueError):
        ByteTokenizer(100)
    with pytest.raises(ValueError, match="printable"):
        ByteTokenizer(2_000_000)
