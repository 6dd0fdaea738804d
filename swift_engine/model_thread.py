"""The one thread that runs a model's passes, whichever threads its calls come from.

Why: every Python thread that runs PyTorch ops on a CPU gets an OpenMP team of its own, and a team's
workers spin a while after each parallel region before they sleep. When calls from several threads
took turns on the model (the model's lock, per chunk), each idle team spun against the working one:
measured on the 2-vCPU Xeon, a one-token step alternating between two threads took 24.4 ms against
10.2 ms from one thread (``OMP_WAIT_POLICY=PASSIVE`` stops the spinning, and makes every step 26 ms:
the workers then sleep between the ~180 parallel regions of a step). So the engine hands each chunk
of a call (and each pass of the batch) to this thread: one OpenMP team, whatever the concurrency.

Per model, like the lock (:func:`swift_engine.attach.model_lock`), which is still taken around each
chunk: engines over one model share the thread, so their chunks queue in order of arrival.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from swift_engine.attach import attached

T = TypeVar("T")

__all__ = ["ModelThread", "model_thread"]

_MODEL_THREAD = "_swift_model_thread"


class ModelThread:
    """Runs functions on one worker thread, in order of submission (see the module docstring)."""

    #: the worker's thread id, once it started (a list: see _new_executor)
    _ident: list[int | None]

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._executor = self._new_executor()

    def _new_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        # the initializer holds the list, not self: the worker thread then keeps nothing of this object
        # alive, so a model that is freed frees its executor, and the idle worker exits
        ident = self._ident = [None]
        return concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="swift-model", initializer=lambda: ident.__setitem__(0, threading.get_ident())
        )

    def run(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """``fn()`` on the model's thread (directly when called from it); its exception is raised here.

        Past ``timeout`` seconds of waiting, :class:`TimeoutError` -- after ``fn`` finished, if it had
        started: a generator being advanced cannot be left running while its caller moves on.
        """
        if threading.get_ident() == self._ident[0]:
            return fn()
        if os.getpid() != self._pid:  # a forked child: the parent's thread is not here
            self._pid, self._executor = os.getpid(), self._new_executor()
        future = self._executor.submit(fn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if not future.cancel():
                future.result()  # it is running: wait for it, then report the timeout all the same
            raise TimeoutError from None


def model_thread(model: nn.Module) -> ModelThread:
    """The thread that runs ``model``'s passes for every engine over it."""
    return attached(model, _MODEL_THREAD, lambda _: ModelThread())
