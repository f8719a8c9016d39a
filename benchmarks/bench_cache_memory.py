"""Claim 2: the KV cache holds exactly 2 x G x S x (D/H) x bytes per element per layer.

d=256, H=8, S=512, batch 1, for MHA (G=8), GQA (G=4, G=2) and MQA (G=1), float32 and
bfloat16. The bytes are read from the cache tensors of a real model's cache after a
512-token prefill (`cache.layers[i].k.nbytes + .v.nbytes`, and the size of the storage
behind them, so that a view into a larger buffer would not pass) and compared with the
formula. Also reports the reduction against MHA.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor

from benchmarks.harness import parse_args, print_table, verdict, write_results
from model_core import AutoregressiveTransformerModel

CLAIM = "KV cache bytes per layer == 2 x G x S x (D/H) x bytes per element"
EMBED_DIM, NUM_HEADS, SEQ_LEN = 256, 8, 512
VARIANTS: list[tuple[str, str, int | None]] = [
    ("MHA", "mha", None),
    ("GQA G=4", "gqa", 4),
    ("GQA G=2", "gqa", 2),
    ("MQA", "mqa", None),
]


def storage_bytes(t: Tensor) -> int:
    return t.untyped_storage().nbytes()


@dataclass
class VariantResult:
    label: str
    groups: int
    dtype: str
    k_shape: list[int]
    bytes_per_layer: list[int]  # k.nbytes + v.nbytes of each layer
    storage_bytes_per_layer: list[int]  # bytes of the storage behind k and v
    formula_bytes_per_layer: int
    cache_nbytes_total: int
    filled_length: int
    equal: bool
    reduction_vs_mha: float = 0.0


def measure_variant(
    label: str, attention_type: str, num_groups: int | None, dtype: torch.dtype, num_layers: int
) -> VariantResult:
    torch.manual_seed(0)
    model = AutoregressiveTransformerModel(
        vocab_size=256,
        embed_dim=EMBED_DIM,
        num_layers=num_layers,
        num_heads=NUM_HEADS,
        ffn_latent_dim=4 * EMBED_DIM,
        attention_type=attention_type,
        num_groups=num_groups,
        max_seq_len=SEQ_LEN,
    )
    model = model.to(dtype).eval()
    cache = model.new_cache(1, capacity=SEQ_LEN)
    prompt = torch.randint(0, 256, (1, SEQ_LEN))
    with torch.inference_mode():
        model.step(prompt, cache)  # fill every slot: the cache is real, not just allocated
    groups = model.num_groups
    element = torch.empty((), dtype=dtype).element_size()
    formula = 2 * groups * SEQ_LEN * (EMBED_DIM // NUM_HEADS) * element
    per_layer = [layer.k.nbytes + layer.v.nbytes for layer in cache.layers]
    storage = [storage_bytes(layer.k) + storage_bytes(layer.v) for layer in cache.layers]
    equal = (
        all(b == formula for b in per_layer + storage)
        and cache.nbytes() == formula * num_layers
        and all(layer.k.dtype == dtype == layer.v.dtype for layer in cache.layers)
    )
    return VariantResult(
        label=label,
        groups=groups,
        dtype=str(dtype).removeprefix("torch."),
        k_shape=list(cache.layers[0].k.shape),
        bytes_per_layer=per_layer,
        storage_bytes_per_layer=storage,
        formula_bytes_per_layer=formula,
        cache_nbytes_total=cache.nbytes(),
        filled_length=int(cache.lengths[0]),
        equal=equal,
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    num_layers = 2 if args.quick else 4
    results: list[VariantResult] = []
    for dtype in (torch.float32, torch.bfloat16):
        for label, attention_type, groups in VARIANTS:
            r = measure_variant(label, attention_type, groups, dtype, num_layers)
            mha = next(m for m in [*results, r] if m.dtype == r.dtype and m.label == "MHA")
            r.reduction_vs_mha = 1 - r.bytes_per_layer[0] / mha.bytes_per_layer[0]
            results.append(r)
    print(
        f"\nKV cache per layer: d={EMBED_DIM}, H={NUM_HEADS}, head_dim={EMBED_DIM // NUM_HEADS}, "
        f"S={SEQ_LEN}, batch 1, {num_layers} layers checked (after a {SEQ_LEN}-token prefill)\n"
    )
    headers = [
        "attention",
        "dtype",
        "G",
        "K shape",
        "k+v nbytes",
        "k+v storage bytes",
        "formula 2*G*S*hd*bytes",
        "size",
        "reduction vs MHA",
        "equal",
    ]
    print_table(
        headers,
        [
            [
                r.label,
                r.dtype,
                r.groups,
                r.k_shape,
                r.bytes_per_layer[0],
                r.storage_bytes_per_layer[0],
                r.formula_bytes_per_layer,
                f"{r.bytes_per_layer[0] / 2**10:.0f} KiB",
                f"{100 * r.reduction_vs_mha:.1f}%",
                "yes" if r.equal else "NO",
            ]
            for r in results
        ],
    )
    print()
    passed = all(r.equal for r in results)
    line = verdict(
        CLAIM, passed, f"{len(results)} configurations, every layer measured == formula: {passed}"
    )
    config = {"embed_dim": EMBED_DIM, "num_heads": NUM_HEADS, "seq_len": SEQ_LEN, "batch": 1}
    write_results(
        "cache_memory",
        {
            "claim": CLAIM,
            "quick": args.quick,
            "config": {**config, "num_layers": num_layers},
            "results": [asdict(r) for r in results],
            "passed": passed,
            "verdict": line,
        },
    )


if __name__ == "__main__":
    main()
