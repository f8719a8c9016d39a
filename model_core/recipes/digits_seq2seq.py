"""digits-seq2seq: an encoder-decoder that maps a digit string (1 to 32 digits) to its
reversal, a separator, then its largest and its smallest digit: "1234" -> "4321=41",
"5" -> "5=55", "90210" -> "01209=90".

The reversal needs position-by-position cross-attention over the source (the position to
read depends on the source length); the max/min part needs the decoder to aggregate over
the whole source by content, and is learned exactly.

The brief's first choice, the decimal digit sum after the separator, was not reached
(figures: exact match on these 1,000 held-out inputs, 1 thread, batch 64). A softmax
average over the n real digits gives the mean digit S / n, and the decoder must multiply
it by n to within 0.5 (1 part in ~600 for n = 32): the 64-dim, 2 + 2 layer model reached
22-31% in 2,500 steps, a 96-dim, 2 + 3 layer one with the sum digits' loss weighted 3x
26% in 2,000 steps (reversal 97%). A fixed-width source (the digits, then PAD up to 32,
the PADs read rather than masked) turns the average into S / 32, a fixed scaling of the
sum; with the sum as 3 zero-padded digits, most significant first, the 64-dim, 2 + 2
layer model reached 73% in 3,000 steps, 92.7% in 7,000 (sum loss 4x, 13 min) and 95.7%
in 8,500 (sum loss 8x, 18 min on a shared machine; reversal 99.7%). At 7,000 steps all
73 errors were sums off by one, mostly on 24-31 digits; at 8,500 it still failed constant
strings such as "9" * 32 (a digit too many in the reversal, 279 for 288); 10,000 steps on
2 quiet cores (torch's 2 threads) reached 97.9% (reversal 99.9%) in 13.3 min. None reaches
99% within 10 minutes on 2 cores; the fixed width also needs the server to pad sources
(a card's `serving.source_pad_to`, which the HTTP API honours).

Data is synthetic (uniform lengths 1-32, uniform digits; in training one row in 8 uses a
1- or 2-digit alphabet so that strings like "0000" are covered) drawn from seeded
generators; evaluation draws uniform strings from a different seed.

Vocabulary (14 ids): 0-9 are the digits, 10 "=", 11 BOS, 12 EOS, 13 PAD. The source is
the digits alone (right-padded with PAD, lengths passed as `source_lengths`); the target
is BOS, the answer, EOS. Decoding: `model.generate(source, BOS column, MAX_NEW_TOKENS,
source_lengths=...)` greedy, cut at the first EOS (see `solve`).
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
# Longest answer: 32 digits, "=", max digit, min digit, EOS.
MAX_NEW_TOKENS = MAX_DIGITS + 1 + 2 + 1
EVAL_SEED = 1_000_003  # held-out inputs; training draws from `seed` (0 by default)
EVAL_SIZE = 1000

CONFIG = TransformerModelConfig(
    name="digits-seq2seq",
    embed_dim=64,
    ffn_latent_dim=256,
    num_heads=4,
    num_layers=2,
    num_encoder_layers=2,
    num_decoder_layers=2,
    vocab_size=VOCAB_SIZE,
    max_seq_len=48,
    apply_causal_mask=True,
    kind="encoder_decoder",
)
SETTINGS = TrainSettings(steps=2500, lr=3e-3, warmup=200, weight_decay=0.01, grad_clip=1.0)
BATCH_SIZE = 64
FEW_SYMBOL_FRACTION = 8  # one row in 8


def answer(digits: str) -> str:
    """The task: "1234" -> "4321=41" (reversal, "=", largest digit, smallest digit)."""
    return digits[::-1] + "=" + max(digits) + min(digits)


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


def make_batch(strings: list[str]) -> dict[str, Tensor]:
    """Teacher-forcing batch: source, decoder input (BOS + answer) and labels (answer +
    EOS; PAD where there is no target, ignored by the loss)."""
    source, source_lengths = pad_batch([encode_text(s) for s in strings])
    full = [[BOS, *encode_text(answer(s)), EOS] for s in strings]
    target, target_lengths = pad_batch([f[:-1] for f in full])
    labels, _ = pad_batch([f[1:] for f in full])
    return {
        "source": source,
        "source_lengths": source_lengths,
        "target": target,
        "target_lengths": target_lengths,
        "labels": labels,
    }


def few_symbol_digits(n: int, generator: torch.Generator) -> list[str]:
    """`n` digit strings (lengths uniform over 1-32) over a random 1- or 2-digit alphabet,
    the second digit with a random frequency, e.g. "0000", "7373337" or "1000000": rare
    under uniform digits, and without them the model answered "0000" with "0000=0" and
    "1000000" with "0000001=00"."""
    strings = []
    for s in random_digits(n, generator):
        a, b = torch.randperm(10, generator=generator)[:2].tolist()
        share = float(torch.rand((), generator=generator)) ** 2  # often a lone odd digit
        odd = (torch.rand(len(s), generator=generator) < share).tolist()
        strings.append("".join(str(b if o else a) for o in odd))
    return strings


def draw_batch(generator: torch.Generator) -> dict[str, Tensor]:
    """A training batch: uniform strings, and FEW_SYMBOL_FRACTION of them drawn from 1-
    or 2-digit alphabets."""
    few = BATCH_SIZE // FEW_SYMBOL_FRACTION
    return make_batch(
        random_digits(BATCH_SIZE - few, generator) + few_symbol_digits(few, generator)
    )


def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    logits = model(
        batch["source"],
        batch["target"],
        source_lengths=batch["source_lengths"],
        target_lengths=batch["target_lengths"],
    )
    return F.cross_entropy(
        logits.reshape(-1, VOCAB_SIZE), batch["labels"].reshape(-1), ignore_index=PAD
    )


@torch.inference_mode()
def solve(model: nn.Module, strings: list[str]) -> list[str]:
    """Greedy cached decoding of a batch of digit strings (padded to the longest)."""
    source, lengths = pad_batch([encode_text(s) for s in strings])
    start = torch.full((len(strings), 1), BOS, dtype=torch.long)
    out = model.generate(source, start, MAX_NEW_TOKENS, source_lengths=lengths)
    return [decode_ids(row) for row in out.tolist()]


def held_out(n: int = EVAL_SIZE, seed: int = EVAL_SEED) -> list[str]:
    return random_digits(n, torch.Generator().manual_seed(seed))


def measure(model: nn.Module, strings: list[str], batch: int = 250) -> dict[str, Any]:
    """Exact match (whole answer), and separately of the reversal and the max/min parts."""
    predicted: list[str] = []
    for i in range(0, len(strings), batch):
        predicted += solve(model, strings[i : i + batch])
    want = [answer(s) for s in strings]
    exact = sum(p == w for p, w in zip(predicted, want, strict=True))
    rev = sum(p.split("=")[0] == w.split("=")[0] for p, w in zip(predicted, want, strict=True))
    extremes = sum(
        p.split("=")[-1] == w.split("=")[-1] for p, w in zip(predicted, want, strict=True)
    )
    n = len(strings)
    return {
        "exact_match": exact / n,
        "reversal_match": rev / n,
        "max_min_match": extremes / n,
        "eval_inputs": n,
        "eval_seed": EVAL_SEED,
    }


def _card(settings: TrainSettings, params: int, wall: float, metrics: dict[str, Any]) -> dict:
    return {
        "task": (
            "digit string (1-32 digits) -> its reversal, '=', its largest digit, its smallest "
            "digit, e.g. '1234' -> '4321=41', '5' -> '5=55' (the digit sum was tried first "
            "and reached only 22-31% exact match within the CPU budget)"
        ),
        "data": (
            "synthetic, generated on the fly: lengths uniform over 1-32, digits uniform 0-9 "
            "(torch.Generator seeded with the training seed); one training row in "
            f"{FEW_SYMBOL_FRACTION} uses a random 1- or 2-digit alphabet instead (e.g. "
            "'0000', '7337'), so constant strings are answered right; held-out evaluation "
            "(uniform digits): "
            f"{EVAL_SIZE} inputs from seed {EVAL_SEED}. No external data, no licence needed."
        ),
        "vocabulary": {str(i): s for i, s in enumerate(SYMBOLS)},
        "special_tokens": {"separator": SEP, "bos": BOS, "eos": EOS, "pad": PAD},
        "usage": (
            "source: digit ids right-padded with PAD, lengths as source_lengths; "
            f"model.generate(source, [[BOS]], max_new_tokens={MAX_NEW_TOKENS}, "
            "source_lengths=...) greedy; cut at the first EOS"
        ),
        "training": {
            "steps": settings.steps,
            "lr": settings.lr,
            "warmup": settings.warmup,
            "weight_decay": settings.weight_decay,
            "grad_clip": settings.grad_clip,
            "batch_size": BATCH_SIZE,
            "seed": settings.seed,
            "objective": "teacher forcing, cross-entropy, target padding masked out",
            "optimizer": "AdamW, warmup + cosine decay to lr/10 (model_core.train)",
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
