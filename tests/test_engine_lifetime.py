"""Timeouts, closing and ``keep_alive``: a call past its time limit fails cleanly, unloading frees the model.

Real models throughout: the embedded SmolLM2-135M for the adapters (through the engine cache, with
configs of their own so the session's shared engine is never unloaded) and a tiny llama for the
engine-level checks.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from swift_engine import EngineClosedError, GenerationTimeout, SearchConfig, SwiftConfig, SwiftEngine
from swift_integrations import SwiftChatModel, SwiftLlamaIndexLLM
from swift_integrations.engine_cache import get_engine_if_loaded, keep_alive_seconds, loaded_engines

from .conftest import CharTokenizer, tiny_model

PROMPT = [{"role": "user", "content": "Count from one to twenty in words."}]


def _tiny_engine(**cfg) -> SwiftEngine:
    return SwiftEngine(tiny_model("llama"), CharTokenizer(), SwiftConfig(**cfg))


def _wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ---------------------------------------------------------------------------------- timeouts


def test_timeout_stops_a_generation_and_leaves_the_engine_usable(smol):
    before = smol.generate(PROMPT, max_new_tokens=24)
    with pytest.raises(GenerationTimeout) as err:
        smol.generate(PROMPT, max_new_tokens=400, timeout=0.001)
    assert isinstance(err.value, TimeoutError)
    assert err.value.produced < 400
    assert "timed out" in str(err.value)
    assert smol.active_calls == 0
    # nothing of the timed-out call lingers: the same call decodes exactly as before
    assert smol.generate(PROMPT, max_new_tokens=24).token_ids == before.token_ids


def test_timeout_counts_the_wait_for_a_busy_model():
    engine = _tiny_engine()
    engine.generate([5, 6, 7], max_new_tokens=2)  # kernels and costs decided outside the measured call
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with engine._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(GenerationTimeout) as err:
            engine.generate([5, 6, 7], max_new_tokens=8, timeout=0.2)
        assert err.value.produced == 0
    finally:
        release.set()
        t.join(5)
    assert len(engine.generate([5, 6, 7], max_new_tokens=8, timeout=30).token_ids) == 8


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "5", True])
def test_bad_timeouts_are_refused(bad):
    engine = _tiny_engine()
    with pytest.raises(ValueError, match="timeout"):
        engine.generate([5, 6], max_new_tokens=2, timeout=bad)


def test_langchain_timeout_field_and_call_argument(smol):
    slow = SwiftChatModel(engine=smol, timeout=0.001, max_tokens=300, max_retries=2)
    with pytest.raises(TimeoutError):
        slow.invoke("Write a long story.")
    fine = SwiftChatModel(engine=smol, max_tokens=8)
    with pytest.raises(TimeoutError):
        fine.invoke("Write a long story.", timeout=0.001)
    with pytest.raises(TimeoutError):
        list(fine.stream("Write a long story.", timeout=0.001))
    assert fine.invoke("Say hi.", timeout=60).content  # engine still usable
    with pytest.raises(ValueError, match="timeout"):
        fine.invoke("Say hi.", timeout=-3)


def test_llamaindex_timeout(smol):
    from llama_index.core.llms import ChatMessage

    llm = SwiftLlamaIndexLLM(engine=smol, timeout=0.001, max_tokens=300)
    with pytest.raises(TimeoutError):
        llm.chat([ChatMessage(role="user", content="Write a long story.")])
    assert SwiftLlamaIndexLLM(engine=smol, max_tokens=4).complete("Hello").text is not None


# ---------------------------------------------------------------------------------- closing


def test_closed_engine_refuses_calls_and_frees_its_caches():
    engine = _tiny_engine(prefix_cache=1 << 20, prefill_block=4)
    engine.generate(list(range(3, 20)), max_new_tokens=4)
    assert engine.prefix_cache is not None and engine.prefix_cache.nbytes > 0
    with engine:
        pass
    assert engine.closed and engine.prefix_cache.nbytes == 0
    with pytest.raises(EngineClosedError):
        engine.generate([5, 6], max_new_tokens=2)
    engine.close()  # idempotent


def test_closing_mid_stream_fails_that_stream_cleanly():
    engine = _tiny_engine()
    stream = engine.stream([5, 6, 7], max_new_tokens=50)
    next(stream)
    engine.close()
    with pytest.raises(EngineClosedError):
        list(stream)
    assert engine.active_calls == 0


# ---------------------------------------------------------------------------------- keep_alive and close()


def _own_config(tag: int) -> SwiftConfig:
    """A config no other test uses, so these tests load (and unload) engines of their own."""
    return SwiftConfig(search=SearchConfig(max_opt_iter=2 + tag), draft_memory=0)


def _gone(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is None


def test_keep_alive_zero_unloads_after_the_call_and_frees_the_model():
    cfg = _own_config(1)
    llm = SwiftChatModel(device="cpu", dtype="float32", swift_config=cfg, keep_alive=0, max_tokens=4)
    first = llm.invoke("Hello").content
    assert get_engine_if_loaded(None, None, "cpu", "float32", cfg) is None
    # the engine's memory really goes back: nothing keeps the model alive
    engine = llm.swift_engine  # loads it again
    model_ref = weakref.ref(engine.model)
    engine_ref = weakref.ref(engine)
    del engine
    llm.close()
    assert _gone(engine_ref) and _gone(model_ref)
    assert llm.invoke("Hello").content == first  # and the next call loads it again


def test_keep_alive_duration_unloads_once_idle_never_mid_call():
    cfg = _own_config(2)
    quick = SwiftChatModel(device="cpu", dtype="float32", swift_config=cfg, keep_alive="0.4s", max_tokens=4)
    other = SwiftChatModel(device="cpu", dtype="float32", swift_config=cfg, max_tokens=60)
    quick.invoke("Hello")
    engine = get_engine_if_loaded(None, None, "cpu", "float32", cfg)
    assert engine is not None
    stream = other.stream("Tell me about the sea.")
    next(stream)  # a call in flight on the same engine
    time.sleep(1.0)
    assert get_engine_if_loaded(None, None, "cpu", "float32", cfg) is engine and not engine.closed
    list(stream)  # finishes normally
    assert _wait_for(lambda: get_engine_if_loaded(None, None, "cpu", "float32", cfg) is None)
    assert engine.closed
    del engine


def test_close_and_context_manager():
    cfg = _own_config(3)
    with SwiftChatModel(device="cpu", dtype="float32", swift_config=cfg, max_tokens=4) as llm:
        llm.invoke("Hello")
        engine = get_engine_if_loaded(None, None, "cpu", "float32", cfg)
        assert engine is not None and any(e is engine for e in loaded_engines())
    assert engine.closed and get_engine_if_loaded(None, None, "cpu", "float32", cfg) is None
    assert not any(e is engine for e in loaded_engines())
    del engine
    li = SwiftLlamaIndexLLM(device="cpu", dtype="float32", swift_config=cfg, max_tokens=4, keep_alive=-1)
    li.complete("Hello")
    assert get_engine_if_loaded(None, None, "cpu", "float32", cfg) is not None
    li.close()
    assert get_engine_if_loaded(None, None, "cpu", "float32", cfg) is None


def test_close_leaves_a_callers_engine_open(smol):
    llm = SwiftChatModel(engine=smol, keep_alive=0, max_tokens=2)
    llm.invoke("Hi")
    llm.close()
    assert not smol.closed


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (30, 30.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        (-1, float("inf")),
    ],
)
def test_keep_alive_durations(value, seconds):
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("bad", ["5x", "soon", True, float("nan")])
def test_bad_keep_alive_is_refused_at_construction(bad):
    with pytest.raises(ValueError, match="keep_alive"):
        SwiftChatModel(keep_alive=bad)
    with pytest.raises(ValueError, match="keep_alive"):
        SwiftLlamaIndexLLM(keep_alive=bad)
