"""The lines users read for storage failures and interrupts (ned_ray/errors.py)."""

from __future__ import annotations

import errno
import pickle
import signal

import pytest

from ned_ray.errors import JobInterrupted, NedRayError, StorageError, storage_error


@pytest.mark.parametrize("exc, hint", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied: make it writable"),
    (PermissionError("Access Denied"), "permission denied"),  # s3fs's translation of S3's AccessDenied
    (OSError(errno.EROFS, "Read-only file system"), "the filesystem is read-only"),
])
def test_a_storage_failure_names_the_file_why_and_the_fix(exc, hint):
    error = storage_error("write", "s3://bucket/out/part-00003.parquet", exc)
    line = str(error)
    assert isinstance(error, StorageError) and isinstance(error, NedRayError) and isinstance(error, OSError)
    assert line.startswith("cannot write 's3://bucket/out/part-00003.parquet': ") and hint in line and "\n" not in line
    assert "rerun the same command to resume" in line


def test_other_failures_keep_their_first_line_and_ours_pass_through():
    line = str(storage_error("read", "gs://b/x", RuntimeError("connection reset\nretrying...")))
    assert line == "cannot read 'gs://b/x': RuntimeError: connection reset"
    ours = StorageError("already one line")
    assert storage_error("write", "x", ours) is ours


def test_an_interrupt_is_a_keyboard_interrupt_with_the_shells_exit_code():
    stopped = JobInterrupted(signal.SIGTERM, "interrupted (SIGTERM): 3 of 9 images committed")
    assert isinstance(stopped, KeyboardInterrupt) and stopped.exit_code == 143 and JobInterrupted().exit_code == 130
    again = pickle.loads(pickle.dumps(stopped))
    assert (again.signum, str(again)) == (signal.SIGTERM, "interrupted (SIGTERM): 3 of 9 images committed")
