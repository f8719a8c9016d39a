"""Byte-level tokenizer: ids 0-255 are the UTF-8 bytes of the text, then three specials.

    BOS = 256, EOS = 257, PAD = 258, VOCAB_SIZE = 259

Every text encodes (its UTF-8 bytes) and every id sequence decodes: bytes that are not
valid UTF-8 become U+FFFD ("replace"). `StreamDecoder` decodes token by token for
streaming: it returns only complete characters, holding back the first bytes of a
multi-byte character until its last byte arrives, and its pieces join to exactly what
`ByteTokenizer.decode` returns for the whole sequence.

Special tokens are never produced by `encode` from text (the text "<|eos|>" is seven
bytes). When decoding they are dropped (`skip_special=True`, the default: the bytes
around them join as if they were not there) or written as `<|bos|>`, `<|eos|>`,
`<|pad|>` (`skip_special=False`; an unfinished character before one becomes U+FFFD).
"""

from __future__ import annotations

import codecs
import operator
from collections.abc import Iterable
from typing import SupportsIndex

BOS = 256
EOS = 257
PAD = 258
VOCAB_SIZE = 259
SPECIAL_NAMES: dict[int, str] = {BOS: "<|bos|>", EOS: "<|eos|>", PAD: "<|pad|>"}


def check_id(token: SupportsIndex) -> int:
    """`token` as an int in [0, VOCAB_SIZE); ValueError otherwise."""
    try:
        value = operator.index(token)
    except TypeError as exc:
        raise ValueError(f"token ids must be integers, got {token!r}") from exc
    if not 0 <= value < VOCAB_SIZE:
        raise ValueError(f"token id {value} is out of range [0, {VOCAB_SIZE})")
    return value


class StreamDecoder:
    """Incremental decoding: `feed(ids)` returns the text completed by these ids,
    `flush()` ends the stream (an unfinished character becomes U+FFFD)."""

    def __init__(self, skip_special: bool = True) -> None:
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: SupportsIndex | Iterable[SupportsIndex]) -> str:
        """One id or several; returns the newly complete text (possibly "")."""
        several = isinstance(ids, Iterable) and getattr(ids, "ndim", 1) != 0  # 0-d tensors
        values = [check_id(t) for t in (ids if several else [ids])]  # all, before any state
        pieces: list[str] = []
        pending = bytearray()
        for value in values:
            if value < 256:
                pending.append(value)
            elif not self.skip_special:
                pieces.append(self._utf8.decode(bytes(pending), final=True))
                pending.clear()
                self._utf8.reset()
                pieces.append(SPECIAL_NAMES[value])
        pieces.append(self._utf8.decode(bytes(pending)))
        return "".join(pieces)

    def flush(self) -> str:
        """The end of the stream: what is left of an unfinished character (as U+FFFD);
        the decoder is then ready for a new stream."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    def reset(self) -> None:
        """Drop any unfinished character and start a new stream."""
        self._utf8.reset()


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus BOS / EOS / PAD."""

    vocab_size = VOCAB_SIZE
    bos_id = BOS
    eos_id = EOS
    pad_id = PAD

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """The UTF-8 bytes of `text` (UnicodeEncodeError, a ValueError, for lone
        surrogates), with BOS before and/or EOS after."""
        ids = list(text.encode("utf-8"))
        if add_bos:
            ids.insert(0, BOS)
        if add_eos:
            ids.append(EOS)
        return ids

    def decode(self, ids: Iterable[SupportsIndex], skip_special: bool = True) -> str:
        """The text of `ids`; ValueError for an id outside [0, VOCAB_SIZE)."""
        decoder = StreamDecoder(skip_special)
        return decoder.feed(ids) + decoder.flush()

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        return StreamDecoder(skip_special)

    def is_special(self, token: SupportsIndex) -> bool:
        return check_id(token) >= 256
