"""Engine statistics in the shape the adapters report (token usage, response metadata).

Both adapters report the same keys, so a pipeline mixing LangChain and LlamaIndex steps reads
SWIFT's statistics one way; each adapter only renames the usage keys to its framework's names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine import GenerationStats

__all__ = ["stats_metadata", "usage_from_stats"]


def usage_from_stats(stats: GenerationStats | None) -> dict[str, int]:
    """``{"input_tokens", "output_tokens", "total_tokens"}`` of a generation."""
    if stats is None:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    return {
        "input_tokens": int(stats.prompt_tokens),
        "output_tokens": int(stats.new_tokens),
        "total_tokens": int(stats.prompt_tokens + stats.new_tokens),
    }


def stats_metadata(
    stats: GenerationStats | None, *, model_name: str, finish_reason: str, step_key: str | None
) -> dict[str, Any]:
    """Response metadata of one reply: what every adapter reports.

    Top level: ``model_provider`` (``"swift"``, as ChatOpenAI and ChatOllama name theirs), ``model_name``,
    ``finish_reason``, ``step_key``, ``acceptance_rate``,
    ``mean_accepted_per_step``, ``search_ran``, ``swift_profile`` (``mode``, skipped
    ``attention``/``mlp`` layers, ``score``); ``swift_stats``: every counter of the generation.
    """
    md: dict[str, Any] = {"model_provider": "swift", "model_name": model_name, "finish_reason": finish_reason}
    if stats is None:
        md["step_key"] = step_key
        return md
    md.update(
        step_key=stats.step_key,
        acceptance_rate=stats.acceptance_rate,
        mean_accepted_per_step=stats.mean_accepted_per_step,
        search_ran=stats.search_ran,
        swift_profile={
            "mode": stats.mode,
            "skip_attention": list(stats.skip_attention),
            "skip_mlp": list(stats.skip_mlp),
            "score": stats.profile_score,
        },
        swift_stats=stats.model_dump(mode="json"),
    )
    return md
