"""Stop conditions on text, and streaming text without ever taking back what was sent.

Stop strings can span several tokens and a token can end inside a multi-byte character, so
streamed text is held back while its tail could still be the start of a stop string or an
incomplete character; everything released is final.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def text_decoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[int]], str]:
    """``tokenizer.decode(ids, skip_special_tokens=True)``, straight through the Rust backend where that is the same.

    A streamed reply decodes twice per push, for every call in a pass: transformers' ``decode``
    first walks the ids in Python to normalise them, which costs about 4x the decoding itself.
    A fast tokenizer whose ``decode`` and ``_decode`` are transformers' own, with no clean-up of
    spaces, returns exactly its backend's ``decode``; any other falls back to ``decode``.
    """
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - another transformers layout: the slow path is exact
        TokenizersBackend = PreTrainedTokenizerBase = None  # type: ignore[misc,assignment]
    cls = type(tokenizer)
    if (
        TokenizersBackend is not None
        and isinstance(tokenizer, TokenizersBackend)
        and cls.decode is PreTrainedTokenizerBase.decode
        and cls._decode is TokenizersBackend._decode
        and not tokenizer.clean_up_tokenization_spaces
    ):
        return cast(Callable[[list[int]], str], partial(tokenizer.backend_tokenizer.decode, skip_special_tokens=True))
    return lambda ids: cast(str, tokenizer.decode(ids, skip_special_tokens=True))


class StopStrings:
    def __init__(self, stop: str | Sequence[str] | None) -> None:
        if stop is None:
            stops: list[str] = []
        elif isinstance(stop, str):
            stops = [stop]
        else:
            stops = list(stop)
        for s in stops:
            if not isinstance(s, str) or s == "":
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        self.stops = stops

    def find(self, text: str, start: int = 0) -> int:
        """Index of the earliest stop string in ``text[start:]`` (absolute), or -1."""
        best = -1
        for s in self.stops:
            i = text.find(s, max(0, start))
            if i >= 0 and (best < 0 or i < best):
                best = i
        return best

    def held_tail(self, text: str) -> int:
        """How many trailing characters could still begin a stop string."""
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        return keep

    @property
    def max_len(self) -> int:
        return max((len(s) for s in self.stops), default=0)


class TextStream:
    """Incremental detokenizer with stop-string trimming.

    Each push decodes only the last few tokens (from ``_prefix`` on), not the whole sequence: the
    text of ``ids[_prefix:_read]`` is known, so what the new tokens add is the difference. Decoding
    from a token before the new ones keeps tokenizers that render a token differently at the start
    of a string (SentencePiece's leading space) right; an incomplete UTF-8 character is left
    pending until the token that completes it arrives.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: StopStrings) -> None:
        self.stops = stops
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped_at: int | None = None
        self._prefix = 0  # ids[_prefix:_read] were decoded into the end of self.text
        self._read = 0
        self._decode = text_decoder(tokenizer)

    def push(self, ids: Sequence[int]) -> str:
        """Add tokens; return the newly releasable text. Sets ``stopped_at`` when a stop string appears."""
        self.ids.extend(ids)
        known = self._decode(self.ids[self._prefix : self._read])
        fresh = self._decode(self.ids[self._prefix :])
        if len(fresh) > len(known) and not fresh.endswith("\ufffd"):
            self.text += fresh[len(known) :]
            self._prefix, self._read = self._read, len(self.ids)
        hit = self.stops.find(self.text, max(0, self.sent - self.stops.max_len))
        if hit >= 0:
            self.stopped_at = hit
            delta = self.text[self.sent : hit]
            self.sent = max(self.sent, hit)
            return delta
        end = len(self.text) - self.stops.held_tail(self.text)
        delta = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta

    def flush(self) -> str:
        """Release the rest at the end of generation (a character left incomplete included)."""
        if self._read < len(self.ids) and self.stopped_at is None:
            known = self._decode(self.ids[self._prefix : self._read])
            self.text += self._decode(self.ids[self._prefix :])[len(known) :]
            self._prefix = self._read = len(self.ids)
        end = self.stopped_at if self.stopped_at is not None else len(self.text)
        delta = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta

    @property
    def final_text(self) -> str:
        return self.text[: self.stopped_at] if self.stopped_at is not None else self.text
