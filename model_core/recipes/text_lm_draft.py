"""text-lm-draft: a 1-layer MQA draft model distilled from text-lm, for speculative decoding.

Model: AutoregressiveTransformerModel, vocab 259, d=128, 1 layer, 4 query heads sharing one
K/V head (MQA), FFN latent 512, max_seq_len 512: one decode step costs a small fraction of
a text-lm step.

Data: the same corpus as text-lm (stdlib source, PSF licence, split by file). The teacher
is the bundled text-lm checkpoint. The training set is a fixed pool of sequences, each
with the teacher's next-token log-probabilities at every position, computed once:
- random 256-byte windows of the train files;
- sequences made of a 128-byte train prompt and text-lm's own 128-byte greedy continuation
  (what the draft proposes on during speculative decoding).
Loss: KL(teacher || draft) over the vocabulary + cross-entropy on the teacher's greedy
(argmax) token + a quarter of the plain next-byte cross-entropy on the sequence itself.

Metrics: held-out bits per byte, and the greedy speculative-decoding acceptance (alpha) of
the pair on held-out prompts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core import checkpoint
from model_core.configs import FFNConfig, TransformerModelConfig
from model_core.recipes.text_corpus import held_out_windows, load_corpus, random_windows
from model_core.recipes.text_lm import SEQ_LEN, held_out_bpb, train_card
from model_core.spec_decoding import speculative_generate
from model_core.tokenizer import VOCAB_SIZE
from model_core.train import TrainSettings, train_model

BATCH = 16
POOL_WINDOWS = 768  # real train windows in the pool
POOL_GENERATED = 256  # prompt + teacher greedy continuation sequences
PROMPT_LEN = 128
SETTINGS = TrainSettings(steps=800, lr=3e-3, warmup=50, weight_decay=0.01)
DATA_CE_WEIGHT = 0.25
SPEC_PROMPTS = 4
SPEC_NEW_TOKENS = 128
SPEC_DRAFT_STEPS = 4
SPEC_SEED = 30_000  # held-out prompts; never the training seed


def model_config() -> TransformerModelConfig:
    d, latent = 128, 512
    return TransformerModelConfig(
        name="text-lm-draft",
        vocab_size=VOCAB_SIZE,
        embed_dim=d,
        ffn_latent_dim=latent,
        num_layers=1,
        num_heads=4,
        attention_type="mqa",
        max_seq_len=512,
        ffn_config=FFNConfig(embed_dim=d, latent_dim=latent),
    )


def target_dir(out_dir: Path) -> Path:
    """The teacher: text-lm next to `out_dir`, else the bundled one."""
    sibling = out_dir.parent / "text-lm"
    if (sibling / checkpoint.WEIGHTS_FILE).is_file():
        return sibling
    from model_core.recipes import bundled_dir

    return bundled_dir() / "text-lm"


@torch.no_grad()
def build_pool(target: nn.Module, seed: int) -> tuple[Tensor, Tensor]:
    """Sequences `(P, SEQ_LEN + 1)` and the teacher's log-probs `(P, SEQ_LEN, V)` (float16)
    at their first SEQ_LEN positions."""
    train = load_corpus().train
    generator = torch.Generator().manual_seed(seed)
    x, y = random_windows(train, POOL_WINDOWS, SEQ_LEN, generator)
    real = torch.cat([x, y[:, -1:]], dim=1)
    prompts, _ = random_windows(train, POOL_GENERATED, PROMPT_LEN, generator)
    generated = []
    for i in range(0, POOL_GENERATED, 32):
        p = prompts[i : i + 32]
        new = target.generate(p, SEQ_LEN + 1 - PROMPT_LEN)
        generated.append(torch.cat([p, new], dim=1))
    sequences = torch.cat([real, *generated], dim=0)
    logprobs = torch.empty(sequences.shape[0], SEQ_LEN, VOCAB_SIZE, dtype=torch.float16)
    for i in range(0, sequences.shape[0], 32):
        logits = target(sequences[i : i + 32, :-1]).float()
        logprobs[i : i + 32] = F.log_softmax(logits, dim=-1).half()
    return sequences, logprobs


def distill_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    sequences, teacher = batch
    logits = model(sequences[:, :-1]).float()
    logq = F.log_softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
    logp = teacher.float().reshape(-1, logits.shape[-1])
    kl = (logp.exp() * (logp - logq)).sum(dim=-1).mean()
    greedy_ce = F.nll_loss(logq, logp.argmax(dim=-1))
    data_ce = F.nll_loss(logq, sequences[:, 1:].reshape(-1))
    return kl + greedy_ce + DATA_CE_WEIGHT * data_ce


@torch.no_grad()
def spec_alpha(target: nn.Module, draft: nn.Module, seed: int = SPEC_SEED) -> dict[str, Any]:
    """Greedy speculative decoding on held-out prompts: alpha, tokens per round, and
    whether every output equals the target's own greedy output."""
    prompts, _ = held_out_windows(load_corpus().held_out, SPEC_PROMPTS, PROMPT_LEN, seed)
    accepted = tested = rounds = 0
    identical = True
    for prompt in prompts:
        new, stats = speculative_generate(
            target, draft, prompt[None], SPEC_NEW_TOKENS, draft_steps=SPEC_DRAFT_STEPS
        )
        identical &= bool(torch.equal(new, target.generate(prompt[None], SPEC_NEW_TOKENS)))
        accepted += int(stats.accepted.sum())
        tested += int(stats.accepted.sum() + stats.rejected.sum())
        rounds += int(stats.rounds.sum())
    return {
        "alpha": accepted / max(1, tested),
        "tokens_per_round": (accepted + rounds) / max(1, rounds),
        "identical_to_target_greedy": identical,
        "spec_setup": f"{SPEC_PROMPTS} held-out prompts of {PROMPT_LEN} bytes (seed {seed}), "
        f"{SPEC_NEW_TOKENS} new greedy tokens, draft_steps {SPEC_DRAFT_STEPS}",
    }


def train(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    start = time.perf_counter()
    teacher_path = target_dir(out_dir)
    target = checkpoint.load(teacher_path)
    sequences, teacher = build_pool(target, seed)
    pool_seconds = time.perf_counter() - start
    torch.manual_seed(seed)
    draft = model_config().build()
    settings = TrainSettings(**{**SETTINGS.__dict__, "seed": seed})

    def draw(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, sequences.shape[0], (BATCH,), generator=generator)
        return sequences[idx], teacher[idx]

    stats = train_model(draft, draw, distill_loss, settings, desc="text-lm-draft")
    metrics: dict[str, Any] = {
        "held_out_bits_per_byte": held_out_bpb(draft),
        "target_held_out_bits_per_byte": held_out_bpb(target),
        **spec_alpha(target, draft),
        "pool_seconds": pool_seconds,
        "train_seconds": stats["train_seconds"],
        "total_seconds": time.perf_counter() - start,
    }
    card = train_card(
        "draft model for greedy speculative decoding with text-lm (next-byte prediction)",
        draft,
        settings,
        {
            "batch": BATCH,
            "seq_len": SEQ_LEN,
            "teacher": "text-lm (bundled checkpoint)",
            "pool": f"{POOL_WINDOWS} train windows + {POOL_GENERATED} sequences of a "
            f"{PROMPT_LEN}-byte train prompt and the teacher's greedy continuation; teacher "
            "log-probs precomputed once",
            "loss": f"KL(teacher || draft) + CE(teacher argmax) + {DATA_CE_WEIGHT} * data CE",
            "pool_seconds": pool_seconds,
        },
        stats,
        metrics,
    )
    checkpoint.save(draft, out_dir, card=card)
    return metrics


def evaluate(path: Path) -> dict[str, Any]:
    draft = checkpoint.load(path)
    target = checkpoint.load(target_dir(path))
    return {
        "held_out_bits_per_byte": held_out_bpb(draft, seed=SPEC_SEED + 1),
        **spec_alpha(target, draft, seed=SPEC_SEED + 2),
    }
