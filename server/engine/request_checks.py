"""What a worker refuses before it queues a request (the HTTP layer checks the same and
more; this keeps a worker safe from any caller)."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from server.engine.protocol import WorkRequest

KIND_OF_OP = {
    "generate": "autoregressive",
    "speculative": "autoregressive",
    "seq2seq": "encoder_decoder",
    "predict": "regression",
}


def check_request(req: WorkRequest, models: dict[str, nn.Module]) -> str | None:
    """Why the request cannot run, or None."""
    model = models.get(req.model)
    if model is None:
        return f"model {req.model!r} is not loaded; loaded: {sorted(models)}"
    cfg = model.config
    if KIND_OF_OP.get(req.op) != cfg.kind:
        return f"{req.op!r} needs a {KIND_OF_OP.get(req.op)} model; {req.model!r} is {cfg.kind}"
    if not req.inputs:
        return "inputs are empty"
    if req.op == "predict":
        return _check_values_batch(req.inputs, cfg)
    problem = _check_sequence(req.inputs, cfg, "inputs")
    if problem:
        return problem
    if req.max_new_tokens < 1:
        return f"max_new_tokens must be >= 1, got {req.max_new_tokens}"
    if req.session_id is not None and req.op != "generate":
        return "sessions continue autoregressive generation only"
    if req.op == "seq2seq":
        if not req.start:
            return "seq2seq needs the decoder's start tokens"
        problem = _check_sequence(req.start, cfg, "start")
        longest = len(req.start) + req.max_new_tokens
    else:
        longest = len(req.inputs) + req.max_new_tokens
    if problem:
        return problem
    if longest > cfg.max_seq_len:
        return (
            f"input ({longest - req.max_new_tokens}) + max_new_tokens ({req.max_new_tokens}) "
            f"exceeds the model's max_seq_len ({cfg.max_seq_len})"
        )
    if req.op == "speculative":
        return _check_draft(req, models)
    return None


def _check_draft(req: WorkRequest, models: dict[str, nn.Module]) -> str | None:
    draft = models.get(req.draft_model or "")
    if draft is None:
        return f"draft model {req.draft_model!r} is not loaded; loaded: {sorted(models)}"
    target_cfg, cfg = models[req.model].config, draft.config
    if cfg.kind != "autoregressive" or not cfg.uses_tokens or not target_cfg.uses_tokens:
        return "speculative decoding needs autoregressive token models as target and draft"
    if cfg.vocab_size != target_cfg.vocab_size:
        return (
            f"the draft's vocabulary ({cfg.vocab_size}) differs from the target's "
            f"({target_cfg.vocab_size})"
        )
    if req.draft_steps < 1:
        return f"draft_steps must be >= 1, got {req.draft_steps}"
    if len(req.inputs) + req.max_new_tokens > cfg.max_seq_len:
        return f"input + max_new_tokens exceeds the draft's max_seq_len ({cfg.max_seq_len})"
    return None


def _check_sequence(items: list[Any], cfg: Any, field: str) -> str | None:
    if cfg.uses_tokens:
        for i, t in enumerate(items):
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < cfg.vocab_size:
                return f"{field}[{i}] = {t!r} is not a token id in [0, {cfg.vocab_size})"
        return None
    return _check_values(items, cfg.input_dim, field)


def _check_values(items: list[Any], dim: int, field: str) -> str | None:
    for i, v in enumerate(items):
        if not isinstance(v, list | tuple) or len(v) != dim:
            return f"{field}[{i}] must be a list of {dim} numbers"
        if not all(isinstance(x, int | float) and math.isfinite(x) for x in v):
            return f"{field}[{i}] holds a value that is not a finite number"
    return None


def _check_values_batch(batch: list[Any], cfg: Any) -> str | None:
    for i, seq in enumerate(batch):
        if not isinstance(seq, list) or not seq:
            return f"inputs[{i}] must be a non-empty list of value vectors"
        if len(seq) > cfg.max_seq_len:
            return f"inputs[{i}] has {len(seq)} steps, over max_seq_len ({cfg.max_seq_len})"
        problem = _check_values(seq, cfg.input_dim, f"inputs[{i}]")
        if problem:
            return problem
    return None
