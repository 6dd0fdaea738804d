"""The stop-string cutter, property-based: streamed text is final, and it ends where plain decoding's does.

The oracle is the obvious, slow reading of the rule: after each token, decode everything so far;
at the first token after which some stop string appears, the reply is that text up to the
earliest stop string in it. :class:`~swift_engine.decoding.stopping.TextStream` must agree for any text,
any stop strings (overlapping, nested, multi-byte, longer than the text), on a byte-level
tokenizer (characters split across tokens) and on the embedded model's BPE tokenizer.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swift_engine.decoding.stopping import StopStrings, TextStream, text_decoder

from .chat_templates import family_tokenizer

# no U+FFFD (what an incomplete character decodes to) and no surrogates (not encodable)
chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffd")
texts = st.text(alphabet=st.sampled_from("ab \n<|>é€😀") | chars, max_size=40)
stop_lists = st.lists(st.text(alphabet=st.sampled_from("ab \n<|>é€😀"), min_size=1, max_size=5), max_size=4)


def _oracle(tok, ids: list[int], stops: list[str]) -> str:
    for k in range(1, len(ids) + 1):
        text = tok.decode(ids[:k], skip_special_tokens=True)
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[: min(hits)]
    return tok.decode(ids, skip_special_tokens=True)


def _stream(tok, ids: list[int], stops: list[str], chunks: list[int] | None = None) -> tuple[str, TextStream]:
    stream = TextStream(tok, StopStrings(stops))
    out, i = "", 0
    sizes = iter(chunks or [])
    while i < len(ids) and stream.stopped_at is None:
        n = max(1, next(sizes, 1))
        piece = stream.push(ids[i : i + n])
        assert stream.final_text.startswith(out + piece)  # nothing sent is ever taken back
        out += piece
        i += n
    out += stream.flush()
    return out, stream


@pytest.fixture(scope="module")
def byte_tok():
    return family_tokenizer("qwen2")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, stops=stop_lists)
def test_token_by_token_matches_the_oracle_bytes(byte_tok, text: str, stops: list[str]) -> None:
    ids = byte_tok(text, add_special_tokens=False)["input_ids"]
    out, stream = _stream(byte_tok, ids, stops)
    assert out == stream.final_text == _oracle(byte_tok, ids, stops)
    assert (stream.stopped_at is not None) == any(s in text for s in stops)
    assert not any(s in out for s in stops)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, stops=stop_lists)
def test_token_by_token_matches_the_oracle_bpe(smol, text: str, stops: list[str]) -> None:
    tok = smol.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out, stream = _stream(tok, ids, stops)
    assert out == stream.final_text == _oracle(tok, ids, stops)
    assert not any(s in out for s in stops)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, stops=stop_lists, chunks=st.lists(st.integers(1, 6), max_size=40))
def test_any_chunking_releases_a_clean_prefix(byte_tok, text: str, stops: list[str], chunks: list[int]) -> None:
    """Several tokens at once (a verification step's worth): what is sent is final, stop-free, a prefix."""
    ids = byte_tok(text, add_special_tokens=False)["input_ids"]
    out, stream = _stream(byte_tok, ids, stops, chunks)
    assert out == stream.final_text
    assert text.startswith(out)
    assert not any(s in out for s in stops)
    if stream.stopped_at is None:
        assert out == text


def test_bad_stop_strings_are_one_clear_error() -> None:
    for bad in ([""], [None], ["ok", 3]):
        with pytest.raises(ValueError, match="stop strings must be non-empty strings"):
            StopStrings(bad)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_fast_decoder_is_decode(smol, byte_tok, data: st.DataObject) -> None:
    """The backend shortcut gives ``decode``'s text for any ids, special tokens included."""
    for tok in (smol.tokenizer, byte_tok):
        ids = data.draw(st.lists(st.integers(0, len(tok) - 1), max_size=8))
        assert text_decoder(tok)(ids) == tok.decode(ids, skip_special_tokens=True)


def test_the_fast_decoder_goes_around_transformers_only_where_that_is_exact(smol) -> None:
    import copy

    tok = smol.tokenizer
    assert text_decoder(tok).func == tok.backend_tokenizer.decode  # type: ignore[attr-defined]
    cleaning = copy.copy(tok)
    cleaning.clean_up_tokenization_spaces = True  # transformers would post-process: keep its decode
    assert not hasattr(text_decoder(cleaning), "func")
