"""Completes torch futures from frugal handles, off the autograd thread.

One thread per owner waits the submitted handles in submission order
(frugal releases the GIL while waiting) and then sets each future's
result or exception, so the thread that submits only enqueues.
"""
import atexit
import queue
import threading
import weakref
from typing import Any, Callable, List, Optional

import torch

__all__ = ["Waiter"]


class Waiter:
    """A FIFO of (handles, future, then) completed by one daemon thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._idle = threading.Condition()
        self._pending = 0
        self.error: Optional[BaseException] = None

    def submit(self, handles: List[Any], future: torch.futures.Future,
               then: Optional[Callable[[], Any]] = None) -> None:
        """Waits `handles` in order, runs then() (its result becomes the
        future's), or sets the first error on the future."""
        with self._idle:
            self._pending += 1
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name,
                                            daemon=True)
            self._thread.start()
            _running.add(self)
        self._queue.put((handles, future, then))

    def wait_idle(self) -> None:
        """Returns once everything submitted so far has completed."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def close(self) -> None:
        """Finishes what was submitted, then stops the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            handles, future, then = item
            try:
                result = None
                for h in handles:
                    result = h.wait()
                if then is not None:
                    result = then()
            except BaseException as e:  # handed to whoever waits the future
                self.error = e
                future.set_exception(e)
            else:
                future.set_result(result)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


# Waiters with a thread. At interpreter exit a daemon thread that is still
# inside torch's or frugal's C++ code (completing a future) is stopped by
# a forced unwind when it next takes the GIL, which aborts the process
# ("terminate called without an active exception"); so each is finished
# and joined first. Registered after frugal's own atexit (frugal.torch
# imports frugal first), so this runs before the communicator shuts down.
_running: "weakref.WeakSet[Waiter]" = weakref.WeakSet()


@atexit.register
def _close_running() -> None:
    for waiter in list(_running):
        waiter.close()
