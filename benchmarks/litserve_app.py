"""LitServe serving the bundled demo checkpoints, for benchmarks/compare_litserve.py.

Two APIs, one per server process (`--api`):

- `generate` (POST /predict, streaming): the text-lm checkpoint, greedy decoding with
  model_core's KV cache; body `{"prompt": str, "max_new_tokens": int}`; one JSON line per
  token, `{"index": i, "token": t, "text": "<decoded bytes>"}`. EOS does not stop a
  stream (kvserve is called with `"stop": []`), so each request gets exactly
  max_new_tokens tokens.
- `predict` (POST /predict): the sine-regressor checkpoint; body `{"inputs": [[[v], ...],
  ...]}` (a batch of value sequences, lengths may differ, as kvserve's /v1/predict) ->
  `{"outputs": [[amplitude, frequency, phase], ...]}`.

Each in LitServe's two sensible configurations (`--max-batch-size`):

- 1 (the default; GenerateAPI, PredictAPI): one request at a time. generate: a prefill,
  then one decode step per token, yielded as it comes.
- N > 1, with `--batch-timeout` (BatchedGenerateAPI, BatchedPredictAPI): LitServe
  gathers up to N queued requests (waiting at most the timeout), `batch` hands them to
  `predict`, which right-pads them and runs them together, and `unbatch` splits the
  result per request. Streaming: a batched prefill (`model.step(x, cache,
  lengths)`), then a batched decode loop that yields, per step, one item per row;
  LitServe's BatchedStreamingLoop sends item i of every step to request i and ends all
  the batch's responses when the generator ends. A row past its own max_new_tokens keeps
  computing (the batch has a fixed shape) but its item is "" (nothing is written), so its
  stream sends no more tokens; its HTTP response stays open until the longest row of
  the batch is done, and requests arriving meanwhile wait for the whole batch.

Torch runs one intra-op thread in the worker, as kvserve's CPU worker does.

Run: `.venv/bin/python benchmarks/litserve_app.py --api generate --port 8001
[--max-batch-size 32 --batch-timeout 0.01] [--fast-queue]`.
"""

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import litserve as ls
import torch
from fastapi import HTTPException
from pydantic import BaseModel, Field

from model_core.checkpoint import load
from model_core.recipes import bundled_dir
from model_core.tokenizer import ByteTokenizer

TEXT_MODEL = "text-lm"
REGRESSION_MODEL = "sine-regressor"
MAX_NEW_TOKENS = 1024
TORCH_THREADS = 1
BYTES = ByteTokenizer()

GenerateInput = tuple[list[int], int]  # (prompt ids, max_new_tokens)


def load_model(name: str) -> torch.nn.Module:
    torch.set_num_threads(TORCH_THREADS)
    return load(bundled_dir() / name).eval()


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(16, ge=1, le=MAX_NEW_TOKENS)


class PredictRequest(BaseModel):
    inputs: list[list[list[float]]] = Field(min_length=1)  # sequences of (T, input_dim)


def token_item(index: int, token: int, decoder: Any) -> dict[str, Any]:
    return {"index": index, "token": token, "text": decoder.feed(token)}


class GenerateAPI(ls.LitAPI):
    """text-lm, streamed, one request at a time (LitServe's default)."""

    def setup(self, device: str) -> None:
        self.model = load_model(TEXT_MODEL).to(device)
        self.device_name = device

    # LitServe reads the body's type from this annotation (so it must be a class at
    # runtime: this module does not use `from __future__ import annotations`).
    def decode_request(self, request: GenerateRequest) -> GenerateInput:
        """The prompt's byte ids and max_new_tokens; 422 for what the model cannot take."""
        ids = BYTES.encode(request.prompt)
        limit = self.model.config.max_seq_len
        if len(ids) + request.max_new_tokens > limit:
            raise HTTPException(422, f"prompt + max_new_tokens is over {limit} tokens")
        return ids, request.max_new_tokens

    def predict(self, x: GenerateInput) -> Iterator[dict[str, Any]]:
        ids, new = x
        decoder = BYTES.stream_decoder()
        with torch.inference_mode():
            cache = self.model.new_cache(1, capacity=len(ids) + new)
            prompt = torch.tensor([ids], device=self.device_name)
            nxt = self.model.step(prompt, cache)[:, -1].argmax(dim=-1)  # (1,)
            for i in range(new):
                yield token_item(i, int(nxt), decoder)
                if i + 1 < new:
                    nxt = self.model.step(nxt[:, None], cache)[:, -1].argmax(dim=-1)

    # No return annotation on encode_response: LitServe would make it FastAPI's
    # response model.
    def encode_response(self, output: Iterator[dict[str, Any]]):
        yield from output  # LitServe writes a dict as one JSON line


class BatchedGenerateAPI(GenerateAPI):
    """text-lm, streamed, LitServe's batching: the requests gathered in one batch run
    together from prefill to the end of their longest row."""

    def batch(self, inputs: list[GenerateInput]) -> list[GenerateInput]:
        return inputs  # padded in predict, where the cache is made

    def predict(self, x: list[GenerateInput]) -> Iterator[list[dict[str, Any] | None]]:  # type: ignore[override]
        """Per decode step, one item per row: its token, or None once the row is done."""
        b = len(x)
        lengths = [len(ids) for ids, _ in x]
        news = [new for _, new in x]
        decoders = [BYTES.stream_decoder() for _ in x]
        with torch.inference_mode():
            prompts = torch.zeros(b, max(lengths), dtype=torch.long)  # (B, T) right-padded
            for row, (ids, _) in enumerate(x):
                prompts[row, : len(ids)] = torch.tensor(ids)
            cache = self.model.new_cache(b, capacity=max(lengths) + max(news))
            lens = torch.tensor(lengths, device=self.device_name)
            logits = self.model.step(prompts.to(self.device_name), cache, lens)  # (B, T, V)
            nxt = logits[torch.arange(b), lens - 1].argmax(dim=-1)  # (B,) at each row's end
            for i in range(max(news)):
                tokens = nxt.tolist()
                yield [
                    token_item(i, tokens[row], decoders[row]) if i < news[row] else None
                    for row in range(b)
                ]
                if i + 1 < max(news):
                    nxt = self.model.step(nxt[:, None], cache)[:, -1].argmax(dim=-1)

    def unbatch(self, output: Iterator[list[Any]]) -> Iterator[list[Any]]:
        yield from output  # each step is already a list, one item per request

    def encode_response(self, output: Iterator[list[Any]]):  # type: ignore[override]
        for step in output:  # "" writes nothing: a finished row's stream stays quiet
            yield ["" if item is None else item for item in step]


Sequences = list[list[list[float]]]  # value sequences, each (T, input_dim)


class PredictAPI(ls.LitAPI):
    """sine-regressor, one request (a batch of value sequences) at a time."""

    def setup(self, device: str) -> None:
        self.model = load_model(REGRESSION_MODEL).to(device)
        self.device_name = device

    def decode_request(self, request: PredictRequest) -> Sequences:
        limit = self.model.config.max_seq_len
        if any(not 1 <= len(s) <= limit for s in request.inputs):
            raise HTTPException(422, f"each sequence must hold 1..{limit} values")
        return request.inputs

    @torch.inference_mode()
    def forward(self, sequences: Sequences) -> list[list[float]]:
        """The model on right-padded sequences: one output vector each."""
        lengths = [len(s) for s in sequences]
        dim = self.model.config.input_dim
        x = torch.zeros(len(sequences), max(lengths), dim)  # (B, T, input_dim)
        for row, seq in enumerate(sequences):
            x[row, : len(seq)] = torch.tensor(seq, dtype=torch.float32).reshape(len(seq), dim)
        lens = torch.tensor(lengths, device=self.device_name)
        return self.model(x.to(self.device_name), lens).tolist()  # (B, output_dim)

    def predict(self, x: Sequences) -> list[list[float]]:
        return self.forward(x)

    def encode_response(self, output: list[list[float]]):
        return {"outputs": output}


class BatchedPredictAPI(PredictAPI):
    """sine-regressor with LitServe's batching: the sequences of every request gathered
    run as one padded forward pass."""

    def batch(self, inputs: list[Sequences]) -> list[Sequences]:
        return inputs  # padded in forward

    def predict(self, x: list[Sequences]) -> list[list[list[float]]]:  # type: ignore[override]
        outputs = self.forward([seq for request in x for seq in request])
        per_request, start = [], 0
        for request in x:  # the rows back by request
            per_request.append(outputs[start : start + len(request)])
            start += len(request)
        return per_request

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", choices=["generate", "predict"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--max-batch-size", type=int, default=1, help="1: LitServe's default (no batching)"
    )
    parser.add_argument(
        "--batch-timeout", type=float, default=0.0, help="seconds to wait to fill a batch"
    )
    parser.add_argument(
        "--fast-queue", action="store_true", help="LitServe's ZeroMQ transport (fast_queue)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="LitServe request timeout")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))  # inherited by the worker
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    batched = args.max_batch_size > 1
    api: ls.LitAPI
    if args.api == "generate":
        api = (BatchedGenerateAPI if batched else GenerateAPI)(stream=True, **batching)
    else:
        api = (BatchedPredictAPI if batched else PredictAPI)(**batching)
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=1,
        timeout=args.timeout,
        fast_queue=args.fast_queue,
    )
    server.run(host=args.host, port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
