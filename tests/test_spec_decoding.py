"""Speculative decoding: exactness against the target alone (greedy: token for token;
sampling: a chi-square test against the target's exact distribution), cache contents,
statistics, the specification's example, and the speedup formula."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from model_core.configs import AutoregressiveDecodeConfig, FFNConfig, TransformerModelConfig
from model_core.sampling import SamplingParams, probabilities
from model_core.spec_decoding import (
    SpecDecodingConfig,
    SpecDecodingPair,
    SpeculativeStats,
    predicted_speedup,
    speculative_generate,
)
from model_core.transformer_model import AutoregressiveTransformerModel

VOCAB = 40


def token_model(
    vocab: int = VOCAB,
    embed_dim: int = 32,
    num_layers: int = 2,
    attention_type: str = "mha",
    seed: int = 0,
    input_dim: int = 2,
) -> AutoregressiveTransformerModel:
    torch.manual_seed(seed)
    return AutoregressiveTransformerModel(
        input_dim=input_dim, embed_dim=embed_dim, ffn_latent_dim=2 * embed_dim,
        num_layers=num_layers, num_heads=4 if embed_dim >= 16 else 2, vocab_size=vocab,
        attention_type=attention_type, max_seq_len=64,
        ffn_config=FFNConfig(embed_dim=embed_dim, latent_dim=2 * embed_dim),
    ).eval()  # fmt: skip


def noisy_copy(
    model: AutoregressiveTransformerModel, noise: float, seed: int = 1
) -> AutoregressiveTransformerModel:
    """A draft that agrees with `model` often but not always: its weights plus noise."""
    copy = AutoregressiveTransformerModel(model.config).eval()
    copy.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(noise * p.abs().mean() * torch.randn(p.shape, generator=gen))
    return copy


def padded_prompts(lengths: list[int], vocab: int = VOCAB) -> tuple[Tensor, Tensor]:
    lens = torch.tensor(lengths)
    tokens = torch.randint(0, vocab, (len(lengths), max(lengths)))
    tokens[torch.arange(max(lengths)) >= lens[:, None]] = 0  # padding (any value)
    return tokens, lens


def check_stats(stats: SpeculativeStats, max_new: int, draft_steps: int) -> None:
    assert (stats.accepted <= stats.proposed).all()
    assert (stats.proposed <= draft_steps * stats.rounds).all()
    assert (stats.rejected <= stats.rounds).all()
    # Each round yields accepted + 1 tokens; the last one may overshoot by at most g.
    produced = stats.accepted + stats.rounds
    assert (produced >= max_new).all() and (produced <= max_new + draft_steps).all()


# --- greedy: token for token the target's own greedy output -------------------------------


@pytest.mark.parametrize("draft_kind", ["noisy_copy", "small_mqa"])
def test_greedy_batched_matches_target_alone(draft_kind: str) -> None:
    target = token_model(seed=0)
    draft = (
        noisy_copy(target, 0.35)
        if draft_kind == "noisy_copy"
        else token_model(embed_dim=16, num_layers=1, attention_type="mqa", seed=5)
    )
    tokens, lengths = padded_prompts([9, 3, 6, 1, 7])
    max_new, g = 24, 4
    out, stats = speculative_generate(target, draft, tokens, max_new, g, lengths=lengths)
    assert out.shape == (5, max_new)
    assert torch.equal(out, target.generate(tokens, max_new, lengths=lengths))
    for b, n in enumerate(lengths.tolist()):
        alone = target.generate(tokens[b : b + 1, :n], max_new)
        assert torch.equal(out[b : b + 1], alone), f"row {b}"
    check_stats(stats, max_new, g)
    if draft_kind == "noisy_copy":  # rows really advanced by different amounts
        assert len(set(stats.accepted.tolist())) > 1, stats.accepted
        assert 0 < stats.acceptance_rate < 1


def test_greedy_soft_prompt_matches_target() -> None:
    target = token_model(seed=0)
    draft = noisy_copy(target, 0.3)
    values = torch.randn(3, 5, 2)  # float input: a soft prompt through input_proj
    lengths = torch.tensor([5, 2, 4])
    out, _ = speculative_generate(target, draft, values, 15, 3, lengths=lengths)
    assert torch.equal(out, target.generate(values, 15, lengths=lengths))


def test_greedy_moe_target_matches_target() -> None:
    """MoE routing in eval mode is per token, so a g + 1-token verification step routes
    exactly as single steps do."""
    torch.manual_seed(0)
    target = AutoregressiveTransformerModel(
        input_dim=2, embed_dim=32, ffn_latent_dim=64, num_layers=2, num_heads=4,
        vocab_size=VOCAB, max_seq_len=64,
        ffn_config=FFNConfig(embed_dim=32, latent_dim=64, use_moe=True, num_experts=4, topk=2),
    ).eval()  # fmt: skip
    draft = token_model(embed_dim=16, num_layers=1, attention_type="mqa", seed=5)
    tokens, lengths = padded_prompts([8, 3, 5, 1])
    out, _ = speculative_generate(target, draft, tokens, 16, 4, lengths=lengths)
    assert torch.equal(out, target.generate(tokens, 16, lengths=lengths))
    out, stats = speculative_generate(target, target, tokens, 16, 4, lengths=lengths)
    assert torch.equal(out, target.generate(tokens, 16, lengths=lengths))
    assert stats.acceptance_rate == 1.0


def test_draft_equal_to_target_accepts_everything() -> None:
    target = token_model(seed=0)
    tokens, lengths = padded_prompts([6, 2, 4])
    max_new, g = 17, 3
    out, stats = speculative_generate(target, target, tokens, max_new, g, lengths=lengths)
    assert torch.equal(out, target.generate(tokens, max_new, lengths=lengths))
    assert stats.acceptance_rate == 1.0 and stats.alpha == 1.0
    assert int(stats.rejected.sum()) == 0
    assert stats.rounds.tolist() == [math.ceil(max_new / (g + 1))] * 3
    # Sampling from identical models: p == q up to rounding, so (almost) nothing rejected.
    gen = torch.Generator().manual_seed(0)
    _, sampled = speculative_generate(
        target, target, tokens, max_new, g, temperature=1.0, generator=gen, lengths=lengths
    )
    assert sampled.acceptance_rate > 0.95


# --- the caches hold exactly the accepted sequence ---------------------------------------


Log = list[tuple[str, Tensor, Tensor, Tensor, Tensor]]


def record_steps(name: str, model: AutoregressiveTransformerModel, log: Log) -> None:
    """Wrap `model.step` to log (name, row lengths before, inputs, row counts, outputs)."""
    step: Callable[..., Tensor] = model.step

    def logged(x: Tensor, cache: Any, lengths: Tensor | None = None) -> Tensor:
        before = cache.lengths.clone()
        out = step(x, cache, lengths)
        n = torch.full((x.shape[0],), x.shape[1]) if lengths is None else lengths.clone()
        log.append((name, before, x.clone(), n, out.clone()))
        return out

    model.step = logged  # type: ignore[method-assign]


def test_caches_hold_the_accepted_sequence() -> None:
    """Replays every cached step of both models. Each step's outputs equal an uncached
    forward over what the log says the cache holds plus the step's inputs (so rollback
    really forgets); the target only ever holds accepted tokens; and each round's first
    draft step starts from a cache holding exactly the accepted tokens and feeds the
    accepted continuation (the new token, after the last proposal if all were accepted)."""
    target = token_model(seed=0)
    draft = noisy_copy(target, 0.5)
    tokens, lengths = padded_prompts([5, 2, 4])
    log: Log = []
    record_steps("target", target, log)
    record_steps("draft", draft, log)
    gen = torch.Generator().manual_seed(3)
    max_new = 16
    out, stats = speculative_generate(
        target, draft, tokens, max_new, 3, temperature=1.0, generator=gen, lengths=lengths
    )
    assert int(stats.rejected.sum()) > 0 and int(stats.accepted.sum()) > 0
    models = {"target": target, "draft": draft}
    held: dict[str, list[list[int]]] = {"target": [[], [], []], "draft": [[], [], []]}
    previous = ""
    feed_steps = 0
    for name, before, x, n, step_out in log:
        round_start = name == "draft" and previous != "draft"
        previous = name
        for b in range(x.shape[0]):
            if n[b] == 0:
                continue
            sequence = torch.cat([tokens[b, : lengths[b]], out[b]]).tolist()
            h, new = int(before[b]), x[b, : n[b]].tolist()
            history = held[name][b][:h]  # what this cache holds, by position
            if name == "target" or round_start:
                assert history == sequence[:h], (name, b)
            if round_start and h > 0:
                assert new == sequence[h : h + len(new)], b
                feed_steps += 1
            with torch.no_grad():
                ref = models[name](torch.tensor([history + new]))[0, h:]
            torch.testing.assert_close(step_out[b, : n[b]], ref, atol=1e-4, rtol=1e-4)
            held[name][b] = history + new
    assert feed_steps > 3


# --- sampling: the target's distribution, exactly -----------------------------------------


def exact_two_token_joint(
    model: AutoregressiveTransformerModel, prompt: Tensor, params: SamplingParams
) -> Tensor:
    """P(first, second generated token) under target-only sampling: `(V, V)`."""
    vocab = model.config.vocab_size
    with torch.no_grad():
        first = probabilities(model(prompt)[0, -1], params)
        both = torch.cat([prompt.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
        second = probabilities(model(both)[:, -1], params)
    return first[:, None] * second


def chi_square_pvalue(counts: Tensor, probs: Tensor) -> float:
    """Pearson's test of `counts` against `probs` (cells with expected count < 5 pooled);
    0 if any sample falls where `probs` is 0."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    if counts[probs == 0].sum() > 0:
        return 0.0
    expected = probs * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big & (probs > 0)].sum()[None]])
    exp = torch.cat([expected[big], expected[~big & (probs > 0)].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


@pytest.mark.parametrize(
    ("params", "draft_steps"),
    [(SamplingParams(1.0), 1), (SamplingParams(1.0), 2), (SamplingParams(1.0, top_k=3), 2)],
)
def test_sampling_matches_target_distribution(params: SamplingParams, draft_steps: int) -> None:
    vocab, samples = 6, 4000
    target = token_model(vocab, embed_dim=16, num_layers=1, seed=1)
    with torch.no_grad():
        target.output_proj.weight.mul_(2.0)  # sharper, so the two models differ clearly
    draft = noisy_copy(target, 0.6, seed=2)
    prompt = torch.tensor([[1, 4, 2]])
    p_target = exact_two_token_joint(target, prompt, params)
    p_draft = exact_two_token_joint(draft, prompt, params)
    assert 0.5 * (p_target - p_draft).abs().sum() > 0.3  # the draft alone is far off

    def histogram(out: Tensor) -> Tensor:
        return torch.bincount(out[:, 0] * vocab + out[:, 1], minlength=vocab * vocab)

    gen = torch.Generator().manual_seed(123)
    out, stats = speculative_generate(
        target, draft, prompt.expand(samples, -1), 3, draft_steps,
        params.temperature, params.top_k, params.top_p, generator=gen,
    )  # fmt: skip
    assert 0.2 < stats.acceptance_rate < 0.9  # both accept and reject paths are exercised
    counts = histogram(out)
    assert chi_square_pvalue(counts, p_target) > 1e-3
    # The test has power: the same samples reject the draft's distribution, and samples
    # from the draft alone (what "always accept" would return) reject the target's.
    assert chi_square_pvalue(counts, p_draft) < 1e-9
    draft_only = draft.generate(
        prompt.expand(samples, -1), 2, temperature=params.temperature, top_k=params.top_k,
        generator=torch.Generator().manual_seed(123),
    )  # fmt: skip
    assert chi_square_pvalue(histogram(draft_only), p_target) < 1e-9


# --- the specification's example, statistics, validation, the speedup formula -------------


def test_spec_example_pair() -> None:
    draft_config = TransformerModelConfig(
        name="draft", input_dim=1, embed_dim=64, ffn_latent_dim=128, num_layers=2,
        num_heads=4, output_dim=1, vocab_size=1000, attention_type="mqa",
        apply_causal_mask=True, autoregressive_mode=True,
        ffn_config=FFNConfig(embed_dim=64, latent_dim=128, use_moe=False),
        decode_config=AutoregressiveDecodeConfig(expanding_context=True, use_kv_cache=True),
    )  # fmt: skip
    target_config = TransformerModelConfig(
        name="target", input_dim=1, embed_dim=1024, ffn_latent_dim=4096, num_layers=8,
        num_heads=8, output_dim=1, vocab_size=1000, attention_type="mha",
        apply_causal_mask=True, autoregressive_mode=True,
        ffn_config=FFNConfig(embed_dim=1024, latent_dim=4096, use_moe=False),
    )  # fmt: skip
    spec_config = SpecDecodingConfig(
        draft_config=draft_config, target_config=target_config, draft_steps=5
    )
    model = SpecDecodingPair(spec_config)
    input_sequence = torch.randn(2, 3, 1)
    output = model(input_sequence, 20)
    assert output.shape == torch.Size([2, 20])
    assert output.dtype == torch.long and int(output.min()) >= 0 and int(output.max()) < 1000
    assert torch.equal(output, model.target.generate(input_sequence, 20))
    assert model.last_stats is not None
    check_stats(model.last_stats, 20, 5)


@pytest.mark.parametrize("max_new", [1, 2, 7, 13])
def test_stats_are_consistent(max_new: int) -> None:
    target = token_model(seed=0)
    draft = noisy_copy(target, 0.4)
    tokens, lengths = padded_prompts([4, 7, 2, 5])
    g = 3
    gen = torch.Generator().manual_seed(1)
    out, stats = speculative_generate(
        target, draft, tokens, max_new, g, temperature=0.8, generator=gen, lengths=lengths
    )
    assert out.shape == (4, max_new)
    check_stats(stats, max_new, g)
    if max_new == 1:  # the prefill's p gives the only token: no proposals
        assert stats.rounds.tolist() == [1] * 4 and int(stats.proposed.sum()) == 0
    assert 0.0 <= stats.acceptance_rate <= stats.alpha <= 1.0
    expected_tpr = (stats.accepted.sum() + stats.rounds.sum()) / stats.rounds.sum()
    assert stats.tokens_per_round == pytest.approx(float(expected_tpr))


def test_zero_new_tokens() -> None:
    target = token_model(seed=0)
    out, stats = speculative_generate(target, target, torch.zeros(2, 3, dtype=torch.long), 0, 2)
    assert out.shape == (2, 0) and int(stats.rounds.sum()) == 0


def test_validation_errors() -> None:
    target = token_model(seed=0)
    other_vocab = token_model(vocab=VOCAB + 1, seed=0)
    values_model = AutoregressiveTransformerModel(
        input_dim=2, output_dim=2, embed_dim=16, ffn_latent_dim=32, num_layers=1, num_heads=2
    )
    prompt = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, other_vocab, prompt, 4, 2)
    with pytest.raises(ValueError, match="token models"):
        speculative_generate(target, values_model, prompt, 4, 2)
    with pytest.raises(ValueError, match="draft_steps"):
        speculative_generate(target, target, prompt, 4, 0)
    with pytest.raises(ValueError, match="max_seq_len"):
        speculative_generate(target, target, prompt, 64, 2)

    def cfg(vocab: int | None) -> TransformerModelConfig:
        return TransformerModelConfig(
            embed_dim=16, ffn_latent_dim=32, num_heads=2, vocab_size=vocab,
            autoregressive_mode=True,
        )  # fmt: skip

    with pytest.raises(ValueError, match="vocab_size"):
        SpecDecodingPair(SpecDecodingConfig(cfg(10), cfg(11)))
    with pytest.raises(ValueError, match="token model"):
        SpecDecodingPair(SpecDecodingConfig(cfg(None), cfg(10)))
    with pytest.raises(ValueError, match="draft_steps"):
        SpecDecodingPair(SpecDecodingConfig(cfg(10), cfg(10), draft_steps=0))


def test_predicted_speedup() -> None:
    assert predicted_speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)
    assert predicted_speedup(1.0, 4, 0.1) == pytest.approx(5 / 1.4)
    assert predicted_speedup(1 - 1e-9, 4, 0.1) == pytest.approx(5 / 1.4, rel=1e-6)
    # Leviathan et al. (2023), Figure: alpha 0.8, gamma 4 at c=0 gives ~3.36 tokens/step.
    assert predicted_speedup(0.8, 4, 0.0) == pytest.approx((1 - 0.8**5) / 0.2)
    with pytest.raises(ValueError):
        predicted_speedup(1.5, 2, 0.1)
