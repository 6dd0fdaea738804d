"""Example tools for the agent tests and ``scripts/agent_model_eval.py`` (one definition for both,
so the evaluation measures the tools the tests call).

No ``from __future__ import annotations``: LangChain reads the annotations as they are.
"""

from langchain_core.tools import tool


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is 18 degrees and sunny in {city}."


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())
