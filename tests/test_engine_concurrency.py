"""Engines sharing one model, streams left paused, streams interleaved in one thread.

The layer-skip switches and kernel wrappers live on the model object, so everything here is about
one promise: whatever runs on the model at the same time (another engine, another stream of the
same engine, ``model.generate`` in another thread), every call's tokens are those of plain
greedy decoding, and no caller waits on a stream nobody is reading.
"""

from __future__ import annotations

import threading

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine

from .conftest import CharTokenizer, tiny_model

PROMPTS = [[3, 14, 15, 9, 26, 5, 35], list(range(20, 40)), [5] * 9, list(range(60, 66))]
N_NEW = 24


def _reference(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model("llama", seed=3)


@pytest.fixture(scope="module")
def expected(model: torch.nn.Module) -> list[list[int]]:
    return [_reference(model, p) for p in PROMPTS]


def _run_threads(work, n: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def test_two_engines_on_one_model_from_threads(model, expected, tmp_path) -> None:
    """A searching SWIFT engine and a fixed-set one hammer the same model object at once."""
    searching = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.25), profile_store=tmp_path)
    fixed = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.5, search={"enabled": False}))
    engines = [searching, fixed]
    got: dict[int, list[list[int]]] = {}

    def work(i: int) -> None:
        engine = engines[i % 2]
        got[i] = [engine.generate(p, max_new_tokens=N_NEW, step_key=f"s{i % 3}").token_ids for p in PROMPTS]

    errors = _run_threads(work, 6)
    assert not errors, errors[0]
    for i, outputs in got.items():
        assert outputs == expected, f"thread {i} decoded different tokens than plain greedy decoding"


def test_plain_generate_on_the_model_while_an_engine_drafts(model, expected) -> None:
    """``model.generate`` in another thread never sees an engine's skipped layers."""
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.5, search={"enabled": False}))
    stop = threading.Event()
    plain: list[list[int]] = []

    drafted: list[bool] = []

    def draft_all_the_time() -> None:
        while not stop.is_set():
            drafted.append(engine.generate(PROMPTS[1], max_new_tokens=N_NEW).token_ids == expected[1])

    worker = threading.Thread(target=draft_all_the_time, daemon=True)
    worker.start()
    try:
        for _ in range(6):
            plain.append(_reference(model, PROMPTS[0]))
    finally:
        stop.set()
        worker.join(timeout=300)
    assert all(p == expected[0] for p in plain)
    assert drafted and all(drafted)


def test_a_paused_stream_does_not_block_other_callers(model, expected) -> None:
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.25, search={"enabled": False}))
    other = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.25, search={"enabled": False}))
    paused = engine.stream(PROMPTS[0], max_new_tokens=N_NEW)
    first = next(paused)  # started, then left unread
    done: dict[str, list[int]] = {}

    def call(name: str, e: SwiftEngine) -> None:
        done[name] = e.generate(PROMPTS[2], max_new_tokens=N_NEW).token_ids

    for name, e in (("same engine", engine), ("other engine", other)):
        t = threading.Thread(target=call, args=(name, e), daemon=True)
        t.start()
        t.join(timeout=120)
        assert not t.is_alive(), f"a paused stream blocked a call on the {name}"
        assert done[name] == expected[2]
    rest = [tok for chunk in paused for tok in chunk.token_ids]
    assert first.token_ids + rest == expected[0]  # the paused stream resumes unharmed


def test_interleaved_streams_in_one_thread_share_no_state(model, expected, tmp_path) -> None:
    """Two streams of one engine and one step key, advanced in turn (what a re-entrant lock allowed)."""
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.25), profile_store=tmp_path)
    a = engine.stream(PROMPTS[0], max_new_tokens=N_NEW, step_key="same")
    b = engine.stream(PROMPTS[1], max_new_tokens=N_NEW, step_key="same")
    out: dict[str, list[int]] = {"a": [], "b": []}
    live = {"a": a, "b": b}
    while live:
        for name in list(live):
            chunk = next(live[name], None)
            if chunk is None:
                del live[name]
            else:
                out[name] += chunk.token_ids
    assert out["a"] == expected[0] and out["b"] == expected[1]
    record = engine.profiles.get("same")
    assert record is not None and record.calls == 2


def test_an_abandoned_stream_frees_the_engine(model, expected) -> None:
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.25, search={"enabled": False}))
    stream = engine.stream(PROMPTS[0], max_new_tokens=N_NEW)
    next(stream)
    del stream  # never closed explicitly
    done = []
    t = threading.Thread(
        target=lambda: done.append(engine.generate(PROMPTS[3], max_new_tokens=N_NEW).token_ids), daemon=True
    )
    t.start()
    t.join(timeout=120)
    assert done == [expected[3]]
