"""Errors a user of the encode job meets, with the line they read.

``NedRayError`` is the base of ned-ray's own failures; the command line prints them as one line and
exits 2. :class:`JobInterrupted` is a ``KeyboardInterrupt``: Ctrl-C and SIGTERM stop a job as an
interrupt does (Python code that catches ``KeyboardInterrupt`` still sees it), and the command line
exits 130 or 143.
"""

from __future__ import annotations

import errno
import signal

__all__ = ["NedRayError", "StorageError", "JobInterrupted", "storage_error"]


class NedRayError(Exception):
    """A failure of ned-ray that one line explains (what failed, and how to fix it)."""


class StorageError(NedRayError, OSError):
    """An input, model or output location cannot be reached, read or written."""


class JobInterrupted(KeyboardInterrupt):
    """The job was stopped by a signal (SIGINT: Ctrl-C; SIGTERM: Slurm, Kubernetes, ``timeout``)."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(message or f"interrupted ({signal.Signals(signum).name})")
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process stopped by it (130, 143)."""
        return 128 + self.signum

    def __reduce__(self):
        return type(self), (self.signum, str(self))


_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or use another --output, then rerun the same command to resume",
    errno.EDQUOT: "the disk quota is exceeded: free space or raise the quota, then rerun the same command to resume",
    errno.EACCES: "permission denied: make it writable for this user (or use another --output), then rerun the same "
                  "command to resume",
    errno.EPERM: "operation not permitted: make it writable for this user (or use another --output), then rerun the "
                 "same command to resume",
    errno.EROFS: "the filesystem is read-only: use a writable --output, then rerun the same command to resume",
}


def storage_error(action: str, uri: str, exc: BaseException) -> StorageError:
    """One line for a failed storage operation: what (``action`` ``uri``), why, and the fix."""
    if isinstance(exc, StorageError):
        return exc
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) if isinstance(exc, OSError) and getattr(exc, "strerror", None) else \
        (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    hint = _HINTS.get(code)
    if hint is None and isinstance(exc, PermissionError):
        hint = _HINTS[errno.EACCES]
    line = f"cannot {action} '{uri}': {type(exc).__name__}: {reason}"
    error = StorageError(f"{line} ({hint})" if hint else line)
    error.errno = code
    return error
