"""A byte-level tokenizer for the serving front: text in as UTF-8 bytes, each token out as one character.

The engine's weights are random, so no learned vocabulary would mean anything; what a serving
front needs is a reversible map that fits every preset's vocabulary and lets real clients send
text. Token ids 0-255 are the bytes of the UTF-8 text (every preset's vocabulary is larger).

Each token id decodes, on its own, to exactly one printable character, so a streamed completion is
the same text as the non-streamed one and a client that counts output tokens by re-tokenizing the
text (or by counting characters) counts one per token:

- the ids of printable ASCII (0x20-0x7E) decode to themselves;
- every other id, in increasing order, to the next Unicode letter (category L*) from U+0100 up:
  id 0x00 to `Ā` (U+0100), 0x01 to `ā`, ... past 0x1F and 0x7F-0xFF to the ids beyond the bytes.
  Letters are taken from the Unicode database of the running Python (Unicode 14.0 on 3.11); later
  versions insert letters only past id 35,000 or so (Unicode 16.0, Python 3.14, at U+A7CB), so
  `tiny` and `ds2-lite` map the same way on every supported Python, and `v3-slice`'s higher ids
  may differ between Python versions.

Encoding reverses the map: a character that some id in the vocabulary decodes to becomes that id,
any other its UTF-8 bytes. So `encode(decode(ids)) == ids` for every list of ids (a chat client that
sends the model's answer back gets the same tokens), printable ASCII round-trips as text, and other
text (newlines, `é`) becomes its bytes, which decode to letters.
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from dataclasses import dataclass, field
from typing import Protocol

BYTE_TOKENS = 256
FIRST_LETTER = 0x100  # the letters start here: above ASCII and Latin-1, so none is a byte's own character


class Tokenizer(Protocol):
    """What the serving front needs of a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode_token(self, token: int) -> str: ...

    def decode(self, tokens: list[int]) -> str: ...


def _printable_ascii(token: int) -> bool:
    return 0x20 <= token < 0x7F


@functools.lru_cache(maxsize=8)
def _pieces(vocab_size: int) -> tuple[str, ...]:
    """Each id's character, for ids below `vocab_size`."""
    letters = (chr(c) for c in range(FIRST_LETTER, sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("L"))
    pieces = []
    for token in range(vocab_size):
        piece = chr(token) if _printable_ascii(token) else next(letters, None)
        if piece is None:
            raise ValueError(f"a vocabulary of {vocab_size} is more ids than there are printable characters to map")
        pieces.append(piece)
    return tuple(pieces)


@dataclass(frozen=True)
class ByteTokenizer:
    vocab_size: int
    _pieces: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.vocab_size < BYTE_TOKENS:
            raise ValueError(
                f"a byte-level tokenizer needs a vocabulary of at least {BYTE_TOKENS}, not {self.vocab_size}"
            )
        pieces = _pieces(self.vocab_size)
        object.__setattr__(self, "_pieces", pieces)
        object.__setattr__(self, "_ids", {piece: token for token, piece in enumerate(pieces)})

    def encode(self, text: str) -> list[int]:
        tokens: list[int] = []
        for char in text:
            token = self._ids.get(char)
            if token is None:
                tokens.extend(char.encode("utf-8", "surrogatepass"))
            else:
                tokens.append(token)
        return tokens

    def decode_token(self, token: int) -> str:
        return self._pieces[token]

    def decode(self, tokens: list[int]) -> str:
        return "".join(self._pieces[t] for t in tokens)
