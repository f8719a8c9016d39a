"""Generation and sampling: cached generate equals the uncached greedy loop; sampling
follows temperature / top-k / top-p exactly and is reproducible with a seed."""

from __future__ import annotations

import pytest
import torch

from model_core.generation import generate
from model_core.sampling import SamplingParams, probabilities, sample
from tests.model_factories import ar_model, seq2seq_model


@pytest.mark.parametrize("attention", ["mha", "mqa", "gqa"])
def test_greedy_generate_equals_uncached_argmax_loop(attention: str) -> None:
    model = ar_model(attention, 40)
    x = torch.randint(0, 40, (2, 7))
    new = generate(model, x, 10)
    seq = x
    for _ in range(10):
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert new.tolist() == seq[:, 7:].tolist()


def test_value_generation_feeds_outputs_back() -> None:
    model = ar_model("gqa", None)
    x = torch.randn(2, 5, 3)
    new = model.generate(x, 4)
    seq = x
    for _ in range(4):
        seq = torch.cat([seq, model(seq)[:, -1:]], 1)
    torch.testing.assert_close(new, seq[:, 5:], atol=1e-5, rtol=0)


def test_generate_next_token_shapes() -> None:
    assert ar_model("mha", 40).generate_next_token(torch.randint(0, 40, (3, 5))).shape == (3, 1)
    assert ar_model("mha", None).generate_next_token(torch.randn(3, 5, 3)).shape == (3, 1, 3)


def test_seq2seq_greedy_generate_equals_uncached_loop() -> None:
    model = seq2seq_model("gqa", 30)
    src = torch.randint(0, 30, (2, 8))
    start = torch.full((2, 1), 1)
    new = model.generate(src, start, 7)
    tgt = start
    for _ in range(7):
        tgt = torch.cat([tgt, model(src, tgt)[:, -1].argmax(-1, keepdim=True)], 1)
    assert new.tolist() == tgt[:, 1:].tolist()


def test_sampling_is_reproducible_with_a_seeded_generator() -> None:
    model = ar_model("gqa", 40)
    x = torch.randint(0, 40, (2, 4))
    runs = [
        generate(model, x, 12, temperature=1.0, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_generate_past_max_seq_len_needs_sliding() -> None:
    model = ar_model("gqa", 40, max_seq_len=16)
    x = torch.randint(0, 40, (1, 10))
    with pytest.raises(ValueError, match="sliding"):
        generate(model, x, 10)
    assert generate(model, x, 10, sliding=True).shape == (1, 10)


def test_temperature_scales_logits() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    probs = probabilities(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, -1))


def test_top_k_keeps_k_most_likely() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    probs = probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    expected = torch.softmax(torch.tensor([3.0, 2.0]), -1)
    torch.testing.assert_close(probs[0, [1, 3]], expected)
    assert probs[0, [0, 2]].sum() == 0


def test_top_p_keeps_smallest_prefix_reaching_p() -> None:
    probs_in = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    probs = probabilities(probs_in.log(), SamplingParams(temperature=1.0, top_p=0.8))
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    probs = probabilities(probs_in.log(), SamplingParams(temperature=1.0, top_p=0.81))
    torch.testing.assert_close(probs[0, :3], probs_in[0, :3] / 0.95)


def test_sample_frequencies_follow_probabilities() -> None:
    logits = torch.tensor([0.1, 0.5, 1.5, -1.0]).log_softmax(-1).expand(20000, 4)
    gen = torch.Generator().manual_seed(3)
    draws = sample(logits, temperature=1.0, generator=gen)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.015, rtol=0)


def test_greedy_is_argmax_and_invalid_params_are_rejected() -> None:
    logits = torch.randn(5, 9)
    assert torch.equal(sample(logits), logits.argmax(-1))
    for bad in (dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_generated_tokens_are_normal_tensors_usable_in_autograd() -> None:
    """Generation runs in inference mode but must not hand back inference tensors."""
    model = ar_model("gqa", 40).train()
    new = generate(model, torch.randint(0, 40, (1, 4)), 3)
    assert not new.is_inference()
    model(new).sum().backward()  # would raise for an inference tensor
