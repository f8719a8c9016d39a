"""digits-seq2seq: an encoder-decoder that maps a digit string (1 to 32 digits) to its
reversal, a separator, then its decimal digit sum written as 3 digits (zero-padded, most
significant first): "1234" -> "4321=010", "5" -> "5=005", "9" * 32 -> "9" * 32 + "=288".

The reversal needs position-by-position cross-attention over the source (the position to
read depends on the source length); the sum needs the decoder to add up the whole source
exactly (to within 0.5 out of up to 288).

The source has a fixed width: the digits, then PAD up to 32 tokens, and the PADs are read
like any token (no `source_lengths` mask). That is what makes the sum learnable here: a
softmax attention averages, so over the n real digits alone (PADs masked) it yields the
mean digit S / n, and the decoder must multiply it by n to within 0.5 / n (1 part in ~600
for n = 32); over 32 slots whose PADs add nothing it yields S / 32, a fixed scaling of
the sum. The server pads sources the same way: the card says `serving.source_pad_to`.

How the recipe got here (exact match on the 1,000 held-out inputs, batch 64):
- masked variable-length source, 96-dim, 2 encoder + 3 decoder layers, sum digits
  weighted 3x: 26% after 2,000 steps, reversal 97%; 64-dim 2 + 2 layers: 22-31%;
- fixed-width source, 64-dim, 2 + 2 layers, sum weighted 4-8x, cosine to lr/10: 73% at
  3,000 steps, 92.7% at 7,000, 97.9% at 10,000 (13.3 min on 2 cores): errors were sums
  off by one on long strings (24-31 digits);
- 3/8 of every batch drawn from 17-32 digits (the long strings, where the sum has most
  values to tell apart): 96.3% at 6,000 steps; with one encoder layer (the encoder only
  has to embed digits at their positions; the counting is the decoder's) 98.2%; and with
  the cosine ending at lr/100 instead of lr/10, 99.8% at 7,000 steps; with half of
  every batch long, 99.9%. That is this recipe: `kvserve train digits-seq2seq` (torch's
  2 threads on 2 cores) reaches 99.9% (reversal 100%, sum 99.9%) in 8.0 minutes.

Known misses: sparse strings, a lone non-zero digit among many zeros ("1000000" ->
"0000001=000", the sum at the smallest steps of S / 32) and long "1010..." alternations.

Data is synthetic, drawn from seeded generators: in training, of every batch of 64, 8 rows
use a 1- or 2-digit alphabet (so that strings like "0000" or "9999" are covered), 24 rows
are uniform over 1-32 digits and 32 uniform over 17-32 digits; digits uniform. Evaluation
draws uniform strings (1-32 digits) from a different seed.

Vocabulary (14 ids): 0-9 are the digits, 10 "=", 11 BOS, 12 EOS, 13 PAD. The source is
`encode_sources` (digits, then PAD up to SOURCE_WIDTH); the target is BOS, the answer,
EOS. Decoding: `model.generate(source, BOS column, MAX_NEW_TOKENS)` greedy, cut at the
first EOS (see `solve`). A source that is not padded to 32 gets a wrong sum.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core import checkpoint
from model_core.configs import TransformerModelConfig
from model_core.train import TrainSettings, train_model

SYMBOLS = [*"0123456789", "=", "<bos>", "<eos>", "<pad>"]
SEP, BOS, EOS, PAD = 10, 11, 12, 13
VOCAB_SIZE = len(SYMBOLS)
MIN_DIGITS, MAX_DIGITS = 1, 32
SOURCE_WIDTH = MAX_DIGITS  # every source is the digits, then PAD up to this width
SUM_DIGITS = 3  # the largest sum, 32 x 9 = 288, has 3 digits
# Longest answer: 32 digits, "=", 3 sum digits, EOS.
MAX_NEW_TOKENS = MAX_DIGITS + 1 + SUM_DIGITS + 1
EVAL_SEED = 1_000_003  # held-out inputs; training draws from `seed` (0 by default)
EVAL_SIZE = 1000

CONFIG = TransformerModelConfig(
    name="digits-seq2seq",
    embed_dim=64,
    ffn_latent_dim=256,
    num_heads=4,
    num_layers=2,
    num_encoder_layers=1,
    num_decoder_layers=2,
    vocab_size=VOCAB_SIZE,
    max_seq_len=48,
    apply_causal_mask=True,
    kind="encoder_decoder",
)
SETTINGS = TrainSettings(
    steps=7000, lr=3e-3, warmup=300, weight_decay=0.01, grad_clip=1.0, min_lr_ratio=0.01
)
BATCH_SIZE = 64
FEW_SYMBOL_FRACTION = 8  # one row in 8
LONG_SHORTEST = 17  # half of every batch has 17-32 digits (see draw_batch)
SUM_LOSS_WEIGHT = 8.0  # the sum digits' cross-entropy counts this much more than the rest


def answer(digits: str) -> str:
    """The task: "1234" -> "4321=010" (reversal, "=", digit sum as 3 digits)."""
    return digits[::-1] + "=" + f"{sum(map(int, digits)):0{SUM_DIGITS}d}"


def encode_text(text: str) -> list[int]:
    return [SYMBOLS.index(c) for c in text]


def decode_ids(ids: list[int]) -> str:
    """Symbols up to (not including) the first EOS; special ids other than EOS are kept as
    their names so that a wrong output never equals a right one by accident."""
    out = []
    for i in ids:
        if i == EOS:
            break
        out.append(SYMBOLS[i])
    return "".join(out)


def random_digits(
    n: int, generator: torch.Generator, shortest: int = MIN_DIGITS, longest: int = MAX_DIGITS
) -> list[str]:
    """`n` digit strings, lengths uniform over `shortest`-`longest`, digits uniform."""
    lengths = torch.randint(shortest, longest + 1, (n,), generator=generator)
    digits = torch.randint(0, 10, (n, longest), generator=generator)
    return [
        "".join(str(d) for d in row[:k].tolist()) for row, k in zip(digits, lengths, strict=True)
    ]


def pad_batch(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Right-pad with PAD: ids `(B, T)` and lengths `(B,)`."""
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((len(rows), int(lengths.max())), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, lengths


def encode_sources(strings: list[str]) -> Tensor:
    """The fixed-width source `(B, SOURCE_WIDTH)`: each string's digits, then PAD. The
    PADs are read like any token (no `source_lengths`): attention spread evenly over the
    32 slots then yields sum / 32, a fixed scaling of the sum (see the module docstring)."""
    too_long = [s for s in strings if not MIN_DIGITS <= len(s) <= MAX_DIGITS]
    assert not too_long, f"digit strings must have {MIN_DIGITS}-{MAX_DIGITS} digits: {too_long}"
    ids = torch.full((len(strings), SOURCE_WIDTH), PAD, dtype=torch.long)
    for i, s in enumerate(strings):
        ids[i, : len(s)] = torch.tensor(encode_text(s))
    return ids


def make_batch(strings: list[str]) -> dict[str, Tensor]:
    """Teacher-forcing batch: source, decoder input (BOS + answer), labels (answer + EOS;
    PAD where there is no target) and the labels' loss weights (0 on PAD,
    SUM_LOSS_WEIGHT on the sum digits, 1 elsewhere)."""
    full = [[BOS, *encode_text(answer(s)), EOS] for s in strings]
    target, target_lengths = pad_batch([f[:-1] for f in full])
    labels, _ = pad_batch([f[1:] for f in full])
    digits = torch.tensor([len(s) for s in strings])[:, None]  # (B, 1)
    position = torch.arange(labels.shape[1])  # the sum digits are labels n+1 .. n+3
    is_sum = (position > digits) & (position <= digits + SUM_DIGITS)
    weights = torch.where(is_sum, SUM_LOSS_WEIGHT, 1.0) * (labels != PAD)
    return {
        "source": encode_sources(strings),
        "target": target,
        "target_lengths": target_lengths,
        "labels": labels,
        "weights": weights,
    }


def few_symbol_digits(n: int, generator: torch.Generator) -> list[str]:
    """`n` digit strings (lengths uniform over 1-32) over a random 1- or 2-digit alphabet,
    the second digit with a random frequency, e.g. "0000", "7373337" or "1000000": rare
    under uniform digits, and the only source of sums near 0 or 288 for long strings."""
    strings = []
    for s in random_digits(n, generator):
        a, b = torch.randperm(10, generator=generator)[:2].tolist()
        share = float(torch.rand((), generator=generator)) ** 2  # often a lone odd digit
        odd = (torch.rand(len(s), generator=generator) < share).tolist()
        strings.append("".join(str(b if o else a) for o in odd))
    return strings


def draw_batch(generator: torch.Generator) -> dict[str, Tensor]:
    """A training batch: 1/FEW_SYMBOL_FRACTION of it from 1- or 2-digit alphabets, half of
    it uniform over LONG_SHORTEST-32 digits (long strings are where sums are hardest to
    tell apart: the most values, each 1/32 of the average), the rest uniform over 1-32."""
    few, long = BATCH_SIZE // FEW_SYMBOL_FRACTION, BATCH_SIZE // 2
    return make_batch(
        random_digits(BATCH_SIZE - few - long, generator)
        + few_symbol_digits(few, generator)
        + random_digits(long, generator, shortest=LONG_SHORTEST)
    )


def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    logits = model(batch["source"], batch["target"], target_lengths=batch["target_lengths"])
    labels, weights = batch["labels"], batch["weights"]
    losses = F.cross_entropy(
        logits.reshape(-1, VOCAB_SIZE), labels.reshape(-1), ignore_index=PAD, reduction="none"
    )
    return (losses * weights.reshape(-1)).sum() / weights.sum()


@torch.inference_mode()
def solve(model: nn.Module, strings: list[str]) -> list[str]:
    """Greedy cached decoding of a batch of digit strings."""
    start = torch.full((len(strings), 1), BOS, dtype=torch.long)
    out = model.generate(encode_sources(strings), start, MAX_NEW_TOKENS)
    return [decode_ids(row) for row in out.tolist()]


def held_out(n: int = EVAL_SIZE, seed: int = EVAL_SEED) -> list[str]:
    return random_digits(n, torch.Generator().manual_seed(seed))


def measure(model: nn.Module, strings: list[str], batch: int = 250) -> dict[str, Any]:
    """Exact match (whole answer), and separately of the reversal and the sum parts."""
    predicted: list[str] = []
    for i in range(0, len(strings), batch):
        predicted += solve(model, strings[i : i + batch])
    want = [answer(s) for s in strings]
    exact = sum(p == w for p, w in zip(predicted, want, strict=True))
    rev = sum(p.split("=")[0] == w.split("=")[0] for p, w in zip(predicted, want, strict=True))
    sums = sum(p.split("=")[-1] == w.split("=")[-1] for p, w in zip(predicted, want, strict=True))
    n = len(strings)
    return {
        "exact_match": exact / n,
        "reversal_match": rev / n,
        "sum_match": sums / n,
        "eval_inputs": n,
        "eval_seed": EVAL_SEED,
    }


def _card(settings: TrainSettings, params: int, wall: float, metrics: dict[str, Any]) -> dict:
    return {
        "task": (
            "digit string (1-32 digits) -> its reversal, '=', its digit sum as 3 digits "
            "(zero-padded, most significant first), e.g. '1234' -> '4321=010', "
            "'9' * 32 -> '9' * 32 + '=288'"
        ),
        "data": (
            "synthetic, generated on the fly (torch.Generator seeded with the training "
            f"seed), digits uniform 0-9: one training row in {FEW_SYMBOL_FRACTION} uses a "
            "random 1- or 2-digit alphabet instead (e.g. '0000', '7337'), so constant "
            f"strings are answered right; half the rows have {LONG_SHORTEST}-32 digits, the "
            "rest 1-32 (uniform lengths); held-out evaluation "
            "(uniform digits): "
            f"{EVAL_SIZE} inputs from seed {EVAL_SEED}. No external data, no licence needed."
        ),
        "vocabulary": {str(i): s for i, s in enumerate(SYMBOLS)},
        "special_tokens": {"separator": SEP, "bos": BOS, "eos": EOS, "pad": PAD},
        "usage": (
            f"source: the digit ids, then PAD up to {SOURCE_WIDTH} tokens (fixed width; the "
            "PADs are read, do not pass source_lengths: the model counts on attending to "
            f"{SOURCE_WIDTH} slots); model.generate(source, [[BOS]], "
            f"max_new_tokens={MAX_NEW_TOKENS}) greedy; cut at the first EOS"
        ),
        "training": {
            "steps": settings.steps,
            "lr": settings.lr,
            "warmup": settings.warmup,
            "weight_decay": settings.weight_decay,
            "grad_clip": settings.grad_clip,
            "batch_size": BATCH_SIZE,
            "seed": settings.seed,
            "objective": (
                "teacher forcing, cross-entropy, target padding masked out, the sum digits "
                f"weighted {SUM_LOSS_WEIGHT}x"
            ),
            "optimizer": (
                f"AdamW, warmup + cosine decay to lr * {settings.min_lr_ratio:g} (model_core.train)"
            ),
            "threads": torch.get_num_threads(),
            "wall_seconds": round(wall, 1),
        },
        "model": {
            "kind": "encoder_decoder",
            "params": params,
            "embed_dim": CONFIG.embed_dim,
            "ffn_latent_dim": CONFIG.ffn_latent_dim,
            "num_heads": CONFIG.num_heads,
            "encoder_layers": CONFIG.num_encoder_layers,
            "decoder_layers": CONFIG.num_decoder_layers,
            "positions": "sinusoidal",
            "max_seq_len": CONFIG.max_seq_len,
        },
        "serving": {"source_pad_to": SOURCE_WIDTH},
        "metrics": metrics,
    }


def train(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = CONFIG.build()
    settings = TrainSettings(**{**SETTINGS.__dict__, "seed": seed})
    stats = train_model(model, draw_batch, loss_fn, settings, desc="digits-seq2seq")
    metrics: dict[str, Any] = {"final_train_loss": round(stats["final_loss"], 5)}
    metrics |= measure(model, held_out())
    wall = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    checkpoint.save(model, out_dir, card=_card(settings, params, wall, metrics))
    return {**metrics, "train_seconds": round(stats["train_seconds"], 1), "params": params}


def evaluate(path: Path) -> dict[str, Any]:
    return measure(checkpoint.load(path), held_out())
