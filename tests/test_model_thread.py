"""The one thread that runs a model's work (swift_engine/model_thread.py)."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from torch import nn

from swift_engine.model_thread import model_thread


def test_work_runs_on_one_thread_per_model_and_errors_come_back() -> None:
    model, other = nn.Linear(2, 2), nn.Linear(2, 2)
    thread = model_thread(model)
    assert model_thread(model) is thread and model_thread(other) is not thread
    idents = {thread.run(threading.get_ident) for _ in range(5)}
    assert len(idents) == 1 and threading.get_ident() not in idents
    assert thread.run(lambda: thread.run(threading.get_ident)) in idents  # from inside: directly, no deadlock
    with pytest.raises(ZeroDivisionError):
        thread.run(lambda: 1 / 0)
    assert thread.run(lambda: 42) == 42  # still usable


def test_a_wait_past_its_timeout_raises_after_the_running_work_finished() -> None:
    thread = model_thread(nn.Linear(2, 2))
    done: list[bool] = []

    def slow() -> None:
        time.sleep(0.3)
        done.append(True)

    with pytest.raises(TimeoutError):
        thread.run(slow, timeout=0.05)
    assert done == [True]  # never left running behind its caller's back


def test_the_thread_ends_when_its_model_is_freed() -> None:
    model = nn.Linear(2, 2)
    ident = model_thread(model).run(threading.get_ident)
    (worker,) = [t for t in threading.enumerate() if t.ident == ident]
    del model
    gc.collect()
    worker.join(60)  # the executor's worker notices its executor is gone, then exits (a hang fails here)
    assert not worker.is_alive()
