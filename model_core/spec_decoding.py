"""Speculative decoding (Leviathan et al., 2023): a small draft model proposes, the target
model verifies, and the output is distributed exactly as the target's own sampling.

Each round the draft proposes `g` tokens one cached step at a time, sampling from
`q = sampling.probabilities(draft_logits)`. The target then runs the last accepted token
and the `g` proposals through its cache in ONE step of `g + 1` tokens, giving `p` at every
proposal and one position past them. Proposal i is accepted with probability
`min(1, p_i / q_i)`; at the first rejection a token is drawn from `normalise(max(0, p - q))`
instead, and when all `g` are accepted a bonus token is drawn from `p` at the last
position. So every round yields between 1 and `g + 1` tokens. With temperature 0 both
distributions are one-hot: acceptance is an exact match, and the output is token for token
the target's greedy output.

Batches: each row advances by its own number of accepted tokens. The caches keep one length
per row, so rejected positions are dropped with `KVCache.rollback` and the next round's
inputs (one or two tokens per row) go in as a right-padded step with per-row `lengths`.
Rows that have their `max_new_tokens` stop advancing (their steps have length 0) and the
extra tokens of their last round are discarded.

Prompts: token ids `(B, T)`, or values `(B, T, input_dim)`. The specification's example
feeds float values into token models (`vocab_size=1000, input_dim=1`): a token model reads
float input as a soft prompt through its `input_proj` (see `model_core.embedding`), and the
generated tokens are embedded by its token table, so such a prompt needs no special case
here. Both models project the prompt with their own `input_proj`.

Models should be in eval mode (MoE capacity limits apply in training mode only and would
make a `g + 1`-token verification step route differently from single steps);
`SpecDecodingPair` puts itself in eval mode when built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model_core.configs import TransformerModelConfig
from model_core.generation import last_real
from model_core.inference import inference_entry_point
from model_core.sampling import SamplingParams, probabilities, sample_from


@dataclass
class SpeculativeStats:
    """Per-row counts `(B,)` of one `speculative_generate` call.

    rounds: verification rounds the row took part in; proposed: draft tokens proposed to
    it; accepted: proposals the target accepted; rejected: rounds that ended at a rejected
    proposal (the others accepted all their proposals and drew a bonus token). Each round
    yields `accepted + 1` tokens, so a row produced `min(max_new_tokens, accepted + rounds)`.
    """

    rounds: Tensor
    proposed: Tensor
    accepted: Tensor
    rejected: Tensor

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed over the batch (proposals after a rejection count as not
        accepted)."""
        proposed = int(self.proposed.sum())
        return int(self.accepted.sum()) / proposed if proposed else 0.0

    @property
    def alpha(self) -> float:
        """Estimate of the per-token acceptance probability (Leviathan's alpha): accepted /
        proposals actually tested (those up to and including the first rejection)."""
        accepted = int(self.accepted.sum())
        tested = accepted + int(self.rejected.sum())
        return accepted / tested if tested else 1.0

    @property
    def tokens_per_round(self) -> float:
        rounds = int(self.rounds.sum())
        return (int(self.accepted.sum()) + rounds) / rounds if rounds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds.tolist(),
            "proposed": self.proposed.tolist(),
            "accepted": self.accepted.tolist(),
            "rejected": self.rejected.tolist(),
            "acceptance_rate": self.acceptance_rate,
            "alpha": self.alpha,
            "tokens_per_round": self.tokens_per_round,
        }


def predicted_speedup(alpha: float, draft_steps: int, cost_ratio: float) -> float:
    """Leviathan et al.'s expected walltime improvement: tokens per round
    `(1 - alpha^(g+1)) / (1 - alpha)` over the round's cost `g c + 1` target steps, with
    `c` = draft step time / target step time."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    g = draft_steps
    tokens = float(g + 1) if alpha >= 1.0 else (1.0 - alpha ** (g + 1)) / (1.0 - alpha)
    return tokens / (g * cost_ratio + 1.0)


def _check_models(target: Any, draft: Any) -> None:
    for role, model in (("target", target), ("draft", draft)):
        cfg = model.config
        if cfg.kind != "autoregressive" or not cfg.uses_tokens:
            raise ValueError(
                f"speculative decoding needs autoregressive token models (vocab_size set); the "
                f"{role} is a {cfg.kind} model with vocab_size={cfg.vocab_size}"
            )
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(
            f"draft and target must share a vocabulary: draft vocab_size "
            f"{draft.config.vocab_size} != target vocab_size {target.config.vocab_size}"
        )


def _verify_greedy(logits: Tensor, drafted: Tensor) -> tuple[Tensor, Tensor]:
    """Temperature 0: p and q are one-hot, so a proposal is accepted iff it is the target's
    argmax, and the token after the accepted ones is the target's argmax there (the
    residual max(0, p - q) of a rejected proposal is p itself)."""
    choice = logits.argmax(dim=-1)  # (B, g + 1)
    g = drafted.shape[1]
    n = (drafted == choice[:, :g]).long().cumprod(dim=1).sum(dim=1)
    return n, choice[torch.arange(choice.shape[0], device=choice.device), n]


def _verify_sampled(
    logits: Tensor,
    drafted: Tensor,
    q_list: list[Tensor],
    params: SamplingParams,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Leviathan et al.'s rejection sampling. logits `(B, g + 1, V)` of the target at the
    g proposals `(B, g)` and one past them; q_list: the g draft distributions `(B, V)`.
    Returns the accepted count n `(B,)` and the token that follows them `(B,)`."""
    b, g = drafted.shape
    rows = torch.arange(b, device=logits.device)
    p = probabilities(logits, params)  # (B, g + 1, V)
    q = p.new_zeros(p.shape)  # q is 0 past the proposals
    n = torch.zeros(b, dtype=torch.long, device=logits.device)
    if g:
        q[:, :g] = torch.stack(q_list, dim=1)
        index = drafted[..., None]
        ratio = (p[:, :g].gather(-1, index) / q[:, :g].gather(-1, index)).squeeze(-1)
        u = torch.rand(b, g, generator=generator, device=logits.device)
        n = (u < ratio.clamp(max=1.0)).long().cumprod(dim=1).sum(dim=1)
    # At the first rejection: normalise(max(0, p - q)); where all were accepted q is 0,
    # so this is the bonus token drawn from p one past the proposals.
    p_n = p[rows, n]
    residual = (p_n - q[rows, n]).clamp(min=0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p_n)
    return n, sample_from(residual, generator)


@inference_entry_point
def speculative_generate(
    target: Any,
    draft: Any,
    tokens: Tensor,
    max_new_tokens: int,
    draft_steps: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, SpeculativeStats]:
    """Continue `tokens` (`(B, T)` ids or `(B, T, input_dim)` values, right-padded to
    `lengths`) by `max_new_tokens` tokens distributed as `target.generate` would sample
    them: returns the new tokens `(B, max_new_tokens)` and the per-row statistics.

    Greedy (temperature 0) output equals `target.generate`'s token for token. Sampled
    output has the same distribution, but draws the `generator`'s numbers differently, so
    a seed does not reproduce `target.generate`'s sample."""
    _check_models(target, draft)
    if draft_steps < 1:
        raise ValueError(f"draft_steps must be >= 1, got {draft_steps}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    params = SamplingParams(temperature, top_k, top_p)
    b, t = tokens.shape[0], tokens.shape[1]
    device = tokens.device
    for role, model in (("target", target), ("draft", draft)):
        if t + max_new_tokens > model.config.max_seq_len:
            raise ValueError(
                f"prompt ({t}) + max_new_tokens ({max_new_tokens}) exceeds the {role}'s "
                f"max_seq_len ({model.config.max_seq_len})"
            )
    if lengths is None:
        lengths = torch.full((b,), t, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
    if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > t).any()):
        raise ValueError(f"lengths must be {b} values between 1 and {t}, got {lengths.tolist()}")

    zeros = torch.zeros(b, dtype=torch.long, device=device)
    stats = SpeculativeStats(zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone())
    if max_new_tokens == 0:
        return torch.zeros(b, 0, dtype=torch.long, device=device), stats

    # Rounds may write up to draft_steps + 1 positions past the last kept token.
    capacity = t + max_new_tokens + draft_steps + 1
    t_cache = target.new_cache(b, capacity=capacity)
    d_cache = draft.new_cache(b, capacity=capacity)
    # The prefills give the first proposal's p (target) and q (draft).
    p_head = last_real(target.step(tokens, t_cache, lengths), lengths)
    q_next = last_real(draft.step(tokens, d_cache, lengths), lengths)

    rows = torch.arange(b, device=device)
    out = torch.zeros(b, max_new_tokens + draft_steps + 1, dtype=torch.long, device=device)
    produced = zeros.clone()
    pending: Tensor | None = None  # last token kept: in the draft's cache, not the target's
    while True:
        active = produced < max_new_tokens
        act = active.long()
        # No use proposing past the longest remaining need (the last round may be target-only).
        g = min(draft_steps, int((max_new_tokens - produced)[active].max()) - 1)
        t_len0, d_len0 = t_cache.lengths.clone(), d_cache.lengths.clone()

        # Draft: g proposals, one cached step each (the last proposal is not fed yet).
        proposals, q_list = [], []
        for i in range(g):
            if params.greedy:  # q is one-hot on the argmax: no need to build it
                d = q_next.argmax(dim=-1)
            else:
                q_list.append(probabilities(q_next, params))
                d = sample_from(q_list[-1], generator)
            proposals.append(d)
            if i + 1 < g:
                q_next = draft.step(d[:, None], d_cache, act)[:, -1]
        drafted = (
            torch.stack(proposals, dim=1)
            if g
            else torch.zeros(b, 0, dtype=torch.long, device=device)
        )

        # Target: one step over [pending, proposals] -> p at all g + 1 positions.
        if pending is None:  # first round: p at the first proposal comes from the prefill
            logits = p_head[:, None]
            if g:
                logits = torch.cat([logits, target.step(drafted, t_cache, act * g)], dim=1)
        else:
            step_in = torch.cat([pending[:, None], drafted], dim=1)
            logits = target.step(step_in, t_cache, act * (g + 1))
        if params.greedy:
            n, next_token = _verify_greedy(logits, drafted)
        else:
            n, next_token = _verify_sampled(logits, drafted, q_list, params, generator)

        # Write each active row's n accepted proposals and the new token.
        new = torch.cat([drafted, zeros[:, None]], dim=1)
        new[rows, n] = next_token
        offsets = torch.arange(g + 1, device=device)
        keep = (offsets <= n[:, None]) & active[:, None]
        cols = produced[:, None] + offsets
        out[rows[:, None].expand_as(cols)[keep], cols[keep]] = new[keep]
        produced = produced + (n + 1) * act
        stats.rounds += act
        stats.proposed += g * act
        stats.accepted += n * act
        stats.rejected += (n < g).long() * act

        # Drop rejected positions: the target keeps [pending, accepted], the draft keeps
        # the accepted proposals it has seen (it never saw the last one).
        fed = 0 if pending is None else 1
        t_cache.rollback(t_len0 + (fed + n) * act)
        d_cache.rollback(d_len0 + n * act)
        pending = next_token
        still = produced < max_new_tokens
        if not bool(still.any()):
            break
        # Next round's first q: the draft reads what it lacks -- the new token, preceded by
        # the last proposal where all were accepted (g >= 1 here: g = 0 ends every row).
        full = n == g
        feed = torch.stack([torch.where(full, drafted[:, -1], next_token), next_token], dim=1)
        feed_len = (1 + full.long()) * still.long()
        q_out = draft.step(feed, d_cache, feed_len)
        q_next = q_out[rows, (feed_len - 1).clamp(min=0)]
    return out[:, :max_new_tokens], stats


@dataclass
class SpecDecodingConfig:
    """A draft/target pair: both autoregressive token models over the same vocabulary;
    `draft_steps` tokens are proposed per round."""

    draft_config: TransformerModelConfig
    target_config: TransformerModelConfig
    draft_steps: int = 5

    def validate(self) -> None:
        if self.draft_steps < 1:
            raise ValueError(f"draft_steps must be >= 1, got {self.draft_steps}")
        for role, cfg in (("draft", self.draft_config), ("target", self.target_config)):
            if cfg.kind != "autoregressive" or cfg.vocab_size is None:
                raise ValueError(
                    f"{role}_config must describe an autoregressive token model (vocab_size "
                    f"set, autoregressive_mode=True); got kind={cfg.kind!r}, "
                    f"vocab_size={cfg.vocab_size}"
                )
            cfg.validate()
        if self.draft_config.vocab_size != self.target_config.vocab_size:
            raise ValueError(
                f"draft and target must share a vocabulary: draft_config.vocab_size "
                f"{self.draft_config.vocab_size} != target_config.vocab_size "
                f"{self.target_config.vocab_size}"
            )


class SpecDecodingPair(nn.Module):
    """The specification's wrapper: builds both models from a `SpecDecodingConfig` (in eval
    mode) and generates with `speculative_generate`. `last_stats` holds the statistics of
    the last call."""

    def __init__(self, config: SpecDecodingConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.draft = config.draft_config.build()
        self.target = config.target_config.build()
        _check_models(self.target, self.draft)
        self.last_stats: SpeculativeStats | None = None
        self.eval()

    @property
    def draft_steps(self) -> int:
        return self.config.draft_steps

    def forward(
        self,
        input_sequence: Tensor,
        num_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        lengths: Tensor | None = None,
    ) -> Tensor:
        """Generate `num_tokens` after `input_sequence` (token ids `(B, T)` or a value soft
        prompt `(B, T, input_dim)`): token ids `(B, num_tokens)`."""
        tokens, self.last_stats = speculative_generate(
            self.target,
            self.draft,
            input_sequence,
            num_tokens,
            self.config.draft_steps,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            lengths=lengths,
        )
        return tokens
