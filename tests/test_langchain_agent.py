"""A LangGraph ReAct loop with a real tool on the embedded 135M model.

The first turn forces the call (``tool_choice`` = the tool's name; the 135M model never calls tools
unprompted); after the tool result the model is free (``"auto"``) and answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from swift_engine import SearchConfig, SwiftConfig
from swift_integrations import SwiftChatModel
from swift_integrations.engine_cache import get_engine

CFG = SwiftConfig(search=SearchConfig(max_opt_iter=6, max_tolerance_iter=3))
CALLS: list[dict[str, Any]] = []


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    CALLS.append({"city": city})
    return f"It is sunny and 25 degrees in {city}."


@pytest.fixture(scope="module")
def engine():
    return get_engine(None, device="cpu", dtype="float32", config=CFG)


def build_agent(llm: SwiftChatModel):
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    system = SystemMessage("You are a helpful assistant. Use the tools to answer.")

    def agent(state: MessagesState) -> dict:
        answered = any(isinstance(m, ToolMessage) for m in state["messages"])
        bound = llm.bind_tools([get_weather], tool_choice="auto" if answered else "get_weather")
        return {"messages": [bound.invoke([system, *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    graph.add_edge("agent", END)
    return graph.compile()


def check_transcript(messages: list[Any]) -> None:
    kinds = [type(m).__name__ for m in messages]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"], kinds
    call = messages[1].tool_calls[0]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    assert messages[2].tool_call_id == call["id"] and messages[2].content == "It is sunny and 25 degrees in Paris."
    final = messages[3]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content.strip()
    assert "sunny" in final.content.lower() or "25" in final.content
    assert final.response_metadata["step_key"] == "langgraph:agent"


def test_react_agent_completes_a_tool_loop(engine):
    CALLS.clear()
    app = build_agent(SwiftChatModel(device="cpu", dtype="float32", swift_config=CFG, max_tokens=40))
    out = app.invoke({"messages": [HumanMessage("What is the weather in Paris?")]}, {"recursion_limit": 6})
    check_transcript(out["messages"])
    assert CALLS == [{"city": "Paris"}]


def test_react_agent_async_and_streamed(engine):
    CALLS.clear()
    app = build_agent(SwiftChatModel(device="cpu", dtype="float32", swift_config=CFG, max_tokens=40))

    async def run() -> tuple[list[Any], int]:
        tokens = 0
        final: dict[str, Any] = {}
        async for mode, payload in app.astream(
            {"messages": [HumanMessage("What is the weather in Paris?")]},
            {"recursion_limit": 6},
            stream_mode=["messages", "values"],
        ):
            if mode == "messages":
                tokens += 1
            else:
                final = payload
        return final["messages"], tokens

    messages, tokens = asyncio.run(run())
    check_transcript(messages)
    assert tokens > 3  # the final answer streamed token by token
    assert CALLS == [{"city": "Paris"}]
