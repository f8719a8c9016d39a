"""A seq2seq model whose card declares `serving.source_pad_to` gets its sources padded
with its PAD token by the server (a model trained on fixed-width sources); the answer
equals model_core decoding the padded source itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from model_core import checkpoint
from model_core.generation import generate_seq2seq
from model_core.recipes import bundled_dir
from server.app import create_app
from server.settings import ServerSettings

BOS, EOS, PAD, WIDTH = 11, 12, 13, 8


def test_the_server_pads_sources_as_the_card_says(tmp_path: Path) -> None:
    model_dir = tmp_path / "digits-fixed"
    shutil.copytree(bundled_dir() / "digits-seq2seq", model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    card["serving"] = {"source_pad_to": WIDTH}
    (model_dir / "card.json").write_text(json.dumps(card))
    source = [3, 1, 4]
    with TestClient(create_app(ServerSettings(model_dir=tmp_path))) as client:
        assert client.get("/v1/models/digits-fixed").json()["source_pad_to"] == WIDTH
        body = {"model": "digits-fixed", "input": source, "max_new_tokens": 12, "stop": []}
        answer = client.post("/v1/seq2seq", json=body)
        too_long = client.post("/v1/seq2seq", json={**body, "input": [1] * (WIDTH + 1)})
    padded = torch.tensor([source + [PAD] * (WIDTH - len(source))])
    model = checkpoint.load(model_dir).eval()
    want = generate_seq2seq(model, padded, torch.tensor([[BOS]]), 12)[0].tolist()
    assert answer.status_code == 200 and answer.json()["outputs"] == want
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "input"
