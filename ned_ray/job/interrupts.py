"""Stopping a job cleanly on Ctrl-C (SIGINT) and on SIGTERM (what Slurm, Kubernetes and ``timeout`` send).

Python turns SIGINT into ``KeyboardInterrupt`` in the main thread; while a job runs, SIGTERM does the
same (:class:`~ned_ray.errors.JobInterrupted`), so both stop the executor where it is, and the job's
``finally`` releases the output's lease: the rerun resumes at once. ``ray.init`` installs its own
SIGTERM handler (``sys.exit``), so the job installs this one after connecting to Ray.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from ..errors import JobInterrupted

__all__ = ["sigterm_interrupts", "shielded"]


def _raise(signum: int, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    raise JobInterrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`JobInterrupted`; the previous handler is restored
    after it (a Python program that runs a job keeps its own handling)."""
    if not _main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while the block cleans up (a second Ctrl-C does not leave the lease
    held); the handlers are restored after it."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
