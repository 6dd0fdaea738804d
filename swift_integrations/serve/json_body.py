"""A request body parsed as JSON with the limits a hostile client can't get past: :func:`parse_body`.

``json.loads`` alone lets through what later fails deep inside the server as a 500: a lone UTF-16
surrogate (``"\\ud800"``) that no encoder accepts (the step-key fingerprint, the tokenizer), JSON
nested a thousand deep (``RecursionError`` wherever the body is walked again: the schema
conversion, ``json.dumps``), a 5000-digit integer (``ValueError`` from Python's digit limit),
``NaN`` and ``Infinity`` (not JSON, but Python reads them). Each is a 400 here, naming where in
the body it was found, before any field is read.
"""

import json
import math
from typing import Any

from swift_integrations.serve.errors import bad_request

__all__ = ["MAX_DEPTH", "MAX_INTEGER", "parse_body"]

#: Deepest nesting of arrays and objects a body may have (OpenAI's own schema limits are shallower).
MAX_DEPTH = 64
#: Integers beyond what any field means (64-bit signed, as OpenAI's ``seed``) are refused.
MAX_INTEGER = 2**63 - 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or a 400 (:class:`~swift_integrations.serve.errors.APIError`) saying why not."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request(f"the request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # a NaN/Infinity constant, an integer past Python's digit limit
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    _check(body)
    return body


def _check(body: dict[str, Any]) -> None:
    """Depth, strings and numbers of every value in ``body``, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, str, int]] = [(body, "$", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise bad_request(f"the request body is nested deeper than {MAX_DEPTH} levels (at {where})")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, f"{where} (a key)")
                stack.append((item, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]", depth + 1))
        elif isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) > MAX_INTEGER:
                raise bad_request(f"{where}: integer out of range (at most {MAX_INTEGER} in magnitude)", _param(where))
        elif isinstance(value, float) and not math.isfinite(value):  # 1e999 reads as inf
            raise bad_request(f"{where}: number out of range", _param(where))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{where}: the text holds an unpaired UTF-16 surrogate (not valid Unicode)", _param(where))


def _param(where: str) -> str | None:
    """The top-level field a location is in (``$.messages[0].content`` -> ``messages``), OpenAI's ``param``.

    Paths are built from keys already checked, so a bad key never reaches the error message.
    """
    if not where.startswith("$."):
        return None  # a top-level key
    return where[2:].split(".")[0].split("[")[0].split(" ")[0]
