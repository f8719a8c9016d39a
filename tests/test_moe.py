"""Mixture of experts against oracles computed by hand, token by token: routing (softmax,
top-k, renormalised weights), capacity (first come first served in token order, the rest
to the overflow expert), the load-balancing loss, and padding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from model_core.configs import FFNConfig
from model_core.ffn import FeedForward
from model_core.moe import MOE
from model_core.transformer_model import AutoregressiveTransformerModel

D, LATENT, E = 8, 16, 4
ATOL = 1e-5
Route = list[tuple[int, float]]  # a token's (expert, renormalised weight), best first


def expert_by_hand(ffn: FeedForward, x: Tensor) -> Tensor:
    """Linear -> ReLU -> Linear from the weights."""
    hidden = torch.relu(x @ ffn.linear1.weight.T + ffn.linear1.bias)
    return hidden @ ffn.linear2.weight.T + ffn.linear2.bias


def routes_by_hand(moe: MOE, x: Tensor) -> list[Route]:
    """Each token of `x` `(N, D)`: softmax over the router logits, top-k, renormalised."""
    weight = moe.router.weight.detach().double()
    routes = []
    for row in x.double():
        logits = (weight @ row).tolist()
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        probs = [v / sum(exps) for v in exps]
        chosen = sorted(range(moe.num_experts), key=lambda e: -probs[e])[: moe.topk]
        total = sum(probs[e] for e in chosen)
        routes.append([(e, probs[e] / total) for e in chosen])
    return routes


def kept_by_hand(routes: list[Route], capacity: int) -> list[list[bool]]:
    """Which assignments fit: each expert takes the first `capacity` in token order."""
    used: dict[int, int] = {}
    kept = []
    for route in routes:
        row = []
        for expert, _ in route:
            row.append(used.get(expert, 0) < capacity)
            used[expert] = used.get(expert, 0) + row[-1]
        kept.append(row)
    return kept


def mixture_by_hand(moe: MOE, x: Tensor, routes: list[Route], kept: list[list[bool]]) -> Tensor:
    """sum over a token's assignments of weight * (its expert, or the overflow expert)."""
    out = torch.zeros_like(x)
    for t, (route, fits) in enumerate(zip(routes, kept, strict=True)):
        for (expert, weight), fit in zip(route, fits, strict=True):
            ffn = moe.experts[expert] if fit else moe.overflow_expert
            out[t] += weight * expert_by_hand(ffn, x[t])
    return out


def record_inputs(module: nn.Module) -> list[Tensor]:
    """The inputs of every forward call of `module`, as they come."""
    seen: list[Tensor] = []
    module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
    return seen


def token_ids(calls: list[Tensor], x: Tensor) -> list[int]:
    """Which rows of `x` `(N, D)` the recorded inputs were, in the order they came."""
    rows = torch.cat(calls) if calls else x[:0]
    return [int((x == row).all(dim=-1).nonzero()[0]) for row in rows]


def biased_moe(
    topk: int, capacity: int, alpha: float = 0.01, capacity_at_inference: bool = False
) -> tuple[MOE, Tensor]:
    """A MoE whose router favours expert 0, and 12 tokens `(12, D)` that overflow it:
    feature 0 of every token is 1, and only expert 0's router weight on it is not 0."""
    moe = MOE(D, LATENT, E, capacity, alpha, topk, capacity_at_inference=capacity_at_inference)
    x = torch.randn(12, D)
    x[:, 0] = 1.0
    with torch.no_grad():
        moe.router.weight.mul_(2.0)
        moe.router.weight[:, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    return moe, x


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("mode", ["train", "eval+capacity_at_inference"])
def test_capacity_sends_assignments_past_it_to_the_overflow_expert(topk: int, mode: str) -> None:
    capacity = 2
    moe, x = biased_moe(topk, capacity, capacity_at_inference=mode != "train")
    moe.train(mode == "train")
    routes = routes_by_hand(moe, x)
    kept = kept_by_hand(routes, capacity)
    overflowed = [t for t, fits in enumerate(kept) if not all(fits)]
    assert len(overflowed) >= 4  # the router bias does overflow expert 0
    expert_calls = [record_inputs(expert) for expert in moe.experts]
    overflow_calls = record_inputs(moe.overflow_expert)

    with torch.no_grad():
        out, _ = moe(x)

    # The tokens each expert keeps, in token order.
    kept_tokens: list[list[int]] = [[] for _ in range(E)]
    for t, (route, fits) in enumerate(zip(routes, kept, strict=True)):
        for (expert, _), fit in zip(route, fits, strict=True):
            if fit:
                kept_tokens[expert].append(t)
    assert max(map(len, kept_tokens)) == capacity
    for calls, tokens in zip(expert_calls, kept_tokens, strict=True):
        assert token_ids(calls, x) == tokens
    # The overflow expert sees each token with an assignment past capacity once, in order.
    assert token_ids(overflow_calls, x) == overflowed
    stats = moe.last_stats
    assert stats is not None
    assert stats.tokens_per_expert.tolist() == [len(tokens) for tokens in kept_tokens]
    assert int(stats.overflow_tokens) == sum(not f for fits in kept for f in fits)
    assert int(stats.total_assignments) == 12 * topk
    torch.testing.assert_close(out, mixture_by_hand(moe, x, routes, kept), atol=ATOL, rtol=0)


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("mode", ["train, capacity never reached", "eval, capacity 1"])
def test_without_overflow_output_is_the_dense_mixture(topk: int, mode: str) -> None:
    training = mode.startswith("train")
    moe = MOE(D, LATENT, E, capacity=100 if training else 1, topk=topk).train(training)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        out, _ = moe(x)
    flat = x.reshape(-1, D)
    routes = routes_by_hand(moe, flat)
    everything = [[True] * topk for _ in routes]
    expected = mixture_by_hand(moe, flat, routes, everything)
    torch.testing.assert_close(out.reshape(-1, D), expected, atol=ATOL, rtol=0)
    assert moe.last_stats is not None and int(moe.last_stats.overflow_tokens) == 0


def aux_loss_by_hand(moe: MOE, x: Tensor, token_mask: Tensor) -> float:
    """alpha * E * sum_i f_i * P_i over the real tokens, in numpy (float64): f_i the share
    of top-k assignments to expert i (before capacity), P_i its mean router probability."""
    weight = moe.router.weight.detach().double().numpy()
    real = x.reshape(-1, D).double().numpy()[token_mask.reshape(-1).numpy()]
    logits = real @ weight.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    counts = np.zeros(moe.num_experts)
    for p in probs:
        for expert in np.argsort(-p)[: moe.topk]:
            counts[expert] += 1
    f = counts / (len(real) * moe.topk)
    return moe.alpha * moe.num_experts * float((f * probs.mean(axis=0)).sum())


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_aux_loss_is_the_switch_balance_loss(topk: int, padded: bool) -> None:
    moe, tokens = biased_moe(topk, capacity=1, alpha=0.3)  # capacity must not change f
    x = tokens.view(2, 6, D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    if padded:
        mask[0, 4:] = False
        mask[1, 1:] = False
    _, aux = moe(x, mask if padded else None)
    assert aux.dim() == 0
    assert aux.item() == pytest.approx(aux_loss_by_hand(moe, x, mask), rel=1e-5)
    aux.backward()
    grad = moe.router.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # It trains the router only (through P_i); the experts get no gradient from it.
    assert all(p.grad is None for p in moe.experts.parameters())


@pytest.mark.parametrize("topk", [1, 2])
def test_uniform_router_gives_aux_loss_alpha(topk: int) -> None:
    # P_i = 1/E for every expert, so alpha * E * sum_i f_i / E = alpha whatever the ties do.
    moe = MOE(D, LATENT, E, capacity=3, alpha=0.25, topk=topk)
    with torch.no_grad():
        moe.router.weight.zero_()
    _, aux = moe(torch.randn(3, 7, D))
    assert aux.item() == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("topk", [1, 2])
def test_padding_gets_zero_output_and_takes_no_capacity(topk: int) -> None:
    moe, tokens = biased_moe(topk, capacity=2)
    x = tokens.view(2, 6, D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, :3] = False  # padding first in token order: it would take expert 0's capacity
    mask[1, 5] = False
    expert_calls = [record_inputs(m) for m in [*moe.experts, moe.overflow_expert]]
    with torch.no_grad():
        out, _ = moe(x, mask)
    padded_stats = moe.last_stats
    seen = {t for calls in expert_calls for t in token_ids(calls, tokens)}
    assert not seen & set((~mask).reshape(-1).nonzero().flatten().tolist())
    assert torch.equal(out[~mask], torch.zeros(int((~mask).sum()), D))

    with torch.no_grad():
        alone, _ = moe(x[mask])  # the real tokens only, in the same order
    torch.testing.assert_close(out[mask], alone, atol=1e-6, rtol=0)
    assert padded_stats is not None and moe.last_stats is not None
    assert padded_stats.to_dict() == moe.last_stats.to_dict()
    assert int(padded_stats.total_assignments) == int(mask.sum()) * topk


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="topk"):
        MOE(D, LATENT, num_experts=2, capacity=4, topk=3)
    with pytest.raises(ValueError, match="topk"):
        MOE(D, LATENT, num_experts=2, capacity=4, topk=0)
    with pytest.raises(ValueError, match="capacity"):
        MOE(D, LATENT, num_experts=2, capacity=0)


# ---- MoE inside a model ----------------------------------------------------------------


def moe_model() -> AutoregressiveTransformerModel:
    ffn = FFNConfig(embed_dim=32, latent_dim=64, use_moe=True, num_experts=4, capacity=8, topk=2)
    return AutoregressiveTransformerModel(
        vocab_size=50, embed_dim=32, ffn_latent_dim=64, num_layers=2, num_heads=4,
        max_seq_len=64, ffn_config=ffn,
    ).eval()  # fmt: skip


def test_moe_model_cached_decode_equals_full_forward() -> None:
    model = moe_model()
    x = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2)
        stepped = torch.cat([model.step(x[:, t : t + 1], cache) for t in range(12)], dim=1)
    torch.testing.assert_close(stepped, full, atol=ATOL, rtol=0)


def test_moe_model_padded_batch_equals_each_row_alone() -> None:
    model = moe_model()
    x = torch.randint(0, 50, (3, 12))
    lengths = torch.tensor([12, 7, 3])
    with torch.no_grad():
        batched = model(x, lengths)
        stats = model.moe_stats()
        for b, n in enumerate(lengths.tolist()):
            alone = model(x[b : b + 1, :n])
            torch.testing.assert_close(batched[b : b + 1, :n], alone, atol=ATOL, rtol=0)
    # One entry per MoE layer; padding is not routed, and eval applies no capacity.
    assert len(stats) == 2
    for layer in stats:
        assert len(layer["tokens_per_expert"]) == 4  # type: ignore[arg-type]
        assert sum(layer["tokens_per_expert"]) == (12 + 7 + 3) * 2  # type: ignore[arg-type]
        assert layer["overflow_tokens"] == 0


def test_moe_model_aux_loss_trains_every_router() -> None:
    model = moe_model().train()
    model(torch.randint(0, 50, (2, 10)))
    aux = model.aux_loss
    assert aux.dim() == 0 and aux.item() > 0
    aux.backward()
    routers = [layer.ffn.net.router.weight for layer in model.layers]
    assert len(routers) == 2
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in routers)
