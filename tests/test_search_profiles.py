"""The optimization phase on the embedded model: per-step profiles that differ, persist and get reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.store.profile_store import ProfileStore

pytestmark = pytest.mark.slow

CONTEXT = (
    "The Amazon rainforest covers much of the Amazon basin of South America. It spans nine countries and is "
    "home to millions of species of insects, plants, birds and other animals. Deforestation, driven by cattle "
    "ranching and agriculture, threatens its biodiversity and its role in regulating the global climate."
)
TASKS = {
    "summarize": [{"role": "user", "content": "Summarize this text in two sentences:\n" + CONTEXT}],
    "code": [{"role": "user", "content": "Write a Python function that checks whether a string is a palindrome."}],
}
# small budgets so the search converges within a couple of calls in CI; a large overhead share, since
# SmolLM2's sets cannot pay on CPU and a search with no prospect keeps a tenth of it (SearchSession.affordable)
SEARCH = {"max_opt_iter": 24, "max_tolerance_iter": 16, "bayes_interval": 8, "max_overhead": 100.0}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("profiles")


@pytest.fixture(scope="module")
def engine(smol, store_dir) -> SwiftEngine:
    return SwiftEngine(
        smol.model,
        smol.tokenizer,
        # no draft memory: a task repeated verbatim would be copied whole, leaving its search no decode time
        SwiftConfig(search=SEARCH, draft_memory=0),
        model_name=smol.model_name,
        profile_store=ProfileStore(store_dir),
    )


@pytest.fixture(scope="module")
def learned(engine: SwiftEngine) -> dict[str, list]:
    runs: dict[str, list] = {k: [] for k in TASKS}
    for _ in range(3):
        for key, messages in TASKS.items():
            runs[key].append(engine.generate(messages, max_new_tokens=40, step_key=key))
    return runs


def test_each_step_converges_to_its_own_profile(engine: SwiftEngine, learned) -> None:
    records = {r.step_key: r for r in engine.profiles.list()}
    assert set(records) == set(TASKS)
    for key, rec in records.items():
        assert rec.converged, f"{key}: search did not converge within its budget"
        assert rec.iterations > 0 and rec.observations
        assert rec.calls == 3 and rec.tokens_seen > 0
    a, b = records["summarize"], records["code"]
    assert (a.skip.attention, a.skip.mlp) != (b.skip.attention, b.skip.mlp)
    # the search ran in the first call and not after convergence
    for key, results in learned.items():
        assert results[0].stats.search_ran and results[0].stats.search_iterations > 0
        assert not results[-1].stats.search_ran and results[-1].stats.search_iterations == 0


def test_search_improves_on_the_starting_set(engine: SwiftEngine, learned) -> None:
    gains = []
    for rec in engine.profiles.list():
        start = rec.observations[0]  # the first iteration scores the configured starting set
        best = max(o["speedup"] for o in rec.observations)
        assert rec.expected_speedup == pytest.approx(best, abs=1e-3)
        gains.append(best - start["speedup"])
        assert rec.score >= 0.0
    assert max(gains) > 0.0, "the search never found a set better than the starting one"


def test_greedy_output_is_unchanged_by_the_search(engine: SwiftEngine, learned) -> None:
    for key, results in learned.items():
        plain = engine.generate(TASKS[key], max_new_tokens=40, speculative=False)
        assert all(r.token_ids == plain.token_ids for r in results)


def test_a_new_process_reuses_the_profiles_without_searching(engine: SwiftEngine, learned, store_dir) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        from swift_engine import SwiftConfig, SwiftEngine
        from swift_engine.store.profile_store import ProfileStore
        e = SwiftEngine.from_pretrained(None, device="cpu", dtype="float32",
                                        config=SwiftConfig(search={SEARCH!r}))
        e._store = ProfileStore({str(store_dir)!r})
        out = {{}}
        for key, msgs in {TASKS!r}.items():
            r = e.generate(msgs, max_new_tokens=12, step_key=key)
            out[key] = [r.stats.search_iterations, r.stats.skip_attention, r.stats.skip_mlp, r.stats.mode]
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    records = {r.step_key: r for r in engine.profiles.list()}
    for key in TASKS:
        iterations, att, mlp, mode = out[key]
        assert iterations == 0
        if records[key].plain:  # the search found that no skip set pays here: decode plainly
            assert mode == "plain" and (att, mlp) == ([], [])
        else:
            assert mode == "swift" and (att, mlp) == (records[key].skip.attention, records[key].skip.mlp)


def test_a_corrupt_profile_file_is_survived(engine: SwiftEngine, learned, store_dir, caplog) -> None:
    path = engine.profiles.store.path_for(engine.fingerprint, "summarize")
    path.write_bytes(b"\x00not json")
    res = engine.generate(TASKS["summarize"], max_new_tokens=8, step_key="summarize")
    assert res.stats.new_tokens == 8
    assert any("corrupt" in m.lower() or "set aside" in m.lower() for m in caplog.messages)
    assert engine.profiles.get("code") is not None


def test_export_and_import_reference_format(engine: SwiftEngine, learned, tmp_path) -> None:
    out = tmp_path / "skip_layers.json"
    engine.profiles.export(out, format="reference")
    data = json.loads(out.read_text())
    code_key = f"{engine.model_name}_code"
    if code_key in data:  # plain-decoding steps are not representable in that format
        assert set(data[code_key]) == {"attention", "mlp"}
    data[f"{engine.model_name}_imported"] = {"attention": [2, 4], "mlp": [3]}
    out.write_text(json.dumps(data))
    assert engine.profiles.import_(out, format="reference") >= 1
    rec = engine.profiles.get("imported")
    assert rec is not None and rec.converged and rec.skip.attention == [2, 4]
    res = engine.generate(TASKS["code"], max_new_tokens=8, step_key="imported")
    assert res.stats.skip_attention == [2, 4] and res.stats.search_iterations == 0
