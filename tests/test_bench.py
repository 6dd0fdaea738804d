"""swift-bench: the packaged prompt set, the learning-curve metric, and a --quick run on the embedded model."""

from __future__ import annotations

import json

import pytest

from swift_engine.kernels.native_build import native_status
from swift_integrations.bench.command import main
from swift_integrations.bench.methods import METHODS
from swift_integrations.bench.prompt_sets import load_prompts
from swift_integrations.bench.report import render_markdown, render_text
from swift_integrations.bench.summary import tokens_to_fraction


def test_packaged_prompt_set_has_three_prompts_per_class() -> None:
    prompts = load_prompts()
    classes = {}
    for p in prompts:
        classes.setdefault(p.cls, []).append(p)
    assert list(classes) == ["summarization", "context_qa", "code", "chat"]
    assert all(len(ps) == 3 for ps in classes.values())
    for p in classes["summarization"] + classes["context_qa"]:
        words = sum(len(m["content"].split()) for m in p.messages)
        assert 100 <= words <= 450, (p.id, words)
    assert any("def " in m["content"] for p in classes["code"] for m in p.messages)  # one edits a given function
    assert [p.id for p in load_prompts(classes=["code"], per_class=1)] == [classes["code"][0].id]
    with pytest.raises(ValueError, match="unknown prompt class"):
        load_prompts(classes=["poetry"])


def test_tokens_to_fraction_uses_iteration_history_and_call_bound() -> None:
    calls = [
        # plain decoding while searching: one token per verify step, one iteration per step
        {
            "new_tokens": 10,
            "search_iterations": 9,
            "expected_speedup": 0.8,
            "mean_accepted_per_step": 1.0,
            "search_speedups": [0.1, 0.5, 0.3, 0.8, 0.2, 0.1, 0.1, 0.1, 0.1],
        },
        {
            "new_tokens": 10,
            "search_iterations": 3,
            "expected_speedup": 1.5,
            "mean_accepted_per_step": 2.0,
            "search_speedups": [0.9, 1.4, 1.5],
        },
        {
            "new_tokens": 10,
            "search_iterations": 0,
            "expected_speedup": 1.5,
            "mean_accepted_per_step": 3.0,
            "search_speedups": [],
        },
    ]
    out = tokens_to_fraction(calls)
    assert out["final_expected_speedup"] == 1.5
    # 90% of 1.5 = 1.35, first reached at iteration 1 of the second call: 10 + 1 + 1 * 2 tokens
    assert out["tokens"] == 13 and out["iterations"] == 11
    assert out["tokens_call_bound"] == 20 and out["calls"] == 2
    # without the per-iteration history the estimate falls back to call granularity
    for c in calls:
        c["search_speedups"] = None
    assert tokens_to_fraction(calls)["tokens"] == 20
    assert tokens_to_fraction([{"new_tokens": 5, "expected_speedup": None}])["tokens"] is None
    # a throttled search (not converged in the call) spreads its iterations over the call's verify steps
    throttled = [
        {
            "new_tokens": 12,
            "verify_steps": 12,
            "search_iterations": 4,
            "expected_speedup": 2.0,
            "mean_accepted_per_step": 1.0,
            "converged": False,
            "search_speedups": [0.5, 1.0, 2.0, 1.0],
        }
    ]
    assert tokens_to_fraction(throttled)["tokens"] == 1 + 2 * 3
    throttled[0]["converged"] = True  # converged in this call: the iterations ran back to back
    assert tokens_to_fraction(throttled)["tokens"] == 1 + 2


@pytest.mark.slow
def test_quick_run_reports_every_method_and_exact_outputs(tmp_path) -> None:
    path = tmp_path / "bench.json"
    # float32: every method's tokens are transformers' own (the hf reference; the other bench tests run at
    # the default dtype, int4 here, where the reference is the engine's plain loop)
    argv = ["--quick", "--classes", "summarization", "--dtype", "float32", "--max-new-tokens", "16"]
    assert main([*argv, "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["meta"]["dtype"] == "float32"

    methods = [m for m in METHODS if m != "llama_cpp"]  # llama.cpp runs only when asked for (never in CI)
    assert result["methods"] == methods
    assert result["classes"] == ["summarization"]
    (row,) = result["per_prompt"]
    (cls,) = result["per_class"]
    assert row["new_tokens"] > 0
    for m in methods:
        assert row["tokens_per_s"][m] > 0, m
        assert cls["tokens_per_s"][m] > 0, m
        assert row["exact"][m] is True, m
        assert cls["exact"][m] is True, m
    for swift in ("swift_cold", "swift_warm"):
        for base in ("hf", "plain", "hf_lookup"):
            assert row["speedup"][f"{swift}_vs_{base}"] > 0
            assert cls["speedup"][f"{swift}_vs_{base}"] > 0
        assert 0.0 <= cls[swift]["acceptance_rate"] <= 1.0
        assert cls[swift]["mean_accepted_per_step"] >= 1.0
    assert result["exactness"] == {**result["exactness"], "swift_exact": True, "all_own_exact": True, "mismatches": []}
    assert cls["swift_cold"]["search_iterations"] > 0  # the cold pass searched
    assert cls["profile"]["mode"] in ("swift", "plain") and 0.0 <= cls["profile"]["skip_ratio"] < 1.0
    assert cls["tokens_to_90"]["learning_tokens"] > 0
    # the layer-skip ceiling: the best expected speed-up of the scored sets, and the share reached
    ceiling = cls["ceiling"]
    assert ceiling["skip_ceiling"] == cls["profile"]["skip_ceiling"] > 0
    assert ceiling["target"] == max(1.0, ceiling["skip_ceiling"])
    assert ceiling["reached"] == cls["speedup"]["swift_warm_vs_plain"] / ceiling["target"]
    phases = [p["phase"] for p in result["memory"]["phases"]]
    assert phases == ["loaded", "setup", "cold", "warmup", "warm"]
    assert all(p["max_rss_bytes"] > 0 for p in result["memory"]["phases"])
    assert result["memory"]["by_method"]["swift_warm"]["max_kv_cache_bytes"] > 0
    # the packed weight copy is memory of its own: reported whenever the chosen kernels hold one
    assert (result["meta"]["kernel_memory_bytes"] > 0) == ("packed" in result["meta"]["kernels"])
    assert ("packed weight copy" in render_text(result)) == ("packed" in result["meta"]["kernels"])
    assert {r["method"] for r in result["runs"]} == {*methods, "swift_warmup"}
    # per request: seconds for every method, the prefill / decode split where the method reports it
    timing = cls["timing"]
    assert all(timing[m]["seconds"] > 0 for m in methods)
    assert timing["plain"]["prefill_tokens_per_s"] > 0 and timing["swift_warm"]["decode_tokens_per_s"] > 0
    assert timing["hf"]["prefill_tokens_per_s"] is None

    # the report writers work on what was written
    assert "summarization" in render_text(result) and "Per request" in render_text(result)
    md = render_markdown(result)
    assert md.count("\n| summarization |") == 1 and "warm vs hf" in md and "of ceiling" in md


def test_constrained_cases_and_the_reply_validator() -> None:
    from swift_integrations.bench.constrained import load_cases, validate_reply

    cases = load_cases()
    assert {c.kind for c in cases} == {"json", "tools"} and len(cases) == 8
    person, weather = cases[0], next(c for c in cases if c.kind == "tools")
    assert validate_reply(person, 'Sure:\n```json\n{"name": "Marie Curie", "age": 66}\n```') == (True, True, None)
    assert validate_reply(person, '{"name": "Marie", "age": "x"}')[:2] == (True, False)
    assert validate_reply(person, "Marie Curie, 66")[:2] == (False, False)
    assert weather.prefill == "<tool_call>\n"
    assert validate_reply(weather, '{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n</tool_call>') == (
        True,
        True,
        None,
    )
    assert validate_reply(weather, '{"name": "fly", "arguments": {}}')[:2] == (True, False)


@pytest.mark.slow
def test_constrained_only_run_is_exact_and_always_valid(tmp_path) -> None:
    path = tmp_path / "constrained.json"
    # --quick: the first case of each kind (the whole set's exactness, case by case: tests/test_constraints.py)
    argv = ["--constrained-only", "--quick", "--constrained-max-new-tokens", "16", "--no-progress"]
    assert main([*argv, "--json", str(path)]) == 0
    summary = json.loads(path.read_text())["constrained"]["summary"]
    assert summary["all"]["cases"] == 2 and summary["all"]["exact"] is True
    assert summary["json"]["cases"] == summary["tools"]["cases"] == 1
    assert summary["all"]["constrained_valid_rate"] == 1.0  # budget-cut replies are closed by the grammar
    assert summary["all"]["median_speedup_vs_hf"] > 0


@pytest.mark.slow
def test_engine_options_reach_the_engine(tmp_path) -> None:
    """``--kernels`` and ``--no-context-drafts`` configure the benchmarked engine (and are recorded)."""
    path = tmp_path / "bench.json"
    argv = ["--quick", "--classes", "summarization", "--max-new-tokens", "12", "--warmup-calls", "0"]
    argv += ["--no-hf-lookup", "--kernels", "torch", "--no-context-drafts", "--json", str(path)]
    assert main(argv) == 0
    result = json.loads(path.read_text())
    meta = result["meta"]
    assert meta["kernels"] == "torch" and meta["engine_config"]["cpu_kernels"] == "torch"
    assert meta["dtype"] == "int4"  # dtype auto: the embedded Q4_1 file's precision
    assert meta["kernel_memory_bytes"] == 0
    assert meta["engine_config"]["context_drafts"] is False
    swift_runs = [r for r in result["runs"] if r["method"].startswith("swift")]
    assert swift_runs and all(r["stats"]["context_drafted_tokens"] == 0 for r in swift_runs)
    assert result["exactness"]["swift_exact"] is True
    assert "layer-skip drafts only" in render_markdown(result)


def test_llama_cpp_baseline_is_one_clear_error_when_missing(tmp_path, caplog) -> None:
    """llama.cpp is never a dependency: asking for it without it says how to get it, before any work."""
    missing = str(tmp_path / "no-python")
    assert main(["--quick", "--baseline", "llama.cpp", "--llama-cpp-python", missing, "--gguf", missing]) == 1
    assert "llama.cpp baseline" in caplog.text and "no GGUF file" in caplog.text
    caplog.clear()
    assert main(["--quick", "--baseline", "vllm"]) == 1
    assert "unknown --baseline vllm" in caplog.text


def test_passes_report_steps_rows_and_the_bandwidth_ceiling_per_dtype_and_kernel_set(tmp_path, capsys) -> None:
    from .test_loading import _save_tiny

    folder = tmp_path / "tiny-llama"
    _save_tiny(folder, seed=0)
    path = tmp_path / "passes.json"
    assert main(["--passes", "--model", str(folder), "--dtype", "int4,int8", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["read_bandwidth_gb_s"] > 0
    rows = result["passes"]
    assert [(r["dtype"], r["cpu_kernels"]) for r in rows] == [
        ("int4", "auto"),
        ("int4", "torch"),
        ("int8", "auto"),
        ("int8", "torch"),
    ]
    assert rows[0]["step_bytes"] == rows[1]["step_bytes"] < rows[2]["step_bytes"]  # the same weights; int8 reads more
    for row in rows:
        assert row["precision"] == row["dtype"] and row["step_ms"] > 0 and row["context"] == 64
        assert set(row["rows"]) == {"2", "4", "8", "16", "32"} and all(v > 0 for v in row["rows"].values())
        assert row["prompt_ms_per_token"] > 0
        assert row["ceiling_ms"] == pytest.approx(1e3 * row["step_bytes"] / (1e9 * result["read_bandwidth_gb_s"]))
        assert ("swift's kernels" in row["kernels"]) == (native_status().loaded and row["cpu_kernels"] == "auto")
    out = capsys.readouterr().out
    assert "| dtype | kernels | step ms |" in out and "Read bandwidth" in out and "prompt ms/token" in out
