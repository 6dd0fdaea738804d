"""The report of ``swift-bench``: its tables as text, rich or markdown, and the files it writes.

Everything here reads the result dict (:func:`swift_integrations.bench.runner.run_benchmark`, or
a ``--json`` file written by an earlier run), never the engine: a result can be re-rendered
later, as the notebooks do. :func:`build_tables` holds the content of the report once;
:func:`render_text` and :func:`print_report` lay it out, :func:`render_markdown` is the per-class
table of the README, and :func:`write_outputs` is what the command prints and writes at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from swift_integrations.bench.methods import INEXACT_BASELINES, SWIFT_METHODS

#: The methods' short names, in column heads and cells.
_SHORT = {
    "hf": "hf",
    "hf_lookup": "lookup",
    "llama_cpp": "llama.cpp",
    "plain": "plain",
    "swift_cold": "cold",
    "swift_warm": "warm",
}


def _fmt(v: Any, spec: str = ".1f", suffix: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, (int, float)):
        return f"{v:{spec}}{suffix}"
    return str(v)


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:.1f} MiB"


def _inexact(result: dict[str, Any]) -> tuple[str, ...]:
    """The methods of ``result`` allowed to differ from its reference (older results: the float32 set)."""
    return tuple(result["exactness"].get("inexact", INEXACT_BASELINES))


def _exact_cell(exact: dict[str, bool | None], methods: Sequence[str], inexact: Sequence[str]) -> str:
    bad = [_SHORT[m] for m in methods if m not in inexact and exact.get(m) is False]
    differ = [_SHORT[m] for m in inexact if exact.get(m) is False]
    if not bad and not differ:
        return "yes"
    if not bad:  # only baselines that may differ (their own numerics or precision): not a failure
        return "yes (differ: " + ", ".join(differ) + ")"
    return "NO: " + ", ".join(bad + differ)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    #: indices of rows to emphasise (class medians)
    strong: set[int] = field(default_factory=set)


def build_tables(result: dict[str, Any]) -> list[Table]:
    methods = result["methods"]
    baselines = result["baselines"]
    per_class = {c["class"]: c for c in result["per_class"]}

    thr = Table(
        "Throughput (tokens/s; median; class rows are medians over prompts)",
        ["class", "prompt", "in tok", "out tok", *[_SHORT[m] for m in methods], "exact"],
    )
    spd = Table(
        "SWIFT speed-up (paired with the same round's baseline run; median)",
        ["class", "prompt", *[f"{s} / {_SHORT[b]}" for s in ("warm", "cold") for b in baselines]],
    )
    keys = [f"{s}_vs_{b}" for s in SWIFT_METHODS[::-1] for b in baselines]
    for cls in result["classes"]:
        for row in (r for r in result["per_prompt"] if r["class"] == cls):
            thr.rows.append(
                [
                    cls,
                    row["prompt_id"],
                    str(row["prompt_tokens"]),
                    str(row["new_tokens"]),
                    *[_fmt(row["tokens_per_s"][m]) for m in methods],
                    _exact_cell(row["exact"], methods, _inexact(result)),
                ]
            )
            spd.rows.append([cls, row["prompt_id"], *[_fmt(row["speedup"][k], ".2f", "x") for k in keys]])
        c = per_class[cls]
        thr.strong.add(len(thr.rows))
        thr.rows.append(
            [
                cls,
                "median",
                "",
                "",
                *[_fmt(c["tokens_per_s"][m]) for m in methods],
                _exact_cell(c["exact"], methods, _inexact(result)),
            ]
        )
        spd.strong.add(len(spd.rows))
        spd.rows.append([cls, "median", *[_fmt(c["speedup"][k], ".2f", "x") for k in keys]])
    if len(result["classes"]) > 1:
        o = result["overall"]
        thr.strong.add(len(thr.rows))
        thr.rows.append(["all", "median", "", "", *[_fmt(o["tokens_per_s"][m]) for m in methods], ""])
        spd.strong.add(len(spd.rows))
        spd.rows.append(["all", "median", *[_fmt(o["speedup"][k], ".2f", "x") for k in keys]])

    sw = Table(
        "SWIFT per class (mode/skip: the layer-skip profile after the warm phase; w/c = warm/cold medians; "
        "ctx share: accepted drafts from the context; tokens to 90% of the final expected speed-up: "
        "~estimate (<= call-level bound); ceiling: best expected layer-skip speed-up of any set the search "
        "scored, from the measured costs; reached: warm vs plain / max(1, ceiling))",
        [
            "class",
            "mode",
            "skip (att/mlp)",
            "exp. x",
            "accept w/c",
            "ctx share",
            "tok/step w/c",
            "search it c/w",
            "tok to 90%",
            "ceiling",
            "reached",
            "conv.",
        ],
    )
    for cls in result["classes"]:
        c = per_class[cls]
        prof = c["profile"] or {}
        t90 = c["tokens_to_90"]
        t90_cell = "-" if t90["tokens"] is None else f"~{t90['tokens']}"
        if t90["tokens_call_bound"] is not None:
            t90_cell += f" (<={t90['tokens_call_bound']})"
        w, cc = c["swift_warm"], c["swift_cold"]
        ran = "/".join(w["modes"])
        sw.rows.append(
            [
                cls,
                prof.get("mode", "-") + ("" if w["modes"] in ([], [prof.get("mode")]) else f" (ran {ran})"),
                f"{_fmt(prof['skip_ratio'], '.2f')} ({len(prof['skip_attention'])}/{len(prof['skip_mlp'])})"
                if prof
                else "-",
                _fmt(prof.get("expected_speedup"), ".2f", "x"),
                f"{_fmt(w['acceptance_rate'], '.2f')} / {_fmt(cc['acceptance_rate'], '.2f')}",
                _fmt(w["context_share"], ".2f"),
                f"{_fmt(w['mean_accepted_per_step'], '.2f')} / {_fmt(cc['mean_accepted_per_step'], '.2f')}",
                f"{cc['search_iterations']} / {w['search_iterations']}",
                t90_cell,
                _fmt(c["ceiling"]["skip_ceiling"], ".2f", "x"),
                _fmt(None if c["ceiling"]["reached"] is None else 100 * c["ceiling"]["reached"], ".0f", "%"),
                ("yes" if prof.get("converged") else "no") if prof else "-",
            ]
        )

    per_request = Table(
        "Per request (medians of each class's runs): seconds end to end / prefill tok/s / decode tok/s "
        "(prefill and decode where the method reports its prefill time)",
        ["class", "what", *[_SHORT[m] for m in methods]],
    )
    for cls in result["classes"]:
        timing = per_class[cls].get("timing") or {}
        for what, key, spec in (
            ("seconds", "seconds", ".2f"),
            ("prefill tok/s", "prefill_tokens_per_s", ".0f"),
            ("decode tok/s", "decode_tokens_per_s", ".1f"),
        ):
            per_request.rows.append([cls, what, *[_fmt((timing.get(m) or {}).get(key), spec) for m in methods]])
        per_request.strong.add(len(per_request.rows) - 1)

    mem = Table("Memory", ["what", "max RSS", "CUDA peak", "KV cache"])
    for ph in result["memory"]["phases"]:
        mem.rows.append(
            [f"after {ph['phase']}", _mib(ph["max_rss_bytes"]), _mib(ph.get("cuda_max_allocated_bytes")), ""]
        )
    for m, v in result["memory"]["by_method"].items():
        if v["max_kv_cache_bytes"] is None and v["cuda_peak_bytes"] is None:
            continue
        mem.rows.append([m, "", _mib(v["cuda_peak_bytes"]), _mib(v["max_kv_cache_bytes"])])
    if m_bytes := result["meta"].get("kernel_memory_bytes"):
        mem.rows.append([f"of which packed weight copy ({result['meta'].get('kernels')})", _mib(m_bytes), "", ""])
    llama_rss = [
        (r.get("stats") or {}).get("max_rss_bytes") for r in result.get("runs", ()) if r.get("method") == "llama_cpp"
    ]
    if any(llama_rss):
        mem.rows.append(["llama.cpp process", _mib(max(x for x in llama_rss if x)), "", ""])
    return [thr, spd, sw, per_request, mem]


def _headline(result: dict[str, Any]) -> str:
    m = result["meta"]
    return (
        f"swift-bench: {m['model']} on {m['device']} ({m['device_name']}), {m['dtype']}, "
        f"kernels {m.get('kernels', 'torch')}, "
        f"{m['torch_threads']} threads; greedy, max_new_tokens={m['max_new_tokens']}, repeats={m['repeats']}, "
        f"warmup_calls={m['warmup_calls']}; {m['total_time_s']:.0f} s"
    )


_FAILURE = "!!! EXACTNESS FAILURE: greedy output differs from hf's (see MISMATCH lines) !!!"


def _exactness_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    """``(line, level)`` pairs, level ``ok``, ``error`` or ``warning``."""
    ex = result["exactness"]
    lines = []
    if ex["all_own_exact"]:
        lines.append(
            (
                "Exactness: SWIFT (cold, warm-up, warm) and plain reproduce "
                + ("hf's" if ex.get("reference", "hf") == "hf" else "the engine's plain loop's (at this precision)")
                + " greedy tokens on every prompt.",
                "ok",
            )
        )
    else:
        lines.append((_FAILURE, "error"))
    for mm in ex["mismatches"]:
        lines.append(
            (
                f"  MISMATCH {mm['method']} on {mm['prompt_id']} ({mm['phase']} round {mm['round']}): "
                f"first differing token at {mm['first_mismatch']}",
                "warning" if mm["method"] in _inexact(result) else "error",
            )
        )
    if not ex["hf_lookup_exact"] and "hf_lookup" in result["methods"]:
        lines.append(("  (hf_lookup differing from hf is transformers' own numerics, not this engine's.)", "warning"))
    if not ex.get("llama_cpp_exact", True) and "llama_cpp" in result["methods"]:
        lines.append(("  (llama.cpp differing from hf is the GGUF file's precision, not this engine's.)", "warning"))
    return lines


def render_text(result: dict[str, Any]) -> str:
    """The report as plain aligned text."""
    out = [_headline(result), ""]
    if not result["exactness"]["all_own_exact"]:
        out += [_FAILURE, ""]
    for t in build_tables(result):
        widths = [max(len(c), *(len(r[i]) for r in t.rows)) if t.rows else len(c) for i, c in enumerate(t.columns)]
        out.append(t.title)
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(t.columns, widths))))
        out.append("  ".join("-" * w for w in widths))
        for k, r in enumerate(t.rows):
            line = "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
            out.append(line + ("  *" if k in t.strong else ""))
        out.append("")
    out.extend(line for line, _ in _exactness_lines(result))
    return "\n".join(out)


def print_report(result: dict[str, Any], file: TextIO | None = None) -> None:
    """Print the report (with ``rich`` when it is installed)."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        print(render_text(result), file=file)
        return
    console = Console(file=file, width=max(160, Console(file=file).width))
    console.print(_headline(result), highlight=False)
    if not result["exactness"]["all_own_exact"]:
        console.print(_FAILURE, style="bold red", highlight=False)
    for t in build_tables(result):
        rt = RichTable(title=t.title, title_justify="left", show_lines=False)
        for i, c in enumerate(t.columns):
            rt.add_column(c, justify="left" if i < 2 else "right")
        for k, r in enumerate(t.rows):
            style = "bold" if k in t.strong else None
            cells = [f"[red]{v}[/red]" if v.startswith("NO") else v for v in r]
            rt.add_row(*cells, style=style, end_section=k in t.strong)
        console.print(rt)
    styles = {"ok": "green", "error": "bold red", "warning": "yellow"}
    for line, level in _exactness_lines(result):
        console.print(line, style=styles[level], highlight=False)


def render_markdown(result: dict[str, Any]) -> str:
    """Per-class medians as a markdown table for the README."""
    methods, baselines = result["methods"], result["baselines"]
    m = result["meta"]
    head = [
        "class",
        *[f"{_SHORT[x]} tok/s" for x in methods],
        *[f"warm vs {_SHORT[b]}" for b in baselines],
        *[f"cold vs {_SHORT[b]}" for b in baselines],
        "mode",
        "skip ratio",
        "accept",
        "tok/step",
        "tokens to 90%",
        "skip ceiling",
        "of ceiling",
        "exact",
    ]
    lines = [
        f"*{m['model']}, {m['device']} ({m['device_name']}), {m['dtype']}, swift kernels {m.get('kernels', 'torch')}, "
        f"{'' if m.get('engine_config', {}).get('context_drafts', True) else 'layer-skip drafts only, '}greedy, "
        f"{m['max_new_tokens']} new tokens, median over prompts; `swift-bench` {time.strftime('%Y-%m-%d')}*",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for c in result["per_class"]:
        prof = c["profile"] or {}
        t90 = c["tokens_to_90"]["tokens"]
        cells = [
            c["class"],
            *[_fmt(c["tokens_per_s"][x]) for x in methods],
            *[_fmt(c["speedup"][f"swift_warm_vs_{b}"], ".2f", "x") for b in baselines],
            *[_fmt(c["speedup"][f"swift_cold_vs_{b}"], ".2f", "x") for b in baselines],
            prof.get("mode", "-"),
            _fmt(prof.get("skip_ratio"), ".2f"),
            _fmt(c["swift_warm"]["acceptance_rate"], ".2f"),
            _fmt(c["swift_warm"]["mean_accepted_per_step"], ".2f"),
            "-" if t90 is None else f"~{t90}",
            _fmt(c["ceiling"]["skip_ceiling"], ".2f", "x"),
            _fmt(None if c["ceiling"]["reached"] is None else 100 * c["ceiling"]["reached"], ".0f", "%"),
            "yes" if all(c["exact"][x] for x in methods if x not in _inexact(result)) else "**NO**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(result["per_class"]) > 1:
        o = result["overall"]
        cells = [
            "**all**",
            *[_fmt(o["tokens_per_s"][x]) for x in methods],
            *[_fmt(o["speedup"][f"swift_warm_vs_{b}"], ".2f", "x") for b in baselines],
            *[_fmt(o["speedup"][f"swift_cold_vs_{b}"], ".2f", "x") for b in baselines],
            *([""] * 7),
            "yes" if result["exactness"]["all_own_exact"] else "**NO**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], markdown: str | None, json_path: str | None) -> None:
    """Print the report (and the structured-output table), then write ``--markdown`` and ``--json``."""
    if "overall" in result:
        print_report(result)
    if "constrained" in result:
        from swift_integrations.bench.constrained import render_constrained_markdown

        print("\nStructured output (grammar-constrained):\n" + render_constrained_markdown(result["constrained"]))
    if markdown:
        md = render_markdown(result) if "overall" in result else ""
        if "constrained" in result:
            from swift_integrations.bench.constrained import render_constrained_markdown

            md += "\n" + render_constrained_markdown(result["constrained"])
        if markdown == "-":
            print("\n" + md)
        else:
            Path(markdown).write_text(md, "utf-8")
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str) + "\n", "utf-8")
