"""A right-padded batch of different lengths equals each sequence run alone."""

from __future__ import annotations

import pytest
import torch

from model_core.generation import generate
from tests.model_factories import ar_model, inputs, regression_model, seq2seq_model

LENGTHS = [9, 4, 1, 6]
ATOL = 1e-5


def pad_batch(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with garbage (not zeros) so that leaking padding would show."""
    longest = max(s.shape[0] for s in seqs)
    out = []
    for s in seqs:
        filler = s[:1].expand(longest - s.shape[0], *s.shape[1:]) * 0 + 7
        out.append(torch.cat([s, filler.to(s.dtype)]))
    return torch.stack(out), torch.tensor([s.shape[0] for s in seqs])


@pytest.mark.parametrize("moe", [False, True])
@pytest.mark.parametrize("attention", ["mha", "gqa"])
def test_regression_padded_equals_alone(attention: str, moe: bool) -> None:
    from tests.model_factories import ffn

    model = regression_model(attention, ffn_config=ffn(moe))
    seqs = [torch.randn(n, 3) for n in LENGTHS]
    batch, lengths = pad_batch(seqs)
    out = model(batch, lengths)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(out[row], model(seq[None])[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("vocab", [None, 40])
@pytest.mark.parametrize("attention", ["mqa", "gqa"])
def test_autoregressive_padded_equals_alone(attention: str, vocab: int | None) -> None:
    model = ar_model(attention, vocab)
    seqs = [inputs(vocab, 1, n)[0] for n in LENGTHS]
    batch, lengths = pad_batch(seqs)
    out = model(batch, lengths)
    for row, seq in enumerate(seqs):
        n = seq.shape[0]
        torch.testing.assert_close(out[row, :n], model(seq[None])[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("vocab", [None, 40])
def test_padded_prefill_then_decode_equals_alone(vocab: int | None) -> None:
    """The padded cached path: prefill with lengths, then greedy decode per row."""
    model = ar_model("gqa", vocab)
    seqs = [inputs(vocab, 1, n)[0] for n in LENGTHS]
    batch, lengths = pad_batch(seqs)
    together = generate(model, batch, 5, lengths=lengths)
    for row, seq in enumerate(seqs):
        alone = generate(model, seq[None], 5)
        torch.testing.assert_close(together[row], alone[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("vocab", [None, 40])
def test_encoder_decoder_padded_source_and_target_equal_alone(vocab: int | None) -> None:
    model = seq2seq_model("gqa", vocab)
    sources = [inputs(vocab, 1, n)[0] for n in LENGTHS]
    targets = [inputs(vocab, 1, n)[0] for n in (3, 8, 2, 5)]
    src, src_len = pad_batch(sources)
    tgt, tgt_len = pad_batch(targets)
    out = model(src, tgt, src_len, tgt_len)
    for row in range(len(sources)):
        alone = model(sources[row][None], targets[row][None])[0]
        n = targets[row].shape[0]
        torch.testing.assert_close(out[row, :n], alone, atol=ATOL, rtol=0)


def test_encoder_decoder_padded_cached_decode_equals_alone() -> None:
    model = seq2seq_model("mqa", 40)
    sources = [torch.randint(0, 40, (n,)) for n in LENGTHS]
    src, src_len = pad_batch(sources)
    start = torch.zeros(len(sources), 1, dtype=torch.long)
    together = model.generate(src, start, 6, source_lengths=src_len)
    for row, source in enumerate(sources):
        alone = model.generate(source[None], start[:1], 6)
        assert together[row].tolist() == alone[0].tolist()


def test_invalid_lengths_are_rejected() -> None:
    model = ar_model("mha", 40)
    x = torch.randint(0, 40, (2, 5))
    with pytest.raises(ValueError, match="between 1 and 5"):
        model(x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="shape"):
        model(x, torch.tensor([5]))
