"""Compiling a grammar can't stall other calls: bounded schemas, compilations outside the cache's lock, deadlines.

A slow compilation is made by holding one schema's compilation on an event (the rest is the real
xgrammar compiler on the embedded model's vocabulary): a call with another schema compiles and
decodes meanwhile, a call with a deadline gives up on time, and the held compilation lands in the
cache once released.
"""

from __future__ import annotations

import re
import threading

import pytest

from swift_engine.decoding import constraints
from swift_engine.decoding.constraints import GrammarCache, GrammarError, GrammarTimeout, JsonSchemaConstraint
from swift_engine.request import GenerationTimeout

from .conftest import finishes_in_time

pytestmark = pytest.mark.slow  # the embedded model's vocabulary

SLOW = JsonSchemaConstraint({"type": "object", "properties": {"slow": {"type": "integer"}}, "required": ["slow"]})
FAST = JsonSchemaConstraint({"type": "object", "properties": {"fast": {"type": "integer"}}, "required": ["fast"]})


@pytest.fixture()
def held(monkeypatch: pytest.MonkeyPatch):
    """SLOW's compilation waits on the returned event; every other one runs as usual."""
    release = threading.Event()
    real = GrammarCache._compile

    def compile_(self: GrammarCache, spec):  # type: ignore[no-untyped-def]
        if spec == SLOW:
            assert release.wait(120), "never released"
        return real(self, spec)

    monkeypatch.setattr(GrammarCache, "_compile", compile_)
    yield release
    release.set()


def test_a_slow_compilation_holds_up_no_other_schema(smol, held) -> None:
    cache = GrammarCache(smol.tokenizer, smol.runner.vocab_size, sorted(smol.eos_ids))
    with pytest.raises(GrammarTimeout):
        cache.compile(SLOW, timeout=0.2)  # still compiling: this call gives up
    assert finishes_in_time(lambda: cache.compile(FAST)) is not None  # another schema: not behind it
    held.set()
    compiled = finishes_in_time(lambda: cache.compile(SLOW))  # the same compilation, finished
    assert cache.compile(SLOW, timeout=0.0) is compiled  # and cached


def test_a_call_past_its_deadline_while_compiling_times_out_and_the_engine_goes_on(smol, held) -> None:
    messages = [{"role": "user", "content": "A JSON object, please."}]
    with pytest.raises(GenerationTimeout):
        smol.generate(messages, max_new_tokens=4, constraint=SLOW, timeout=0.3)
    result = finishes_in_time(lambda: smol.generate(messages, max_new_tokens=8, constraint=FAST))
    assert result.text.startswith("{")


@pytest.mark.parametrize(
    "schema, construct",
    [
        ({"type": "string", "pattern": "[a-z]{1,24000}[0-9]{1,24000}"}, "pattern repetition {1,24000}"),
        ({"type": "string", "maxLength": 50000}, "'maxLength': 50000"),
        ({"type": "array", "minItems": 5000}, "'minItems': 5000"),
        ({"enum": list(range(5000))}, "'enum'"),
        ({"type": "string", "pattern": "[a-z]{1,1000}", "maxLength": 1000}, None),  # at the bounds: compiles
    ],
    ids=["pattern", "maxLength", "minItems", "enum", "fine"],
)
def test_schemas_too_costly_to_compile_are_refused_naming_the_construct(schema, construct) -> None:
    if construct is None:
        constraints.check_schema(schema)
        return
    with pytest.raises(GrammarError, match=re.escape(construct)):
        constraints.check_schema(schema)


def test_a_schema_nested_too_deep_is_refused() -> None:
    schema: dict = {"type": "integer"}
    for _ in range(40):
        schema = {"type": "array", "items": schema}
    with pytest.raises(GrammarError, match="nested deeper"):
        constraints.check_schema(schema)
