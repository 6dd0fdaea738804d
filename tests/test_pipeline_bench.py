"""The pipeline benchmark (``swift-bench --pipeline``): its parts, and a small real run that checks exactness."""

from __future__ import annotations

import pytest

from swift_integrations.bench import pipeline as pb


def test_tool_calls_are_parsed_and_tools_answer_offline() -> None:
    text = 'Sure.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "(17 + 26) * 3"}}\n</tool_call>'
    assert pb._tool_calls(text) == [("calculator", {"expression": "(17 + 26) * 3"})]
    assert pb._tool_calls("<tool_call>{not json}</tool_call> plain text") == []
    # Qwen2.5's GGUF tokenizer drops its special <tool_call> token from decoded text: bare objects count
    bare = '{"name": "get_weather", "arguments": {"city": "Oslo"}} and {"unrelated": 1}'
    assert pb._tool_calls(bare) == [("get_weather", {"city": "Oslo"})]
    assert pb._run_tool("calculator", {"expression": "(17 + 26) * 3"}) == "129"
    assert pb._run_tool("calculator", {"expression": "__import__('os')"}).startswith("error")
    assert '"temperature_c": 21' in pb._run_tool("get_weather", {"city": "Tokyo"})
    assert pb._run_tool("convert_currency", {"amount": 250, "source": "EUR", "target": "JPY"}) == "40500.0 JPY"
    assert pb._run_tool("nope", {}).startswith("error")
    assert "recommended pressure" in pb._retrieve("What tyre pressure should I use?")[0]
    assert "5 years on the frame" in pb._retrieve("How long is the warranty on the motor?")[0]


@pytest.mark.slow
def test_a_small_real_run_is_exact_and_reported() -> None:
    """RAG on the embedded model, the plain loop against SWIFT with the prefix cache and the draft memory."""
    result = pb.run_pipelines(None, pipelines=["rag"], methods=["plain", "swift"], max_new_tokens=8, quick=True)
    rag = result["pipelines"]["rag"]
    assert rag["exact_vs_plain"] == {"swift": True}
    assert rag["answers"]["swift"] == rag["answers"]["plain"] and len(rag["answers"]["swift"]) == 2
    swift = rag["methods"]["swift"]
    assert swift["calls"] == 2 and swift["new_tokens"] > 0 and swift["seconds"] > 0
    assert swift["cached_prompt_tokens"] > 0  # the fixed instructions come from the warm-up's cache
    table = pb.render_markdown(result)
    assert "| rag | swift |" in table and "reference" in table


def test_unknown_pipeline_is_one_clear_error(caplog) -> None:
    from swift_integrations.bench.command import main

    assert main(["--pipeline", "--pipelines", "agent,chess"]) == 1
    assert "unknown pipeline chess" in caplog.text
