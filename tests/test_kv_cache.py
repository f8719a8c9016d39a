"""Cached decoding equals full recomputation (the uncached forward is the oracle)."""

from __future__ import annotations

import pytest
import torch

from model_core.kv_cache import CacheFullError
from tests.model_factories import ar_model, inputs, seq2seq_model

ATTENTION = ["mha", "mqa", "gqa"]
VOCAB = [None, 50]  # value inputs, token inputs
ATOL = 1e-5


def run_in_pieces(model, x, cache, cuts: list[int]) -> torch.Tensor:
    """Feed x through `model.step` in pieces ending at `cuts` (prefill, chunks, tokens)."""
    outs, start = [], 0
    for end in [*cuts, x.shape[1]]:
        outs.append(model.step(x[:, start:end], cache))
        start = end
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("vocab", VOCAB)
def test_autoregressive_cached_equals_recomputed(attention: str, vocab: int | None) -> None:
    model = ar_model(attention, vocab)
    x = inputs(vocab, 3, 24)
    full = model(x)
    cache = model.new_cache(3)
    cached = run_in_pieces(model, x, cache, [7, 8, 9, 15, *range(16, 24)])
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    assert cache.lengths.tolist() == [24, 24, 24]


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("vocab", VOCAB)
def test_encoder_decoder_cached_equals_recomputed(attention: str, vocab: int | None) -> None:
    model = seq2seq_model(attention, vocab)
    src, tgt = inputs(vocab, 2, 11), inputs(vocab, 2, 16)
    full = model(src, tgt)
    memory = model.encode(src)
    cache = model.new_cache(memory)
    cached = run_in_pieces(model, tgt, cache, [5, *range(6, 16)])
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)


def test_cross_attention_kv_is_projected_once_per_source() -> None:
    model = seq2seq_model("gqa", 20)
    memory = model.encode(torch.randint(0, 20, (2, 9)))
    calls = []
    for layer in model.decoder_layers:
        project = layer.cross_attn.project_kv
        layer.cross_attn.project_kv = lambda x, f=project: calls.append(1) or f(x)
    cache = model.new_cache(memory)
    for _ in range(5):
        model.step(torch.randint(0, 20, (2, 1)), cache)
    assert len(calls) == len(model.decoder_layers)


def banded_reference(model, x, window: int) -> torch.Tensor:
    """Uncached forward where every layer attends to the last `window` positions only."""
    i = torch.arange(x.shape[1])
    band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    h = model.embedding(x)
    for layer in model.layers:
        h = layer(h, src_mask=~band, is_causal=False)  # PyTorch convention: True = masked
    return model.output_proj(h)


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("vocab", VOCAB)
def test_sliding_window_equals_banded_recomputation(attention: str, vocab: int | None) -> None:
    model = ar_model(attention, vocab, sliding_window=6)
    x = inputs(vocab, 2, 30)
    cache = model.new_cache(2, sliding=True, slack=3)  # capacity 9 < 30: the ring wraps
    cached = run_in_pieces(model, x, cache, [10, 13, *range(14, 30)])
    torch.testing.assert_close(cached, banded_reference(model, x, 6), atol=ATOL, rtol=0)


def test_sliding_window_single_layer_equals_recomputing_the_window() -> None:
    """With one layer, position p's output is the model run on the window alone, at its
    absolute positions."""
    model = ar_model("gqa", 50, num_layers=1, sliding_window=5)
    x = torch.randint(0, 50, (2, 20))
    cache = model.new_cache(2, sliding=True, slack=2)
    cached = run_in_pieces(model, x, cache, list(range(1, 20)))
    for p in range(20):
        start = max(0, p - 4)
        h = model.embedding(x[:, start : p + 1], torch.arange(start, p + 1))
        h = model.layers[0](h, is_causal=True)
        torch.testing.assert_close(cached[:, p], model.output_proj(h)[:, -1], atol=ATOL, rtol=0)


def test_sliding_window_runs_past_max_seq_len_with_absolute_positions() -> None:
    model = ar_model("mqa", 50, max_seq_len=16, sliding_window=8)
    x = torch.randint(0, 50, (1, 40))
    cache = model.new_cache(1, sliding=True, slack=4)
    cached = run_in_pieces(model, x, cache, list(range(5, 40)))
    torch.testing.assert_close(cached, banded_reference(model, x, 8), atol=ATOL, rtol=0)
    assert int(cache.lengths[0]) == 40


def test_expanding_cache_overflow_is_a_clear_error() -> None:
    model = ar_model("mha", 50)
    cache = model.new_cache(1, capacity=8)
    model.step(torch.randint(0, 50, (1, 8)), cache)
    with pytest.raises(CacheFullError, match="capacity"):
        model.step(torch.randint(0, 50, (1, 1)), cache)


def test_rows_advance_independently() -> None:
    """Rows of one cache at different lengths give each row's own result."""
    model = ar_model("gqa", 50)
    a, b = torch.randint(0, 50, (1, 12)), torch.randint(0, 50, (1, 7))
    cache = model.new_cache(2)
    pad = torch.zeros(1, 5, dtype=torch.long)
    model.step(torch.cat([a[:, :10], torch.cat([b[:, :5], pad], 1)]), cache, torch.tensor([10, 5]))
    out = model.step(torch.cat([a[:, 10:11], b[:, 5:6]]), cache)
    torch.testing.assert_close(out[0, 0], model(a[:, :11])[0, -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1, 0], model(b[:, :6])[0, -1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("sliding", [False, True])
def test_rollback_forgets_rejected_tokens(sliding: bool) -> None:
    model = ar_model("gqa", 50, sliding_window=6)
    x = torch.randint(0, 50, (2, 20))
    junk = torch.randint(0, 50, (2, 4))
    cache = model.new_cache(2, sliding=sliding, slack=4)
    model.step(x[:, :12], cache)
    model.step(junk, cache)  # speculative tokens, then rejected: 3 for row 0, 1 for row 1
    cache.rollback(torch.tensor([13, 15]))
    out = model.step(torch.stack([x[0, 13:14], x[1, 15:16]]), cache)
    for row, kept in ((0, 13), (1, 15)):
        seq = torch.cat([x[row, :12], junk[row, : kept - 12], x[row, kept : kept + 1]])[None]
        full = banded_reference(model, seq, 6) if sliding else model(seq)
        torch.testing.assert_close(out[row, 0], full[0, -1], atol=ATOL, rtol=0)


def test_reset_rows_starts_a_new_sequence_in_that_row() -> None:
    model = ar_model("mha", 50)
    cache = model.new_cache(2)
    model.step(torch.randint(0, 50, (2, 9)), cache)
    cache.reset_rows([1])
    fresh = torch.randint(0, 50, (1, 4))
    out = model.step(torch.cat([torch.randint(0, 50, (1, 4)), fresh]), cache)
    torch.testing.assert_close(out[1], model(fresh)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize(("attention", "groups"), [("mha", 4), ("gqa", 2), ("mqa", 1)])
def test_cache_holds_only_kv_heads(attention: str, groups: int) -> None:
    model = ar_model(attention, 50)
    cache = model.new_cache(3, capacity=40)
    per_layer = 2 * groups * 40 * (32 // 4) * 4  # 2 x G x S x (D/H) x bytes, batch 1
    assert cache.nbytes() == 3 * per_layer * len(model.layers)
    assert cache.layers[0].k.shape == (3, groups, 40, 8)
