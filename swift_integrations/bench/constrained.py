"""The structured-output part of ``swift-bench`` (``--constrained``): does it parse, and is it fast?

For each case of a fixed set (JSON replies to a schema; forced calls among several tools in the
Hermes ``<tool_call>`` format; ``prompts/constrained_prompts.json``), on the same prompt:

* ``free``: SWIFT without a grammar, as a prompt-only adapter would run it; the reply is parsed
  and validated against the schema (the parse rate *without* constraints);
* ``hf``: ``transformers`` ``generate`` with xgrammar's logits processor (constrained plain
  decoding, the baseline);
* ``swift``: SWIFT with the same grammar inside drafting and verification; parsed, validated, and
  compared token by token with constrained plain decoding (it must be identical): ``hf`` in
  float32; below it, the engine's own plain loop with the grammar (``speculative=False``), the
  promise at that precision (``transformers`` calls PyTorch's kernels, which round differently).

Every grammar is compiled and every step key warmed before the timed pass, so the ratio is the
steady state that a pipeline calling the same structured step again sees.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from swift_engine.decoding.constraints import CALL_BEGIN, Constraint, JsonSchemaConstraint, ToolCallConstraint

logger = logging.getLogger(__name__)

__all__ = [
    "ConstrainedCase",
    "load_cases",
    "run_constrained_benchmark",
    "render_constrained_markdown",
    "validate_reply",
]


@dataclass(frozen=True)
class ConstrainedCase:
    id: str
    kind: str  # "json" | "tools"
    messages: list[dict[str, str]]
    schema: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None

    @property
    def prefill(self) -> str:
        """What the reply starts with in the prompt (a forced call's opening, as the adapters do)."""
        return CALL_BEGIN if self.kind == "tools" else ""

    def constraint(self) -> Constraint:
        if self.kind == "json":
            return JsonSchemaConstraint(self.schema)
        return ToolCallConstraint(tools=tuple(self.tools or ()), mode="required", prefilled=self.prefill)


def load_cases(path: str | Path | None = None) -> list[ConstrainedCase]:
    """The structured-output cases (default: the packaged set)."""
    if path is None:
        prompts = resources.files("swift_integrations.bench").joinpath("prompts/constrained_prompts.json")
        text = prompts.read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    cases = []
    for item in json.loads(text)["cases"]:
        if item["kind"] not in ("json", "tools"):
            raise ValueError(f"case {item.get('id')!r}: kind must be 'json' or 'tools'")
        cases.append(ConstrainedCase(item["id"], item["kind"], item["messages"], item.get("schema"), item.get("tools")))
    return cases


def validate_reply(case: ConstrainedCase, text: str) -> tuple[bool, bool, str | None]:
    """``(parses, valid, error)`` of a reply (``text`` without the prefill).

    Lenient the way the adapters' parser is (prose or a code fence around the value, text after
    it, a missing closing tag are forgiven): JSON cases need a JSON object that validates against
    the schema; tool cases a ``<tool_call>`` followed by ``{"name", "arguments"}`` naming a known
    tool, arguments valid against its parameters.
    """
    import jsonschema

    full = case.prefill + text
    try:
        if case.kind == "json":
            data = _first_json(full)
            schema = case.schema
        else:
            start = full.find(CALL_BEGIN.strip())
            if start < 0:
                return False, False, "no <tool_call> block"
            call = _first_json(full[start + len(CALL_BEGIN.strip()) :])
            if not isinstance(call, dict) or "name" not in call:
                return True, False, "call without a name"
            specs = {t["name"]: t["parameters"] for t in case.tools or []}
            if call["name"] not in specs:
                return True, False, f"unknown tool {call['name']!r}"
            data, schema = call.get("arguments"), specs[call["name"]]
    except (json.JSONDecodeError, ValueError) as exc:
        return False, False, f"not JSON: {exc}"[:200]
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        return True, False, f"schema: {exc.message}"[:200]
    return True, True, None


def _first_json(text: str) -> Any:
    """The first JSON object in ``text`` (what follows it is ignored)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object")
    return json.JSONDecoder().raw_decode(text[start:])[0]


@dataclass
class CaseResult:
    id: str
    kind: str
    prompt_tokens: int
    free: dict[str, Any] = field(default_factory=dict)
    hf: dict[str, Any] = field(default_factory=dict)
    swift: dict[str, Any] = field(default_factory=dict)
    exact: bool | None = None
    speedup: float | None = None


def _prompt_ids(engine: Any, case: ConstrainedCase) -> list[int]:
    tok = engine.tokenizer
    text = tok.apply_chat_template(case.messages, tokenize=False, add_generation_prompt=True) + case.prefill
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _strip_eos(engine: Any, ids: list[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in engine.eos_ids else ids


def run_constrained_benchmark(
    bench: Any, cases: Sequence[ConstrainedCase], max_new_tokens: int = 96, progress: Any = None
) -> dict[str, Any]:
    """Measure every case (see the module docs); ``bench`` is the :class:`swift_integrations.bench.measure.Bench`."""
    from xgrammar.contrib.hf import LogitsProcessor

    engine = bench.engine
    results: list[CaseResult] = []
    prepared = []
    for case in cases:  # compile grammars, warm every step key (untimed)
        ids = _prompt_ids(engine, case)
        spec = case.constraint()
        engine.grammars.compile(spec)
        key = f"constrained:{case.kind}"
        engine.generate(ids, max_new_tokens=max_new_tokens, step_key=key, constraint=spec)
        prepared.append((case, ids, spec, key))
        if progress is not None:
            progress.update(1)
    for case, ids, spec, key in prepared:
        res = CaseResult(case.id, case.kind, len(ids))
        free = engine.generate(ids, max_new_tokens=max_new_tokens, step_key=f"free:{case.kind}")
        ok, valid, err = validate_reply(case, free.text)
        res.free = {
            "parses": ok,
            "valid": valid,
            "error": err,
            "new_tokens": free.stats.new_tokens,
            "finish_reason": free.finish_reason,
        }

        processor = LogitsProcessor(engine.grammars.compile(spec))
        tokens, wall, _ = bench.generate_hf(ids, "hf", max_new_tokens, logits_processor=[processor])
        hf_tokens = _strip_eos(engine, tokens)
        res.hf = {
            "new_tokens": len(tokens),
            "wall_time_s": wall,
            "tokens_per_s": len(tokens) / wall if wall > 0 else 0.0,
        }

        bench._sync()
        t0 = time.perf_counter()
        out = engine.generate(ids, max_new_tokens=max_new_tokens, step_key=key, constraint=spec)
        bench._sync()
        wall = time.perf_counter() - t0
        ok, valid, err = validate_reply(case, out.text)
        n = len(out.token_ids)
        res.swift = {
            "parses": ok,
            "valid": valid,
            "error": err,
            "new_tokens": n,
            "finish_reason": out.finish_reason,
            "wall_time_s": wall,
            "tokens_per_s": n / wall if wall > 0 else 0.0,
            "acceptance_rate": out.stats.acceptance_rate,
            "mean_accepted_per_step": out.stats.mean_accepted_per_step,
            "mode": out.stats.mode,
            "grammar_closing_tokens": out.stats.grammar_closing_tokens,
            "text": out.text,
        }
        model_part = list(out.token_ids)[: n - out.stats.grammar_closing_tokens]  # closing tokens are not the model's
        if engine.runner.precision == "float32":
            reference, what = hf_tokens, "transformers"
        else:
            plain = engine.generate(ids, max_new_tokens=max_new_tokens, constraint=spec, speculative=False)
            plain_part = list(plain.token_ids)[: len(plain.token_ids) - plain.stats.grammar_closing_tokens]
            reference, what = _strip_eos(engine, plain_part), "the engine's plain loop"
        res.exact = _strip_eos(engine, model_part) == reference
        if not res.exact:
            logger.error("constrained SWIFT differs from constrained decoding by %s on %s", what, case.id)
        if res.hf["tokens_per_s"]:
            res.speedup = res.swift["tokens_per_s"] / res.hf["tokens_per_s"]
        results.append(res)
        if progress is not None:
            progress.update(1)
    return summarize(results)


def _throughput(rows: Sequence[CaseResult], part: str) -> float:
    """Tokens per second over all ``rows`` together (long replies weigh more than in a median)."""
    wall = sum(getattr(r, part)["wall_time_s"] for r in rows)
    return sum(getattr(r, part)["new_tokens"] for r in rows) / wall if wall > 0 else 0.0


def summarize(results: Sequence[CaseResult]) -> dict[str, Any]:
    def rate(rows: Sequence[CaseResult], part: str, key: str) -> float | None:
        return sum(bool(getattr(r, part)[key]) for r in rows) / len(rows) if rows else None

    summary: dict[str, Any] = {}
    for kind in ("json", "tools", "all"):
        rows = [r for r in results if kind == "all" or r.kind == kind]
        if not rows:
            continue
        speedups = [r.speedup for r in rows if r.speedup]
        summary[kind] = {
            "cases": len(rows),
            "free_parse_rate": rate(rows, "free", "parses"),
            "free_valid_rate": rate(rows, "free", "valid"),
            "constrained_parse_rate": rate(rows, "swift", "parses"),
            "constrained_valid_rate": rate(rows, "swift", "valid"),
            "exact": all(r.exact for r in rows),
            "hf_tokens_per_s": statistics.median(r.hf["tokens_per_s"] for r in rows),
            "swift_tokens_per_s": statistics.median(r.swift["tokens_per_s"] for r in rows),
            "median_speedup_vs_hf": statistics.median(speedups) if speedups else None,
            "total_speedup_vs_hf": _throughput(rows, "swift") / _throughput(rows, "hf")
            if _throughput(rows, "hf")
            else None,
        }
    return {"cases": [asdict(r) for r in results], "summary": summary}


def render_constrained_markdown(data: dict[str, Any]) -> str:
    """The per-case table and the summary lines, as markdown."""
    lines = [
        "| case | kind | parses (free) | valid (free) | parses (grammar) | valid (grammar) "
        "| hf+grammar tok/s | SWIFT+grammar tok/s | speed-up | exact |",
        "|---|---|:-:|:-:|:-:|:-:|---:|---:|---:|:-:|",
    ]
    yn = {True: "yes", False: "no", None: "-"}
    for r in data["cases"]:
        lines.append(
            f"| {r['id']} | {r['kind']} | {yn[r['free']['parses']]} | {yn[r['free']['valid']]} | "
            f"{yn[r['swift']['parses']]} | "
            f"{yn[r['swift']['valid']]} | {r['hf']['tokens_per_s']:.1f} | {r['swift']['tokens_per_s']:.1f} | "
            f"{(r['speedup'] or 0):.2f}x | {yn[r['exact']]} |"
        )
    lines.append("")
    for kind, s in data["summary"].items():
        lines.append(
            f"- **{kind}** ({s['cases']} cases): valid without grammar {s['free_valid_rate']:.0%} "
            f"(parses {s['free_parse_rate']:.0%}), "
            f"with grammar {s['constrained_valid_rate']:.0%}; SWIFT+grammar vs transformers+grammar: median "
            f"{(s['median_speedup_vs_hf'] or 0):.2f}x, overall {(s['total_speedup_vs_hf'] or 0):.2f}x; "
            f"token-identical: {yn[s['exact']]}"
        )
    return "\n".join(lines) + "\n"
