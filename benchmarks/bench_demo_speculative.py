"""Speculative decoding with the bundled demo pair: text-lm (target) + text-lm-draft.

Both are byte-level models trained on the Python standard library's source (see their
card.json). Prompts are windows of held-out stdlib files (never trained on), batch 1,
PROMPT_LEN bytes each, NEW_TOKENS greedy tokens. Measured, CPU float32:
- alpha (accepted / proposals tested) and tokens per round, per draft_steps g in 2..6;
- c: draft step time / target step time (cached greedy decoding of NEW_TOKENS tokens with
  `model.generate`, per token), and verify cost: a (g + 1)-token target step / a one-token
  step;
- speedup: time of `target.generate` (target alone, cached greedy) / time of
  `speculative_generate`, summed over the prompts, from interleaved repeats (harness.measure;
  the median over rounds of the paired ratio), both including the prefill;
- predicted: Leviathan et al.'s (1 - alpha^(g+1)) / ((1 - alpha)(g c + 1)) and the refined
  tokens-per-round / (g c + verify cost).
The benchmark picks the g with the best measured speedup. Every speculative output is
checked to equal the target's own greedy output.

Run: `.venv/bin/python benchmarks/bench_demo_speculative.py [--quick] [--threads N]`;
writes benchmarks/results/demo_speculative.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn

from benchmarks.harness import (
    REPO_ROOT,
    measure,
    paired_ratio,
    parse_args,
    print_table,
    verdict,
    write_results,
)
from model_core import checkpoint
from model_core.recipes.text_corpus import held_out_windows, load_corpus
from model_core.spec_decoding import predicted_speedup, speculative_generate

MODELS = REPO_ROOT / "demo_models"
PROMPT_LEN = 128
NEW_TOKENS = 128
DRAFT_STEPS = (2, 3, 4, 5, 6)
PROMPT_SEED = 40_000  # held-out windows, a seed no recipe trains or evaluates with


@torch.inference_mode()
def step_seconds(model: nn.Module, prompt: Tensor, width: int, steps: int = 64) -> float:
    """Seconds per cached greedy step of `width` tokens, keeping one token per step and
    rolling the rest back, as a verification round does."""
    cache = model.new_cache(1, capacity=prompt.shape[1] + steps + width)
    last = model.step(prompt, cache)[:, -1]
    filler = prompt[:, : width - 1]
    start = time.perf_counter()
    for _ in range(steps):
        x = torch.cat([last.argmax(dim=-1, keepdim=True), filler], dim=1)
        last = model.step(x, cache)[:, -1]
        if width > 1:
            cache.rollback(cache.lengths - (width - 1))
    return (time.perf_counter() - start) / steps


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n_prompts, repeats = (2, 3) if args.quick else (4, 5)
    target = checkpoint.load(MODELS / "text-lm")
    draft = checkpoint.load(MODELS / "text-lm-draft")
    prompts, _ = held_out_windows(load_corpus().held_out, n_prompts, PROMPT_LEN, PROMPT_SEED)
    prompts = prompts[:, None]  # each (1, PROMPT_LEN)

    references = [target.generate(p, NEW_TOKENS) for p in prompts]
    stats: dict[int, dict[str, float]] = {}
    identical = True
    for g in DRAFT_STEPS:
        accepted = rejected = rounds = 0
        for p, ref in zip(prompts, references, strict=True):
            out, st = speculative_generate(target, draft, p, NEW_TOKENS, draft_steps=g)
            identical &= bool(torch.equal(out, ref))
            accepted += int(st.accepted.sum())
            rejected += int(st.rejected.sum())
            rounds += int(st.rounds.sum())
        stats[g] = {
            "alpha": accepted / max(1, accepted + rejected),
            "tokens_per_round": (accepted + rounds) / max(1, rounds),
        }

    widths = sorted({1, *(g + 1 for g in DRAFT_STEPS)})
    cost_fns: dict[str, Any] = {"draft_1": lambda: step_seconds(draft, prompts[0], 1)}
    cost_fns |= {f"target_{w}": lambda w=w: step_seconds(target, prompts[0], w) for w in widths}
    costs = measure(cost_fns, repeats=repeats, warmup=1)
    target_step = costs["target_1"]["min_s"]
    c = costs["draft_1"]["min_s"] / target_step

    def target_alone() -> None:
        for p in prompts:
            target.generate(p, NEW_TOKENS)

    def spec(g: int) -> None:
        for p in prompts:
            speculative_generate(target, draft, p, NEW_TOKENS, draft_steps=g)

    fns: dict[str, Any] = {"target": target_alone}
    fns |= {f"spec_g{g}": lambda g=g: spec(g) for g in DRAFT_STEPS}
    timings = measure(fns, repeats=repeats, warmup=1)

    rows_out = []
    for g in DRAFT_STEPS:
        alpha, tpr = stats[g]["alpha"], stats[g]["tokens_per_round"]
        verify = costs[f"target_{g + 1}"]["min_s"] / target_step
        rows_out.append(
            {
                "draft_steps": g,
                "alpha": alpha,
                "tokens_per_round": tpr,
                "c": c,
                "verify_cost": verify,
                "target_s": timings["target"]["median_s"],
                "spec_s": timings[f"spec_g{g}"]["median_s"],
                "speedup": paired_ratio(timings, "target", f"spec_g{g}"),
                "predicted": predicted_speedup(alpha, g, c),
                "predicted_refined": tpr / (g * c + verify),
            }
        )
    headers = ["g", "alpha", "tok/round", "c", "verify", "target s", "spec s", "speedup"]
    headers += ["predicted", "refined"]
    print(
        f"text-lm + text-lm-draft, batch 1, {n_prompts} held-out prompts of {PROMPT_LEN} "
        f"bytes, {NEW_TOKENS} new greedy tokens, {torch.get_num_threads()} thread(s)"
    )
    print_table(headers, [list(r.values()) for r in rows_out])
    best = max(rows_out, key=lambda r: r["speedup"])
    print(f"chosen draft_steps: {best['draft_steps']}")
    verdicts = [
        verdict("outputs equal the target's greedy output", identical, f"{len(DRAFT_STEPS)} g"),
        verdict("alpha >= 0.6", best["alpha"] >= 0.6, f"alpha {best['alpha']:.3f}"),
        verdict(
            "speedup >= 1.5x",
            best["speedup"] >= 1.5,
            f"{best['speedup']:.2f}x at g={best['draft_steps']}",
        ),
    ]
    write_results(
        "demo_speculative",
        {
            "setup": {
                "target": "demo_models/text-lm",
                "draft": "demo_models/text-lm-draft",
                "batch": 1,
                "prompts": n_prompts,
                "prompt_len": PROMPT_LEN,
                "prompt_seed": PROMPT_SEED,
                "new_tokens": NEW_TOKENS,
                "repeats": repeats,
                "threads": torch.get_num_threads(),
            },
            "step_seconds_min": {k: v["min_s"] for k, v in costs.items()},
            "outputs_equal_target_greedy": identical,
            "rows": rows_out,
            "chosen": best,
            "verdicts": verdicts,
            "timings": timings,
        },
    )


if __name__ == "__main__":
    main()
