"""A byte-level tokenizer for the serving front: text in as UTF-8 bytes, tokens out as text.

The engine's weights are random, so no learned vocabulary would mean anything; what a serving
front needs is a reversible map that fits every preset's vocabulary and lets real clients send
text. Token ids 0-255 are the bytes of the UTF-8 text (every preset's vocabulary is larger).

Decoding works one token at a time, so that a streamed completion is the same text as the
non-streamed one and every token is at least one visible character (clients count streamed
chunks that carry text as tokens): printable ASCII, newline and tab decode to themselves, other
bytes to `<0xNN>` (SentencePiece's byte-fallback notation) and ids past the bytes to `<|id|>`.
So ASCII text round-trips exactly and anything else round-trips as its escapes.
"""

from __future__ import annotations

from dataclasses import dataclass

BYTE_TOKENS = 256


def _piece(token: int) -> str:
    if token >= BYTE_TOKENS:
        return f"<|{token}|>"
    if 0x20 <= token < 0x7F or token in (0x09, 0x0A):
        return chr(token)
    return f"<0x{token:02X}>"


@dataclass(frozen=True)
class ByteTokenizer:
    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < BYTE_TOKENS:
            raise ValueError(
                f"a byte-level tokenizer needs a vocabulary of at least {BYTE_TOKENS}, not {self.vocab_size}"
            )

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_token(self, token: int) -> str:
        return _piece(token)

    def decode(self, tokens: list[int]) -> str:
        return "".join(_piece(t) for t in tokens)
