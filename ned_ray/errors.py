"""Every failure ned-ray explains to its user, in one hierarchy.

``NedRayError`` is the base: the command line and ``jobs/encode.py`` print one of these as one line
and exit 2; anything else is a bug and stays a traceback. Each class also derives from the builtin
exception Python code would expect (``ValueError`` for a bad option, ``OSError`` for storage, ...),
so callers that caught those before still do. :class:`JobInterrupted` is a ``KeyboardInterrupt``:
Ctrl-C and SIGTERM stop a job as an interrupt does, and the command line exits 130 or 143.

    NedRayError
      ConfigError          an option's value (``--times``, ``--format``, JSON options, ...)
      ModelIdError         a model id or glob that names no model; UnknownModelError lists the valid ones
      SelectionError       a selection (channels, times, voxels, BERG's rois/regions) that keeps nothing
      MissingFileError     a file NED's or BERG's layout requires is missing
      ModelFileError       a model's file is unreadable or not in NED's/BERG's format
      UnsafePickleError    a pickle holding more than plain data (never unpickled)
      ModelLoadError       a model that could not be loaded (names the model and the file)
      DeviceError          GPUs asked for that are not there
      ClusterError         a described cluster (ClusterSpecError) or a plan (PlanError) that cannot run
      InputError           the images: none found (NoImagesError)
      OutputError          the output: made with other options (OutputExistsError), missing bucket,
                           changed listing, held by another job (LeaseHeldError, LeaseLostError),
                           incomplete (IncompleteOutputError), damaged (OutputDamagedError)
      StorageError         a location that cannot be reached, read or written (with the errno's fix)
      DestinationError     where an export or a figure is to go: a missing folder, a file for a folder,
                           an existing store (DestinationExistsError)
      MissingDependencyError  an optional extra that is not installed
"""

from __future__ import annotations

import errno
import pickle
import signal

__all__ = ["NedRayError", "ConfigError", "ModelIdError", "UnknownModelError", "ModelNotInOutputError", "SelectionError", "ModelFileError",
           "MissingFileError", "UnsafePickleError", "ModelLoadError", "DeviceError", "ClusterError",
           "ClusterSpecError", "PlanError", "InputError", "NoImagesError", "OutputError", "OutputExistsError",
           "MissingBucketError", "ListingChangedError", "LeaseHeldError", "LeaseLostError", "IncompleteOutputError",
           "OutputDamagedError", "StorageError", "DestinationError", "DestinationExistsError",
           "MissingDependencyError", "JobInterrupted", "storage_error"]


class NedRayError(Exception):
    """A failure of ned-ray that one line explains (what failed, and how to fix it)."""


class ConfigError(NedRayError, ValueError):
    """An option's value is not valid."""


class ModelIdError(NedRayError, ValueError):
    """A model id is malformed."""


class UnknownModelError(ModelIdError):
    """A model id or glob matches no model of the directory; the message lists the valid ones."""


class ModelNotInOutputError(UnknownModelError, KeyError):
    """An output holds no such model (a ``KeyError`` too: the lookup of a key that is not there)."""

    __str__ = Exception.__str__  # KeyError's own would quote the message


class SelectionError(NedRayError, ValueError):
    """A selection of channels, times, voxels or BERG's keys is not valid for a model."""


class ModelFileError(NedRayError, ValueError):
    """A model's file is unreadable or not in NED's/BERG's format."""


class MissingFileError(NedRayError, FileNotFoundError):
    """A file NED's layout requires is not there."""


class UnsafePickleError(NedRayError, pickle.UnpicklingError):
    """A pickle references something outside the allow-list (it would run code when loaded)."""


class ModelLoadError(NedRayError, RuntimeError):
    """A model's files exist but cannot be loaded (corrupt, unsafe, or not NED's architecture)."""


class DeviceError(NedRayError, RuntimeError):
    """The GPUs a job was asked to use are not there (or not usable where Ray put an actor)."""


class ClusterError(NedRayError, ValueError):
    """The cluster cannot run the job as asked."""


class ClusterSpecError(ClusterError):
    """A ``--cluster`` description that cannot be parsed."""


class PlanError(ClusterError):
    """No plan fits the models into the cluster's nodes."""


class InputError(NedRayError, ValueError):
    """The job's images cannot be used."""


class NoImagesError(InputError):
    """The input holds no image."""


class OutputError(NedRayError, ValueError):
    """The output folder cannot be written by this job as it is."""


class OutputExistsError(OutputError):
    """The output folder holds a job with other options."""


class MissingBucketError(OutputError):
    """The output's bucket does not exist (and the job was not asked to create it)."""


class ListingChangedError(OutputError):
    """The input no longer lists what the output was made from."""


class LeaseHeldError(OutputError):
    """Another live job writes this output."""


class LeaseLostError(OutputError, RuntimeError):
    """This job's lease on its output was taken by another job."""


class IncompleteOutputError(OutputError, FileNotFoundError):
    """The output has no manifest: its job has not finished."""


class OutputDamagedError(OutputError, RuntimeError):
    """Committed files of the output are missing or damaged."""


class StorageError(NedRayError, OSError):
    """An input, model or output location cannot be reached, read or written."""


class DestinationError(NedRayError, OSError):
    """Where an export or figure is to be written cannot take it (no such folder, a file where a
    folder is needed, or the reverse)."""


class DestinationExistsError(DestinationError, FileExistsError):
    """An export's destination exists and is not replaced unless asked."""


class MissingDependencyError(NedRayError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


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
