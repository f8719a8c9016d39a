"""The specification's Python examples run as written and give what the document states.

The examples are read from docs/SPEC-model-core.md itself: every ```python block, with the
section ("## " heading, or one of the "### " sections named in SUBSECTIONS) it sits under.
The blocks of a section run in order in one namespace (later blocks reuse earlier names),
with `transformer.` / `regression.` imports mapped to `model_core.`. What the document uses
without defining is given in GIVEN; the shapes it documents (`# [32, 1]` comments) and
the results it describes are asserted in CHECKS, one check per example.
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from model_core.attention import MultiHeadAttention

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "SPEC-model-core.md"
SHARED_SPEC = ROOT.parent / "shared" / "SPEC-model-core.md"

SECTIONS = (
    "Usage",
    "Causal Masking",
    "KV Caching",
    "Attention Mechanisms",
    "Attention Factory",
    "Mixture of Experts (MOE)",
    "Speculative Decoding",
)
# "### " headings that are sections of their own (elsewhere a section is a "## " heading).
SUBSECTIONS = frozenset({"Causal Masking", "Attention Factory"})

# Pseudo-code in the document that cannot run as written: (section, first line). Each entry
# must match exactly one example, and must still fail with a NameError when run.
PSEUDO_CODE = frozenset(
    {
        # "Algorithm Overview": phase sketches over draft_model, draft_steps, draft_sequence,
        # accepted_count, ... which the document never defines.
        ("Speculative Decoding", "for step in range(draft_steps):"),
        ("Speculative Decoding", "# Process all draft tokens at once with target model"),
        ("Speculative Decoding", "for k in range(draft_steps):"),
        ("Speculative Decoding", "for k in range(accepted_count, draft_steps):"),
        # "Configuration Best Practices": value ranges (`num_layers=1 - 2`) and an undefined
        # `embed_dim` (`latent_dim=embed_dim * 2`, `capacity=embed_dim`).
        ("Speculative Decoding", "draft_config = TransformerModelConfig("),
        ("Speculative Decoding", "target_config = TransformerModelConfig("),
    }
)

ATOL = 1e-5


@dataclass(frozen=True)
class Example:
    section: str
    heading: str  # the nearest heading of any level
    code: str

    @property
    def first_line(self) -> str:
        return self.code.splitlines()[0]

    @property
    def runnable_code(self) -> str:
        """The code with the specification's package names mapped to model_core."""
        return re.sub(
            r"^(\s*(?:from|import)\s+)(?:transformer|regression)\b",
            r"\1model_core",
            self.code,
            flags=re.MULTILINE,
        )


def markdown_items(text: str) -> Iterator[tuple[str, str, str]]:
    """("line", line, "") for each line outside code blocks and ("code", info, code) for
    each fenced block (info: what follows the opening ```), in document order."""
    lines = iter(text.splitlines())
    for line in lines:
        if not line.startswith("```"):
            yield "line", line, ""
            continue
        body = []
        for inner in lines:
            if inner.startswith("```"):
                break
            body.append(inner)
        yield "code", line[3:].strip(), "\n".join(body) + "\n"


def parse_examples(text: str) -> list[Example]:
    examples: list[Example] = []
    chapter = section = heading = ""
    for kind, first, code in markdown_items(text):
        if kind == "line" and (match := re.match(r"(#{2,6}) (.+)", first)):
            level, heading = len(match[1]), match[2].strip()
            if level == 2:
                chapter = section = heading
            elif level == 3:
                section = heading if heading in SUBSECTIONS else chapter
        elif kind == "code" and first == "python" and section in SECTIONS:
            examples.append(Example(section, heading, code))
    return examples


EXAMPLES = parse_examples(SPEC.read_text())


def _is_pseudo_code(example: Example) -> bool:
    return (example.section, example.first_line) in PSEUDO_CODE


# ---- what the document uses without defining, per section ---------------------------------


def _causal_masking_inputs() -> dict[str, Any]:
    q, k, v = (torch.randn(2, 4, 10, 16) for _ in range(3))  # (B, H, T, hd)
    return {"query": q, "key": k, "value": v}


def _moe_training_inputs() -> dict[str, Any]:
    # "Integration with Transformer" uses MultiHeadAttention without importing it;
    # "Training with Load Balancing" a dataloader and a criterion it does not define.
    batches = [(torch.randn(2, 8, 512), torch.randn(2, 8, 512))]  # (inputs, targets)
    return {
        "MultiHeadAttention": MultiHeadAttention,
        "dataloader": batches,
        "criterion": nn.MSELoss(),
    }


GIVEN: dict[str, Callable[[], dict[str, Any]]] = {
    "Causal Masking": _causal_masking_inputs,
    # "Context Management Modes" feeds `tokens` to the value model of "Basic KV Caching".
    "KV Caching": lambda: {"tokens": torch.randn(1, 1, 1)},
    "Mixture of Experts (MOE)": _moe_training_inputs,
}


# ---- what the document states, per example --------------------------------------------


def _shape(ns: dict[str, Any], name: str, shape: tuple[int, ...]) -> None:
    assert tuple(ns[name].shape) == shape, f"{name}: {tuple(ns[name].shape)} != {shape}"


def _uncached(model: nn.Module, run: Callable[[], Tensor]) -> Tensor:
    """`run()` with the model's stateful cache turned off: the recomputing oracle."""
    decode = model.config.decode_config
    saved, decode.use_kv_cache = decode.use_kv_cache, False
    try:
        with torch.no_grad():
            return run()
    finally:
        decode.use_kv_cache = saved


def check_regression(ns: dict[str, Any]) -> None:
    _shape(ns, "output", (32, 1))  # "[32, 1] - scalar prediction"


def check_autoregressive(ns: dict[str, Any]) -> None:
    _shape(ns, "output", (32, 16, 1))
    _shape(ns, "next_token", (32, 1, 1))
    # The next value is the model's output at the last position.
    torch.testing.assert_close(ns["next_token"], ns["output"][:, -1:].detach(), atol=ATOL, rtol=0)


def check_encoder_decoder(ns: dict[str, Any]) -> None:
    _shape(ns, "encoder_output", (32, 16, 64))
    _shape(ns, "decoder_output", (32, 20, 1))
    _shape(ns, "output", (32, 20, 1))
    torch.testing.assert_close(ns["output"], ns["decoder_output"], atol=ATOL, rtol=0)


def check_causal_masking(ns: dict[str, Any]) -> None:
    mask = ns["mask"]
    assert torch.equal(mask.bool(), torch.ones(10, 10, dtype=torch.bool).tril())
    _shape(ns, "attention_output", (2, 4, 10, 16))
    q, k, v = ns["query"], ns["key"], ns["value"]
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~mask, -math.inf)
    expected = scores.softmax(dim=-1) @ v
    torch.testing.assert_close(ns["attention_output"], expected, atol=ATOL, rtol=0)


def check_basic_kv_caching(ns: dict[str, Any]) -> None:
    _shape(ns, "output1", (1, 10, 1))  # one output per position computed
    _shape(ns, "output2", (1, 1, 1))
    model = ns["model"]
    sequence = torch.cat([ns["initial_sequence"], ns["next_token"]], dim=1)
    full = _uncached(model, lambda: model(sequence))
    cached = torch.cat([ns["output1"], ns["output2"]], dim=1)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)


def check_encoder_decoder_kv_caching(ns: dict[str, Any]) -> None:
    _shape(ns, "encoder_output", (1, 20, 64))
    _shape(ns, "target", (1, 11, 1))  # the start token and ten generated values
    model, target, memory = ns["model"], ns["target"], ns["encoder_output"]
    # Each generated value is the teacher-forced decoder output at the previous position.
    recomputed = _uncached(model, lambda: model.decode(target[:, :-1], memory))
    torch.testing.assert_close(target[:, 1:], recomputed, atol=ATOL, rtol=0)


def _attention_check(groups: int) -> Callable[[dict[str, Any]], None]:
    def check(ns: dict[str, Any]) -> None:
        attn = ns["attn"]
        assert (attn.num_heads, attn.num_groups) == (8, groups)
        x = torch.randn(2, 5, 64)
        assert attn(x, x, x).shape == (2, 5, 64)

    return check


def check_attention_factory(ns: dict[str, Any]) -> None:
    groups = {"mha": 8, "mqa": 1, "gqa": 4, "gqa_mqa_like": 1, "gqa_balanced": 4, "gqa_mha_like": 8}
    assert {name: ns[name].num_groups for name in groups} == groups
    assert all(ns[name].use_kv_cache for name in ("mha", "mqa", "gqa"))


def check_basic_moe(ns: dict[str, Any]) -> None:
    _shape(ns, "output", (4, 32, 512))  # torch.Size([4, 32, 512])
    aux = ns["aux_loss"]
    assert aux.dim() == 0 and aux.item() > 0


def check_moe_integration(ns: dict[str, Any]) -> None:
    layer = ns["TransformerWithMOE"](embed_dim=64, num_experts=4)
    out, aux = layer(torch.randn(2, 3, 64))
    assert out.shape == (2, 3, 64) and aux.dim() == 0


def check_moe_training(ns: dict[str, Any]) -> None:
    _shape(ns, "outputs", (2, 8, 512))
    assert ns["aux_loss"].dim() == 0 and ns["aux_loss"].item() > 0
    assert math.isfinite(ns["total_loss"].item())
    grad = ns["model"].moe.router.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # the loss reaches the router


def check_spec_setup(ns: dict[str, Any]) -> None:
    pair = ns["model"]
    assert isinstance(pair, ns["SpecDecodingPair"]) and pair.draft_steps == 5


def check_spec_generation(ns: dict[str, Any]) -> None:
    _shape(ns, "output", (2, ns["num_tokens"]))  # the generated token ids
    pair, output = ns["model"], ns["output"]
    assert output.dtype == torch.long and output.min() >= 0 and output.max() < 1000
    # "Mathematically equivalent output to target model": greedy (the default) speculative
    # decoding gives the target's own greedy tokens.
    target_only = pair.target.generate(ns["input_sequence"], ns["num_tokens"])
    assert torch.equal(output, target_only)


def check_spec_configs_valid(ns: dict[str, Any]) -> None:
    """The document's edits of the two configs leave them valid."""
    for name in ("draft_config", "target_config"):
        ns[name].validate()


def check_spec_moe(ns: dict[str, Any]) -> None:
    check_spec_configs_valid(ns)
    ffn = ns["target_config"].ffn_config
    assert (ffn.use_moe, ffn.num_experts, ffn.topk) == (True, 8, 2)
    assert not ns["draft_config"].ffn_config.use_moe


# None: the example assigns no result to check (it only has to run).
CHECKS: dict[tuple[str, str], Callable[[dict[str, Any]], None] | None] = {
    ("Usage", "Regression Model"): check_regression,
    ("Usage", "Autoregressive Model"): check_autoregressive,
    ("Usage", "Encoder-Decoder Model"): check_encoder_decoder,
    ("Causal Masking", "Causal Masking"): check_causal_masking,
    ("KV Caching", "Basic KV Caching"): check_basic_kv_caching,
    ("KV Caching", "Context Management Modes"): None,
    ("KV Caching", "Encoder-Decoder KV Caching"): check_encoder_decoder_kv_caching,
    ("Attention Mechanisms", "Multi-Head Attention (MHA)"): _attention_check(groups=8),
    ("Attention Mechanisms", "Multi-Query Attention (MQA)"): _attention_check(groups=1),
    ("Attention Mechanisms", "Group Query Attention (GQA)"): _attention_check(groups=4),
    ("Attention Factory", "Attention Factory"): check_attention_factory,
    ("Mixture of Experts (MOE)", "Basic MOE Layer"): check_basic_moe,
    ("Mixture of Experts (MOE)", "Integration with Transformer"): check_moe_integration,
    ("Mixture of Experts (MOE)", "Training with Load Balancing"): check_moe_training,
    ("Speculative Decoding", "Basic Setup"): check_spec_setup,
    ("Speculative Decoding", "Generation"): check_spec_generation,
    ("Speculative Decoding", "With KV Caching"): check_spec_configs_valid,
    ("Speculative Decoding", "With MOE"): check_spec_moe,
    ("Speculative Decoding", "With Different Attention Types"): check_spec_configs_valid,
}


# ---- the tests --------------------------------------------------------------------------


def test_every_section_has_examples_and_every_example_a_check() -> None:
    assert sorted({e.section for e in EXAMPLES}) == sorted(SECTIONS)
    runnable = {(e.section, e.heading) for e in EXAMPLES if not _is_pseudo_code(e)}
    assert runnable == set(CHECKS)


def test_pseudo_code_allow_list_names_existing_examples() -> None:
    for entry in PSEUDO_CODE:
        matches = [e for e in EXAMPLES if (e.section, e.first_line) == entry]
        assert len(matches) == 1, f"{entry} matches {len(matches)} examples"


@pytest.mark.parametrize("section", SECTIONS)
def test_section_examples_run(section: str) -> None:
    namespace: dict[str, Any] = {"torch": torch, **GIVEN.get(section, dict)()}
    examples = [e for e in EXAMPLES if e.section == section]
    for example in examples:
        if _is_pseudo_code(example):
            continue
        code = compile(example.runnable_code, f"<{section}: {example.heading}>", "exec")
        exec(code, namespace)
        check = CHECKS[(section, example.heading)]
        if check is not None:
            check(namespace)
    # The skipped sketches still cannot run: when the document fixes one, drop its entry.
    for example in filter(_is_pseudo_code, examples):
        with pytest.raises(NameError):
            exec(example.runnable_code, dict(namespace))


# ---- the copy of the specification -------------------------------------------------------


def _comparable(text: str) -> list[tuple[str, object]]:
    """The document as items to compare: lines and non-Python blocks exactly, a Python
    block as its syntax tree and its comments, so that `ruff format` (which `make lint`
    applies to the docs/ copy) does not count as a change."""
    text = re.sub(r"\A<!--.*?-->\n+", "", text, flags=re.DOTALL)  # the copy's note on imports
    items: list[tuple[str, object]] = []
    for kind, first, code in markdown_items(text):
        if kind == "code" and first == "python":
            comments = [
                tok.string.strip()
                for tok in tokenize.generate_tokens(io.StringIO(code).readline)
                if tok.type == tokenize.COMMENT
            ]
            items.append(("python", (ast.dump(ast.parse(code)), comments)))
        else:
            items.append((kind, (first, code)))
    return items


@pytest.mark.skipif(not SHARED_SPEC.exists(), reason="no ../shared/SPEC-model-core.md here")
def test_docs_copy_matches_shared_specification() -> None:
    ours, shared = _comparable(SPEC.read_text()), _comparable(SHARED_SPEC.read_text())
    for i, (mine, theirs) in enumerate(zip(ours, shared, strict=False)):
        assert mine == theirs, f"item {i} differs"
    assert len(ours) == len(shared)
