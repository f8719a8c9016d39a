"""What both clients send: the sampling options, the JSON bodies and the URL paths."""

from __future__ import annotations

from typing import Any, TypedDict
from urllib.parse import quote

# Token ids, or value vectors [[x, ...], ...] for value models.
Input = list[int] | list[list[float]]


class Sampling(TypedDict, total=False):
    """Options of every generation method; an option left out takes the server's default.

    max_new_tokens: outputs to generate (default 16). temperature: 0 is greedy (the
    default). top_k, top_p: sample from the k most likely tokens / the nucleus of mass p.
    seed: reproducible sampling. stop: token ids that end generation (default: the
    model's EOS if it has one; [] for none).
    """

    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop: list[int] | None


def generation_body(sampling: Sampling, stream: bool, **fields: Any) -> dict[str, Any]:
    """A generation request's JSON body; None values are left out (server defaults)."""
    unknown = sampling.keys() - Sampling.__annotations__.keys()
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)}; known: {list(Sampling.__annotations__)}"
        )
    body = {k: v for k, v in {**fields, **sampling}.items() if v is not None}
    body["stream"] = stream
    return body


def session_body(model: str, ttl_s: float | None) -> dict[str, Any]:
    """POST /v1/sessions' body; without `ttl_s`, the server's default time to live."""
    return {"model": model} if ttl_s is None else {"model": model, "ttl_s": ttl_s}


def api_path(*parts: str) -> str:
    """A URL path from its segments, each quoted (a model or session id may hold `/`)."""
    return "/" + "/".join(quote(p, safe="") for p in parts)
