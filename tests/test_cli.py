"""The ``swift-accel`` command line: profiles on a temporary store, info, a chat turn, errors as one line.

The embedded model is loaded at most once per device/dtype for the whole module (``load_model`` is
wrapped in a cache), and engines get fixed pass costs instead of measuring them, so every
model-backed command stays cheap (cost measurement is tested with the engine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import swift_engine.kernels.costs as costs_module
import swift_engine.loading.load as loading
from swift_engine.kernels.native_build import instruction_set, native_status
from swift_engine.store.profile_store import ProfileRecord, ProfileStore, SkipSet
from swift_integrations.cli.app import app

FP_A = "aaaa000011112222"
FP_B = "bbbb333344445555"
#: Every model-backed command runs on the CPU in float32, like the rest of the suite.
CPU = ["--device", "cpu", "--dtype", "float32"]
#: A wide terminal, so table cells are not folded and substrings stay findable.
WIDE = {"COLUMNS": "200"}


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


#: Pass costs in the proportions of a small model on a CPU (only their ratios matter to the search).
FIXED_COSTS = {
    "verify_s": {"1": 0.010, "2": 0.011, "4": 0.012, "8": 0.015, "16": 0.021, "32": 0.034},
    "draft_s_at": {"0.0": 0.010, "0.5": 0.0058},
    "head_s": 0.002,
}


@pytest.fixture(scope="module")
def cached_loads():
    """Load each model once for the module (errors, e.g. unknown models, are never cached), and
    give engines fixed pass costs instead of timing ~70 forward passes (tested with the engine)."""
    real = loading.load_model
    cache: dict = {}

    def load_model(model_id=None, **kwargs):
        key = (model_id, tuple(sorted((k, v) for k, v in kwargs.items() if v is not None)))
        if key not in cache:
            cache[key] = real(model_id, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "load_model", load_model)
        mp.setattr(costs_module, "measure_costs", lambda runner, *a, **k: costs_module.CostModel.from_dict(FIXED_COSTS))
        yield
    cache.clear()


def _record(fp: str, key: str, **kw) -> ProfileRecord:
    return ProfileRecord(model_fingerprint=fp, model_name=f"model-{fp[:4]}", step_key=key, **kw)


@pytest.fixture()
def store(tmp_path: Path) -> ProfileStore:
    s = ProfileStore(tmp_path / "profiles")
    s.put(
        _record(
            FP_A,
            "summarize",
            skip=SkipSet(attention=[1, 2, 3, 7], mlp=[4]),
            score=0.912,
            expected_speedup=1.37,
            iterations=42,
            converged=True,
            calls=5,
            tokens_seen=640,
        )
    )
    s.put(
        _record(
            FP_A,
            "agent:plan",
            skip=SkipSet(attention=[2], mlp=[]),
            score=0.2,
            expected_speedup=0.8,
            plain=True,
            converged=True,
            calls=2,
        )
    )
    s.put(_record(FP_B, "summarize", skip=SkipSet(attention=[5], mlp=[6]), iterations=3, calls=1))
    return s


def _invoke(runner: CliRunner, *args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input, env=WIDE)


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


# ------------------------------------------------------------------------------------------------
# without a model
# ------------------------------------------------------------------------------------------------


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = _invoke(runner, "--help")
    assert result.exit_code == 0
    for command in ("chat", "bench", "profiles", "info"):
        assert command in result.output
    result = _invoke(runner, "profiles", "--help")
    assert result.exit_code == 0
    for command in ("list", "show", "export", "import", "reset"):
        assert command in result.output


def test_the_command_is_swift_accel(capsys) -> None:
    """Named after the distribution: a bare ``swift`` is ModelScope ms-swift's command (and Apple's
    Swift toolchain's), so the package must not install one."""
    from importlib import metadata

    from swift_integrations.cli.app import main

    scripts = {ep.name: ep.value for ep in metadata.distribution("swift-accel").entry_points}
    assert scripts.get("swift-accel") == "swift_integrations.cli.app:app", "reinstall: pip install --no-deps -e ."
    assert scripts.get("swift-bench") == "swift_integrations.bench.command:app"
    assert "swift" not in scripts
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'swift-accel = "swift_integrations.cli.app:app"' in pyproject
    assert not any(line.startswith("swift =") for line in pyproject.splitlines())

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("swift-accel ")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: swift-accel " in out and "Usage: swift " not in out


def test_profiles_list_and_show_read_the_store_without_a_model(
    runner: CliRunner, store: ProfileStore, monkeypatch
) -> None:
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("listing must not load a model"))
    d = str(store.directory)
    result = _invoke(runner, "profiles", "list", "--profile-dir", d)
    assert result.exit_code == 0, result.output
    out = result.output
    for text in (
        FP_A,
        FP_B,
        "model-aaaa",
        "model-bbbb",
        "summarize",
        "agent:plan",
        "1-3 7",
        "0.912",
        "1.37x",
        "converged",
        "plain",
        "searching",
    ):
        assert text in out, text
    assert "3 profile(s) of 2 model(s)" in out

    result = _invoke(runner, "profiles", "show", "summarize", "--profile-dir", d)
    assert result.exit_code == 0, result.output
    assert FP_A in result.output and FP_B in result.output  # the step of both models
    assert "4: 1-3 7" in result.output and "42" in result.output and "640" in result.output

    assert "no profile for step key 'nope'" in _one_error_line(
        _invoke(runner, "profiles", "show", "nope", "--profile-dir", d)
    )
    assert "bad step key" in _one_error_line(_invoke(runner, "profiles", "show", " ", "--profile-dir", d))

    empty = _invoke(runner, "profiles", "list", "--profile-dir", str(store.directory.parent / "empty"))
    assert empty.exit_code == 0 and "No profiles" in empty.output


def test_profiles_list_keeps_step_names_whole_at_80_columns(runner: CliRunner, store: ProfileStore) -> None:
    store.put(_record(FP_A, "run:answer", skip=SkipSet(attention=list(range(0, 30, 2)), mlp=list(range(1, 30, 2)))))
    store.put(_record(FP_A, "langgraph:planner", skip=SkipSet(attention=[3], mlp=[5])))
    result = runner.invoke(app, ["profiles", "list", "--profile-dir", str(store.directory)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if "profile(s) of" not in line]  # the path may be long
    assert max(len(line) for line in table) <= 80
    assert "run:answer" in result.output and "langgraph:planner" in result.output  # not folded mid-name
    assert "Calls" in result.output and "searching" in result.output  # every column shown, none cut


def test_profiles_export_reset_import_round_trip(runner: CliRunner, store: ProfileStore, tmp_path: Path) -> None:
    d = str(store.directory)
    ours, ref = tmp_path / "out" / "profiles.json", tmp_path / "skip_layers.json"
    result = _invoke(runner, "profiles", "export", str(ours), "--profile-dir", d)
    assert result.exit_code == 0 and "Exported 3 profile(s)" in result.output, result.output
    assert json.loads(ours.read_text())["schema"] == "swift-profiles"
    result = _invoke(runner, "profiles", "export", str(ref), "--format", "reference", "--profile-dir", d)
    assert result.exit_code == 0, result.output
    # plain records are left out of the reference format
    assert json.loads(ref.read_text()) == {
        "model-aaaa_summarize": {"attention": [1, 2, 3, 7], "mlp": [4]},
        "model-bbbb_summarize": {"attention": [5], "mlp": [6]},
    }

    # reset asks first; declining keeps everything
    result = _invoke(runner, "profiles", "reset", "summarize", "--profile-dir", d, input="n\n")
    assert result.exit_code == 1 and len(store.list()) == 3
    result = _invoke(runner, "profiles", "reset", "summarize", "--profile-dir", d, input="y\n")
    assert result.exit_code == 0 and "Removed 2 profile(s)" in result.output, result.output
    assert [r.step_key for r in store.list()] == ["agent:plan"]
    result = _invoke(runner, "profiles", "reset", "--yes", "--profile-dir", d)
    assert result.exit_code == 0 and store.list() == []
    assert "nothing to reset" in _invoke(runner, "profiles", "reset", "--yes", "--profile-dir", d).output

    result = _invoke(runner, "profiles", "import", str(ours), "--profile-dir", d)
    assert result.exit_code == 0 and "Imported 3 profile(s)" in result.output, result.output
    assert store.get(FP_A, "summarize").expected_speedup == 1.37

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema": "swift-profiles", "version": 1, "profiles": [{"step_key": 3}')
    assert "not valid JSON" in _one_error_line(_invoke(runner, "profiles", "import", str(corrupt), "--profile-dir", d))
    assert "no profile file" in _one_error_line(
        _invoke(runner, "profiles", "import", str(tmp_path / "missing.json"), "--profile-dir", d)
    )
    assert len(store.list()) == 3  # a failed import writes nothing


def test_bench_is_the_swift_bench_command(runner: CliRunner) -> None:
    result = _invoke(runner, "bench", "--help")
    assert result.exit_code == 0 and "swift-bench" in result.output and "--quick" in result.output
    result = _invoke(runner, "bench", "--classes", "poetry", "--no-progress")  # fails before loading a model
    assert result.exit_code == 1
    result = _invoke(runner, "bench", "--no-such-option")  # a usage error of the command itself
    assert result.exit_code == 2 and "--no-such-option" in result.output
    assert _invoke(runner, "bench", "stray").exit_code == 2  # extra words only continue --classes


def test_models_without_a_chat_template_get_a_plain_transcript() -> None:
    from types import SimpleNamespace

    from swift_engine.chat.prompting import PLAIN_STOPS
    from swift_engine.chat.prompting import engine_chat_prompt as _render

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    from .conftest import CharTokenizer

    tok = CharTokenizer()
    prompt, stop = _render(SimpleNamespace(tokenizer=tok), messages)
    # the transcript's token ids, read as plain text (tests/test_prompt_injection.py: no special tokens)
    assert prompt == tok("System: Be brief.\n\nUser: Hi\n\nAssistant:")["input_ids"] and stop == PLAIN_STOPS
    prompt, stop = _render(SimpleNamespace(tokenizer=SimpleNamespace(chat_template="{{ x }}")), messages)
    assert prompt == messages and stop is None


def test_unknown_model_is_one_red_line(runner: CliRunner, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub is out of reach in tests: the cache only
    args = ["info", "--model", "nobody/no-such-model", "--profile-dir", str(tmp_path)]
    line = _one_error_line(_invoke(runner, *args))
    assert "nobody/no-such-model" in line and "not in the local Hugging Face cache" in line
    assert "HF_HUB_OFFLINE=1" in line and "`hf download nobody/no-such-model`" in line
    assert "Model path does not exist" in _one_error_line(
        _invoke(runner, "chat", "--model", "./no/such/dir", "--prompt", "hi")
    )
    # --debug: the exception itself instead of the line
    result = _invoke(runner, "--debug", *args)
    assert result.exit_code == 1 and isinstance(result.exception, loading.ModelNotAvailableError)
    assert "bad step key" in _one_error_line(_invoke(runner, "chat", "--step-key", "", "--prompt", "hi"))


# ------------------------------------------------------------------------------------------------
# with the embedded model
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_info_describes_the_model(runner: CliRunner, cached_loads, tmp_path: Path) -> None:
    result = _invoke(runner, "info", "--json", *CPU, "--profile-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "SmolLM2-135M-Instruct"
    assert len(data["fingerprint"]) == 16 and int(data["fingerprint"], 16) >= 0
    assert data["layers"] == 30 and data["context_window"] == 8192
    assert (data["device"], data["dtype"], data["dtype_choice"]) == ("cpu", "float32", "--dtype float32")
    kernels = ("packed", "onednn", "torch")
    assert data["kernels"] in kernels or set(data["kernels"].split("+")) <= set(kernels)
    if data["kernels_measured"] is not None:  # auto: what each candidate took here, per pass shape
        assert "step:" in data["kernels_measured"] and "verify:" in data["kernels_measured"]
    # whether swift's own kernels run here, and if not, why (float32 does not use them either way)
    native = native_status()
    loaded = f"loaded, {instruction_set()} ({native.path})" if native.loaded else ""
    assert data["native_kernels"] == (loaded if native.loaded else f"not used: {native.reason}")
    assert data["profile_store"] == str(tmp_path) and data["profiles"] == 0
    assert data["torch"] and data["transformers"]
    result = _invoke(runner, "info", *CPU, "--profile-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    for text in ("Fingerprint", data["fingerprint"], "Context window", "8,192 tokens", "Profile store", "transformers"):
        assert text in result.output
    # the default dtype follows the file, and says so
    result = _invoke(runner, "info", "--json", "--device", "cpu", "--profile-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    auto = json.loads(result.stdout)
    assert auto["dtype"] == "int4 (bfloat16 activations)"
    assert auto["dtype_choice"] == "int4 (dtype='auto' follows the file: Q4_1)"


@pytest.mark.slow
def test_chat_prompt_single_turn(runner: CliRunner, cached_loads, tmp_path: Path) -> None:
    args = ["chat", "--prompt", "Say hello.", "--max-tokens", "8", "--step-key", "cli-test", *CPU]
    result = _invoke(runner, *args, "--system", "Be brief.", "--profile-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    for text in ("accept", "tok/step", "tok/s", "step cli-test"):
        assert text in result.output, text
    # the reply alone on stdout, exactly the model's greedy output
    loaded = loading.load_model(None, device="cpu", dtype="float32")
    from swift_engine import SwiftEngine

    plain = SwiftEngine(loaded.model, loaded.tokenizer, profile_store=ProfileStore(tmp_path / "other")).generate(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        max_new_tokens=8,
        speculative=False,
    )
    assert result.stdout == plain.text + "\n"
    # the call refined (and stored) the step's profile
    (record,) = ProfileStore(tmp_path).list()
    assert record.step_key == "cli-test" and record.calls == 1 and 1 <= record.tokens_seen <= 8


@pytest.mark.slow
def test_chat_interactive_keeps_going_until_exit(runner: CliRunner, cached_loads, tmp_path: Path) -> None:
    args = ["chat", "--max-tokens", "3", "--no-swift", *CPU, "--profile-dir", str(tmp_path)]
    result = _invoke(runner, *args, input="/help\nHi\n/bogus\n/reset\nHello again\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("mode plain") == 2 and "Unknown command /bogus" in out and "History cleared" in out
    result = _invoke(runner, *args, input="")  # EOF quits too
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_reference_import_needs_the_model(runner: CliRunner, cached_loads, tmp_path: Path) -> None:
    d = str(tmp_path / "profiles")
    ref = tmp_path / "skip_layers.json"
    ref.write_text(json.dumps({"SmolLM2-135M-Instruct_summarize": {"attention": [1, 3], "mlp": [2]}}))
    result = _invoke(runner, "profiles", "import", str(ref), "--format", "reference", *CPU, "--profile-dir", d)
    assert result.exit_code == 0 and "Imported 1 profile(s)" in result.output, result.output
    (record,) = ProfileStore(d).list()
    assert (record.step_key, record.skip.attention, record.skip.mlp) == ("summarize", [1, 3], [2])
    result = _invoke(runner, "profiles", "list", "--model", "embedded", *CPU, "--profile-dir", d)
    assert result.exit_code == 0 and record.model_fingerprint in result.output and "cached" in result.output

    ref.write_text(json.dumps({"SmolLM2-135M-Instruct_code": {"attention": [99], "mlp": []}}))
    line = _one_error_line(
        _invoke(runner, "profiles", "import", str(ref), "--format", "reference", *CPU, "--profile-dir", d)
    )
    assert "out of range" in line and "30 layers" in line
    result = _invoke(runner, "profiles", "reset", "summarize", "--yes", "--model", "embedded", *CPU, "--profile-dir", d)
    assert result.exit_code == 0 and "Removed 1 profile(s)" in result.output
