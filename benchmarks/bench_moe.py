"""Claim 4: a top-1 MoE layer is no more than 2x slower than a dense FFN of equal FLOPs.

MOE(d=256, expert latent 1024, 8 experts, top-1) against FeedForward(256, 1024): each
token goes through one 256 -> 1024 -> 256 MLP either way (plus the MoE's 256 x 8 router).
4096 tokens as (8, 512, 256), float32, CPU. Measured side by side, interleaved:

- eval forward (inference mode; no capacity, no token dropped);
- training-mode forward (autograd on) with capacity 640 (1.25 x 4096 / 8) and 512 (1.0x,
  so that some assignments go to the overflow expert);
- training-mode forward + backward, capacity 640 (loss = output sum, + aux loss for MoE).

The claim is checked on the forward passes; forward + backward gets its own line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn

from benchmarks.harness import (
    measure,
    paired_ratio,
    parse_args,
    print_table,
    verdict,
    write_results,
)
from model_core.ffn import FeedForward
from model_core.moe import MOE

CLAIM = "top-1 MoE (8 experts) <= 2x the time of a dense FFN of the same per-token FLOPs"
TARGET = 2.0
EMBED, LATENT, EXPERTS, BATCH, SEQ = 256, 1024, 8, 8, 512
CAPACITY = int(1.25 * BATCH * SEQ / EXPERTS)  # 640: capacity factor 1.25
TIGHT_CAPACITY = BATCH * SEQ // EXPERTS  # 512: factor 1.0, some tokens overflow


def eval_forward(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            module(x)

    return run


def train_forward(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        module(x)

    return run


def train_step(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        module.zero_grad(set_to_none=True)
        out = module(x)
        # MOE returns (output, aux_loss), the dense FFN its output.
        loss = out[0].sum() + out[1] if isinstance(out, tuple) else out.sum()
        loss.backward()

    return run


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats = 3 if args.quick else 7
    torch.manual_seed(0)
    dense = FeedForward(EMBED, LATENT)
    moe = MOE(EMBED, LATENT, EXPERTS, capacity=CAPACITY, alpha=0.01, topk=1)
    x = torch.randn(BATCH, SEQ, EMBED)
    x_grad = x.clone().requires_grad_(True)

    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for mode, make, train, capacity, inp in [
        ("eval forward", eval_forward, False, CAPACITY, x),
        (f"train forward (capacity {CAPACITY})", train_forward, True, CAPACITY, x),
        (f"train forward (capacity {TIGHT_CAPACITY})", train_forward, True, TIGHT_CAPACITY, x),
        (f"train forward+backward (capacity {CAPACITY})", train_step, True, CAPACITY, x_grad),
    ]:
        dense.train(train)
        moe.train(train)
        moe.capacity = capacity
        res = measure({"dense": make(dense, inp), "moe": make(moe, inp)}, repeats=repeats)
        stats = moe.last_stats.to_dict() if moe.last_stats is not None else {}
        # Median over rounds of MoE time / dense time in the same round.
        ratio = paired_ratio(res, "moe", "dense")
        summary[mode] = {"timings": res, "moe_over_dense": ratio, "routing": stats}
        per_expert = stats.get("tokens_per_expert", [])
        rows.append(
            [
                mode,
                1e3 * res["dense"]["median_s"],
                1e3 * res["moe"]["median_s"],
                f"{ratio:.2f}x",
                f"{min(per_expert)}..{max(per_expert)}" if per_expert else "-",
                f"{100 * stats.get('overflow_fraction', 0.0):.1f}%",
            ]
        )

    print(
        f"\nMoE E={EXPERTS} top-1 vs dense FFN, d={EMBED}, latent {LATENT}, "
        f"{BATCH * SEQ} tokens ({BATCH}x{SEQ}), capacity applies in training only, float32, "
        f"threads={torch.get_num_threads()}, median of {repeats} interleaved repeats\n"
    )
    print_table(
        [
            "mode",
            "dense ms",
            "MoE ms",
            "MoE / dense (paired median)",
            "tokens per expert (min..max)",
            "overflow",
        ],
        rows,
    )
    print()
    forward_modes = [m for m in summary if "backward" not in m]
    backward_mode = next(m for m in summary if "backward" in m)
    passed = all(summary[m]["moe_over_dense"] <= TARGET for m in forward_modes)
    backward_ok = summary[backward_mode]["moe_over_dense"] <= TARGET
    detail = ", ".join(f"{m}: {summary[m]['moe_over_dense']:.2f}x" for m in forward_modes)
    line = verdict(CLAIM + " [forward, eval and train]", passed, detail)
    line_bwd = verdict(
        CLAIM + " [forward+backward]",
        backward_ok,
        f"{summary[backward_mode]['moe_over_dense']:.2f}x",
    )
    write_results(
        "moe",
        {
            "claim": CLAIM,
            "quick": args.quick,
            "config": {
                "embed_dim": EMBED,
                "latent_dim": LATENT,
                "num_experts": EXPERTS,
                "topk": 1,
                "tokens": BATCH * SEQ,
                "capacity": CAPACITY,
                "tight_capacity": TIGHT_CAPACITY,
                "repeats": repeats,
            },
            "results": summary,
            "passed": passed,
            "passed_forward_backward": backward_ok,
            "verdict": [line, line_bwd],
        },
    )


if __name__ == "__main__":
    main()
