"""The bundled byte-level text models (text-lm, text-lm-draft, text-lm-moe): they load,
run, continue Python source, reach a quality floor on held-out stdlib text, speculative
decoding with the pair reproduces the target's greedy output, and the MoE model's overflow
expert is used in training mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from model_core import checkpoint
from model_core.recipes.text_corpus import bits_per_byte, held_out_windows, load_corpus
from model_core.spec_decoding import speculative_generate
from model_core.tokenizer import VOCAB_SIZE, ByteTokenizer

MODELS = Path(__file__).resolve().parents[1] / "demo_models"
NAMES = ("text-lm", "text-lm-draft", "text-lm-moe")
# Held-out bits per byte ceilings, with margin over the measured figures (see card.json).
BPB_CEILING = {"text-lm": 3.0, "text-lm-draft": 3.3, "text-lm-moe": 3.2}
SNIPPET_SEED = 60_000  # held-out windows no recipe trains or evaluates on


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: checkpoint.load(MODELS / name) for name in NAMES}


@pytest.fixture(scope="module")
def snippet() -> tuple[Tensor, Tensor]:
    """Four 256-byte windows of held-out stdlib files (never trained on)."""
    return held_out_windows(load_corpus().held_out, 4, 256, SNIPPET_SEED)


@pytest.mark.parametrize("name", NAMES)
def test_loads_and_maps_tokens_to_logits(models: dict[str, nn.Module], name: str) -> None:
    model = models[name]
    assert not model.training
    assert model.config.vocab_size == VOCAB_SIZE
    card = checkpoint.read_card(MODELS / name)
    assert card is not None and "held_out_bits_per_byte" in card["metrics"]
    ids = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 17, VOCAB_SIZE)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_greedy_continuation_of_def_is_text(models: dict[str, nn.Module], name: str) -> None:
    tok = ByteTokenizer()
    prompt = torch.tensor([tok.encode("def ")])
    new = models[name].generate(prompt, 24)
    assert new.shape == (1, 24)
    text = tok.decode(new[0].tolist())
    assert text.strip(), f"{name} continued 'def ' with whitespace only: {text!r}"
    assert text.isascii() and all(ch.isprintable() or ch in "\n\t" for ch in text), text


@pytest.mark.parametrize("name", NAMES)
def test_held_out_bits_per_byte_below_ceiling(
    models: dict[str, nn.Module], snippet: tuple[Tensor, Tensor], name: str
) -> None:
    bpb = bits_per_byte(models[name], *snippet)
    assert bpb < BPB_CEILING[name], f"{name}: {bpb:.3f} bits per byte"
    assert bpb < 8.0  # far better than uniform bytes either way


def test_speculative_output_equals_target_greedy(
    models: dict[str, nn.Module], snippet: tuple[Tensor, Tensor]
) -> None:
    target, draft = models["text-lm"], models["text-lm-draft"]
    prompt = snippet[0][:1, :96]
    reference = target.generate(prompt, 48)
    new, stats = speculative_generate(target, draft, prompt, 48, draft_steps=4)
    assert torch.equal(new, reference)
    assert int(stats.accepted.sum()) > 0  # the draft is of some use


def test_moe_overflow_expert_used_in_training_mode(
    models: dict[str, nn.Module], snippet: tuple[Tensor, Tensor]
) -> None:
    model = models["text-lm-moe"]
    inputs = held_out_windows(load_corpus().held_out, 8, 256, SNIPPET_SEED + 1)[0]
    try:
        model.train()
        with torch.no_grad():
            model(inputs)
        train_stats = model.moe_stats()
    finally:
        model.eval()
    assert len(train_stats) == model.config.num_layers
    assert sum(s["overflow_fraction"] for s in train_stats) > 0  # type: ignore[misc]
    with torch.no_grad():
        model(inputs)  # eval: no capacity, nothing overflows
    assert all(s["overflow_tokens"] == 0 for s in model.moe_stats())
