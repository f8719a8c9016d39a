"""The specification's stateful cache API (`use_kv_cache=True`) equals recomputation."""

from __future__ import annotations

import torch

from tests.model_factories import ar_model, seq2seq_model

ATOL = 1e-5


def test_stateful_expanding_context_appends() -> None:
    model = ar_model("gqa", None, use_kv_cache=True)
    oracle = ar_model("gqa", None)
    oracle.load_state_dict(model.state_dict())
    x = torch.randn(1, 14, 3)
    first = model(x[:, :10], expanding_context=True)
    steps = [model(x[:, i : i + 1], expanding_context=True) for i in range(10, 14)]
    full = oracle(x)
    torch.testing.assert_close(first, full[:, :10], atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 10:], atol=ATOL, rtol=0)


def test_stateful_sliding_window_runs_past_max_seq_len() -> None:
    model = ar_model("mqa", 30, use_kv_cache=True, max_seq_len=8)
    x = torch.randint(0, 30, (2, 20))
    outs = [model(x[:, :4], expanding_context=False)]
    outs += [model(x[:, i : i + 1], expanding_context=False) for i in range(4, 20)]
    assert torch.cat(outs, 1).shape == (2, 20, 30)
    assert int(model._stateful.cache.lengths[0]) == 20


def test_reset_cache_starts_over() -> None:
    model = ar_model("mha", 30, use_kv_cache=True)
    x = torch.randint(0, 30, (1, 6))
    a = model(x, expanding_context=True)
    model.reset_cache()
    torch.testing.assert_close(model(x, expanding_context=True), a)


def test_encoder_decoder_stateful_loop_of_the_specification() -> None:
    """The spec's loop passes the whole growing target each call: only the new suffix is
    computed, and the result equals teacher-forced recomputation."""
    model = seq2seq_model("mqa", None, use_kv_cache=True)
    oracle = seq2seq_model("mqa", None)
    oracle.load_state_dict(model.state_dict())
    source = torch.randn(1, 12, 3)
    memory = model.encode(source, expanding_context=False)
    target = torch.randn(1, 1, 3)
    for _ in range(6):
        output = model.decode(target, memory, expanding_context=True)
        expected = oracle.decode(target, memory)
        torch.testing.assert_close(output[:, -1], expected[:, -1], atol=ATOL, rtol=0)
        target = torch.cat([target, output[:, -1:, :]], dim=1)
    assert int(model._stateful.cache.lengths[0]) == 6


def test_new_encoder_output_starts_a_new_target_sequence() -> None:
    model = seq2seq_model("gqa", 20, use_kv_cache=True)
    start = torch.zeros(1, 1, dtype=torch.long)
    mem_a = model.encode(torch.randint(0, 20, (1, 5)))
    mem_b = model.encode(torch.randint(0, 20, (1, 5)))
    model.decode(start, mem_a)
    out_b = model.decode(start, mem_b)
    model.reset_cache()
    torch.testing.assert_close(out_b, model.decode(start, mem_b))
