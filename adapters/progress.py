"""Progress inside one model call: how a long call (the denoising steps of a
diffusion pipeline) says how far it is, and how its caller stops it.

The caller (a job worker) sets a reporter around the call; the adapter calls
:func:`report` after each step. A reporter that wants the call stopped (the job
was cancelled or taken over) raises :class:`Stopped`, which the adapter lets
through: the call ends between two steps. With no reporter set (a Python
shell, a test), :func:`report` does nothing.

The reporter lives in a context variable: it reaches the adapter because a
job worker calls the model directly, in its own thread (no batcher thread).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

#: ``reporter(steps_done, steps_total)`` of the current call.
Reporter = Callable[[int, int], None]

_reporter: ContextVar[Reporter | None] = ContextVar("serve_http_progress", default=None)


class Stopped(Exception):
    """The caller asked the running call to stop (raised by a reporter)."""


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Calls of :func:`report` in this context go to ``reporter``."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def report(done: int, total: int) -> None:
    """``done`` of ``total`` steps of the current call are done; may raise :class:`Stopped`."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter(done, total)
