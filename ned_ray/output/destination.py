"""Where exports and figures go: a local file or folder a user names (``--dest``, ``--to``), checked
before anything is computed, and written under a temporary name beside it, renamed into place only
when whole: a failure (a full disk, a read-only folder) leaves nothing at the destination and is one
line naming it."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import DestinationError, DestinationExistsError, StorageError
from ..storage import TMP_PREFIX

__all__ = ["check_file", "check_folder", "written", "is_url"]


def is_url(dest: str) -> bool:
    """Whether ``dest`` names an fsspec location other than a local path."""
    return "://" in dest and not dest.startswith("file://")


def check_file(dest: str, flag: str = "--dest", exists_ok: bool = True, store: bool = False) -> Path:
    """``dest`` as a local file (or, with ``store``, a store folder) to be written: its folder exists
    and is a folder; ``dest`` is not a folder (a store: not a file), and exists only if ``exists_ok``."""
    if is_url(dest):
        raise DestinationError(f"{flag} '{dest}': this format is written to a local path (write it locally, then copy it)")
    path = Path(dest.removeprefix("file://")).expanduser()
    parent = path.parent
    if not parent.exists():
        raise DestinationError(f"{flag} '{dest}': the folder '{parent}' does not exist; create it first, or choose "
                               "another path")
    if not parent.is_dir():
        raise DestinationError(f"{flag} '{dest}': '{parent}' is a file, not a folder; choose a path in a folder")
    if path.exists() and not exists_ok:
        raise DestinationExistsError(f"{flag} '{dest}' already exists; remove it or choose another path")
    if path.is_dir() and not store:
        raise DestinationError(f"{flag} '{dest}' is a folder; give a file name in it (e.g. {path / 'name'}.<ext>)")
    if path.exists() and store and not path.is_dir():
        raise DestinationError(f"{flag} '{dest}' is a file; give a new path for the store")
    return path


def check_folder(folder: str | os.PathLike, flag: str = "--to") -> Path:
    """``folder`` as a local folder to write files into: a folder already, or creatable."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise DestinationError(f"{flag} '{folder}' is a file; give a folder for the figures")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _failure(exc, "create", str(folder), flag) from exc
    return path


_HINTS = {errno.ENOSPC: "the disk is full: free space there or choose another {flag}",
          errno.EDQUOT: "the disk quota is exceeded: free space or choose another {flag}",
          errno.EROFS: "the filesystem is read-only: choose a writable {flag}",
          errno.EACCES: "permission denied: choose a {flag} this user can write",
          errno.EPERM: "operation not permitted: choose a {flag} this user can write"}


def _failure(exc: OSError, action: str, where: str, flag: str) -> StorageError:
    """One line for a failed write of an export or figure: what, why, and the fix."""
    hint = _HINTS.get(exc.errno or 0, "")
    if flag == "--to" and hint:
        hint = hint.split(":")[0] + ": write the figures elsewhere with --to DIR"
    error = StorageError(f"cannot {action} '{where}': {exc.strerror or exc}" + (f" ({hint.format(flag=flag)})" if hint else ""))
    error.errno = exc.errno
    return error


@contextmanager
def written(path: Path, flag: str = "--dest") -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write (a file, or a folder such as a Zarr
    store); renamed to ``path`` when the block succeeds (replacing what was there), removed when it
    fails. An OS failure is one line naming ``path``."""
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():  # a store replaced: the old one goes once the new one is whole
            old = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-old-{path.name}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, (DestinationError, StorageError)):
            raise _failure(exc, "write", str(path), flag) from exc
        raise


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass
