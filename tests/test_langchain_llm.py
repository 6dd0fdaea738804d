"""SwiftLLM (text completion) on the embedded model: invoke, stream, stop strings, batch, async, step keys."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from swift_engine import SearchConfig, SwiftConfig, swift_step
from swift_integrations import SwiftLLM
from swift_integrations.engine_cache import get_engine

CFG = SwiftConfig(search=SearchConfig(max_opt_iter=6, max_tolerance_iter=3))
PROMPT = "The three primary colours are"


@pytest.fixture(scope="module")
def engine():
    return get_engine(None, device="cpu", dtype="float32", config=CFG)


def make(**kw: Any) -> SwiftLLM:
    return SwiftLLM(**{"device": "cpu", "dtype": "float32", "swift_config": CFG, "max_tokens": 16, **kw})


@pytest.fixture(scope="module")
def ref(engine) -> str:
    return make().invoke(PROMPT)


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.results: list[Any] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.results.append(response)


def test_params():
    llm = make(stop=["\n"])
    assert llm._llm_type == "swift-llm"
    ls = llm._get_ls_params()
    assert ls["ls_provider"] == "swift" and ls["ls_model_type"] == "llm" and ls["ls_stop"] == ["\n"]
    assert ls["ls_model_name"] == "SmolLM2-135M-Instruct" and ls["ls_max_tokens"] == 16


def test_generate_reports_usage_and_statistics(engine, ref):
    assert isinstance(ref, str) and ref.strip()
    res = make().generate([PROMPT])
    gen = res.generations[0][0]
    assert gen.text == ref
    info = gen.generation_info
    stats = info["swift_stats"]
    assert info["model_name"] == "SmolLM2-135M-Instruct" and info["finish_reason"] in ("length", "eos")
    assert info["usage"] == {
        "input_tokens": stats["prompt_tokens"],
        "output_tokens": stats["new_tokens"],
        "total_tokens": stats["prompt_tokens"] + stats["new_tokens"],
    }
    assert res.llm_output["token_usage"] == info["usage"]
    assert stats["prompt_tokens"] == len(engine.encode_prompt(PROMPT))
    assert {"acceptance_rate", "mean_accepted_per_step", "search_ran", "swift_profile", "step_key"} <= set(info)


def test_stream_yields_tokens_and_fires_callbacks(ref):
    rec = Recorder()
    chunks = list(make().stream(PROMPT, config={"callbacks": [rec]}))
    assert len([c for c in chunks if c]) > 3
    assert "".join(chunks) == ref == "".join(rec.tokens)
    final = rec.results[0].generations[0][0]
    assert final.text == ref and final.generation_info["swift_stats"]["new_tokens"] >= 1

    rec = Recorder()
    assert make(streaming=True).invoke(PROMPT, config={"callbacks": [rec]}) == ref
    assert "".join(rec.tokens) == ref and len(rec.tokens) > 3


def test_multi_token_stop_strings_in_every_path(engine, ref):
    words = ref.strip().split(" ")
    stop = " " + words[1] + " " + words[2] if ref.startswith(" ") else words[1] + " " + words[2]
    assert len(engine.tokenizer(stop, add_special_tokens=False)["input_ids"]) > 1
    expected = ref[: ref.index(stop)]
    llm = make()
    assert llm.invoke(PROMPT, stop=[stop]) == expected
    assert make(stop=[stop]).invoke(PROMPT) == expected
    assert "".join(llm.stream(PROMPT, stop=[stop])) == expected
    assert llm.batch([PROMPT, PROMPT], stop=[stop]) == [expected, expected]
    assert llm.generate([PROMPT], stop=[stop]).generations[0][0].generation_info["finish_reason"] == "stop"

    async def run():
        a = await llm.ainvoke(PROMPT, stop=[stop])
        b = "".join([c async for c in llm.astream(PROMPT, stop=[stop])])
        c = await llm.abatch([PROMPT], stop=[stop])
        return a, b, c

    assert asyncio.run(run()) == (expected, expected, [expected])


def test_batch_matches_single_calls(ref):
    llm = make(max_tokens=6)
    other = "Once upon a time"
    singles = [llm.invoke(PROMPT), llm.invoke(other)]
    assert llm.batch([PROMPT, other]) == singles
    assert asyncio.run(llm.abatch([PROMPT, other])) == singles
    res = llm.generate([PROMPT, other])
    assert [g[0].text for g in res.generations] == singles
    assert res.llm_output["token_usage"]["output_tokens"] == sum(
        g[0].generation_info["usage"]["output_tokens"] for g in res.generations
    )


def test_async_stays_off_the_loop_and_cancellation_stops(engine):
    llm = make(max_tokens=400)

    async def run() -> tuple[int, str]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        text = await llm.ainvoke(PROMPT, max_tokens=8)
        stop.set()
        await t
        return ticks, text

    ticks, text = asyncio.run(run())
    assert text and ticks > 10

    async def cancel() -> None:
        stream = llm.astream("Write a very long story about the sea.")
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(cancel())
    deadline = time.time() + 30
    while any(t.name.startswith("swift-llm-stream") for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(t.name.startswith("swift-llm-stream") for t in threading.enumerate())
    assert engine._lock.acquire(blocking=False)
    engine._lock.release()


def test_step_keys(ref):
    llm = make(max_tokens=2)

    def key(model, **config) -> str:
        rec = Recorder()
        model.invoke(PROMPT, config={"callbacks": [rec], **config})
        return rec.results[0].generations[0][0].generation_info["step_key"]

    assert key(llm) == "default"
    assert key(llm.bind(step_key="b")) == "b"
    assert key(llm, metadata={"swift_step": "m"}) == "m"
    assert key(llm, run_name="complete") == "run:complete"
    assert key(llm, tags=["x"]) == "tags:x"
    assert key(make(max_tokens=2, step_key="field")) == "field"
    with swift_step("ctx"):
        assert key(llm) == "ctx"
    assert (
        llm.generate([PROMPT], metadata={"langgraph_node": "n"}).generations[0][0].generation_info["step_key"]
        == "langgraph:n"
    )
