"""model_core.tokenizer: the byte-level tokenizer and its streaming decoder."""

from __future__ import annotations

import random

import pytest
import torch

from model_core.tokenizer import BOS, EOS, PAD, VOCAB_SIZE, ByteTokenizer, StreamDecoder

TEXTS = [
    "",
    "hello, world",
    "tabs\tand\nnewlines\r\n and \x00 nul",
    "héllo wörld ñ ß",  # 2-byte characters
    "日本語のテキスト 中文",  # 3-byte characters
    "emoji 🙂🚀 and a family 👨‍👩‍👧 and a flag 🇫🇷",  # 4-byte characters, ZWJ sequences
    "mixed: aé日🙂z",
    "<|eos|> is plain text here",
]


def test_special_ids() -> None:
    assert (BOS, EOS, PAD, VOCAB_SIZE) == (256, 257, 258, 259)
    tok = ByteTokenizer()
    assert tok.vocab_size == VOCAB_SIZE
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (BOS, EOS, PAD)
    assert tok.is_special(EOS) and not tok.is_special(255)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    framed = tok.encode(text, add_bos=True, add_eos=True)
    assert framed == [BOS, *ids, EOS]
    assert tok.decode(framed) == text
    assert tok.decode(framed, skip_special=False) == f"<|bos|>{text}<|eos|>"


def test_encode_never_makes_special_tokens_from_text() -> None:
    assert ByteTokenizer().encode("<|eos|>") == list(b"<|eos|>")


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_one_id_at_a_time_equals_full_decode(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text, add_bos=True, add_eos=True)
    stream = tok.stream_decoder()
    pieces = [stream.feed(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    # Each piece is whole characters: a multi-byte character comes out in one piece.
    for piece in pieces:
        assert "\ufffd" not in piece
        assert piece.encode("utf-8").decode("utf-8") == piece


def test_multibyte_character_is_held_back_until_complete() -> None:
    stream = StreamDecoder()
    emoji = list("🙂".encode())
    assert len(emoji) == 4
    assert [stream.feed(b) for b in emoji] == ["", "", "", "🙂"]
    assert stream.feed(list("é!".encode())) == "é!"
    assert stream.flush() == ""


def test_random_ids_always_decode_and_stream_matches() -> None:
    """Any id sequence decodes (invalid UTF-8 -> U+FFFD) exactly as Python decodes its
    bytes, and the streaming pieces join to the full decode, for every split."""
    rng = random.Random(0)
    tok = ByteTokenizer()
    for trial in range(300):
        # Bias towards UTF-8 lead/continuation bytes to hit split and broken characters.
        pool = [*range(256), *range(0x80, 0xC0), *range(0xC2, 0xF5), BOS, EOS, PAD]
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 24))]
        full = tok.decode(ids)
        assert full == bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        stream = tok.stream_decoder()
        cuts = sorted(rng.sample(range(len(ids) + 1), k=min(3, len(ids) + 1)))
        chunks = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)], strict=True)]
        streamed = "".join(stream.feed(chunk) for chunk in chunks) + stream.flush()
        assert streamed == full, (trial, ids)
        one_by_one = StreamDecoder(skip_special=False)
        pieces = [one_by_one.feed(i) for i in ids]
        assert "".join(pieces) + one_by_one.flush() == tok.decode(ids, skip_special=False)


def test_invalid_utf8_is_replaced() -> None:
    tok = ByteTokenizer()
    assert tok.decode([0xFF, ord("a")]) == "\ufffda"
    assert tok.decode(list("🙂".encode())[:2]) == "\ufffd"  # truncated character
    assert tok.decode([0xF0, 0x9F, BOS, 0x99, 0x82]) == "🙂"  # specials are skipped
    # Shown, a special interrupts the character: its first bytes become U+FFFD.
    assert tok.decode([0xF0, 0x9F, EOS, ord("x")], skip_special=False) == "\ufffd<|eos|>x"


def test_flush_ends_the_stream_and_starts_a_new_one() -> None:
    stream = StreamDecoder()
    assert stream.feed([0xE6, 0x97]) == ""  # 2 of the 3 bytes of "日"
    assert stream.flush() == "\ufffd"
    assert stream.feed(list("日".encode())) == "日"
    stream.feed(0xE6)
    stream.reset()
    assert stream.feed(ord("a")) == "a"


def test_tensor_ids() -> None:
    tok = ByteTokenizer()
    ids = torch.tensor(tok.encode("héllo 🙂", add_eos=True))
    assert tok.decode(ids) == "héllo 🙂"
    stream = StreamDecoder()
    assert "".join(stream.feed(i) for i in ids) == "héllo 🙂"  # 0-d tensors one at a time


@pytest.mark.parametrize("bad", [-1, VOCAB_SIZE, 1000, 2.0, "a"])
def test_out_of_range_ids_raise(bad: object) -> None:
    tok = ByteTokenizer()
    with pytest.raises(ValueError):
        tok.decode([65, bad])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        StreamDecoder().feed(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tok.is_special(bad)  # type: ignore[arg-type]


def test_a_rejected_feed_leaves_the_stream_as_it_was() -> None:
    stream = StreamDecoder()
    assert stream.feed(0xE6) == ""
    with pytest.raises(ValueError):
        stream.feed([0x97, VOCAB_SIZE])
    assert stream.feed([0x97, 0xA5]) == "日"
