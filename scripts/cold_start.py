"""Time to the first token, and to a 32-token answer, of a fresh process: ``python scripts/cold_start.py MODEL DTYPE``.

MODEL is a catalog short name or ``embedded``; DTYPE as ``SwiftChatModel(dtype=...)``. Run it twice:
the first process on a machine pays what is done once (GGUF conversion, kernel build and choice,
cost measurement); the second shows what every later process pays (issue #32's "ready in seconds
the second time"). Figures: docs/bench/cold-start.md.
"""

from __future__ import annotations

import sys
import time

started = time.perf_counter()
from swift_integrations import SwiftChatModel  # noqa: E402 - the import is part of what is timed

model = None if sys.argv[1] == "embedded" else sys.argv[1]
llm = SwiftChatModel(model=model, dtype=sys.argv[2] if len(sys.argv) > 2 else "auto", max_tokens=32)
constructed = time.perf_counter()
first = None
for _ in llm.stream("Write one sentence about the sea."):
    first = first or time.perf_counter()
done = time.perf_counter()
assert first is not None
sys.stdout.write(
    f"{sys.argv[1]} {llm.dtype}: import + construct {constructed - started:.2f} s, first token "
    f"{first - started:.2f} s, answer {done - started:.2f} s (the call alone: {done - constructed:.2f} s)\n"
)
