"""The serving front's byte-level tokenizer."""

from __future__ import annotations

import pytest

from workloads.tokenizer import ByteTokenizer


def test_tokenizer_round_trips_ascii_and_escapes_the_rest():
    tok = ByteTokenizer(512)
    assert tok.decode(tok.encode("Hello,\tworld\n")) == "Hello,\tworld\n"
    assert tok.encode("é") == [0xC3, 0xA9] and tok.decode([0xC3, 0xA9]) == "<0xC3><0xA9>"
    assert tok.decode_token(300) == "<|300|>" and tok.decode_token(0) == "<0x00>"
    # clients count streamed chunks that carry text as tokens: no token may decode to nothing
    assert all(tok.decode_token(t) for t in range(512))
    with pytest.raises(ValueError):
        ByteTokenizer(100)
