"""An output's own files on its store: found by their names (:func:`~ned_ray.output.layout.owns`),
and removed only where they resolve inside the output.

``--overwrite``, the clearing of an attempt that committed nothing, the removal of damaged pieces and
of a crashed run's leftovers all remove files through :func:`remove`: a file is removed only when
its name is one ned-ray writes *and* it lies inside the output (on a local disk: no symbolic link
on the way, so a link in the output never leads a removal outside it). A user's file in the output
folder is never removed; :func:`scan` says which files those are.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable

from ...output import layout
from ...storage import fresh_exists, fresh_ls, is_local

__all__ = ["scan", "remove", "resolves_inside", "holds"]


def _modalities() -> set[str]:
    """First folder names of model folders (``fmri``, ``eeg``, ...): the only top-level folders,
    besides ned-ray's own, that can hold an output's files."""
    from ...families import FAMILIES

    return {key[0] for key in FAMILIES}


def resolves_inside(fs, root: str, path: str) -> bool:
    """Whether ``path`` lies inside ``root``: lexically on object stores; on a local disk, also
    with every symbolic link on the way resolved (a link is never a file of the output)."""
    root = root.rstrip("/")
    if not (path == root or path.startswith(root + "/")):
        return False
    if not is_local(fs):
        return True
    expected = os.path.normpath(os.path.join(os.path.realpath(root), posixpath.relpath(path, root)))
    return os.path.realpath(path) == expected


def scan(fs, root: str) -> tuple[list[str], list[str]]:
    """(own, foreign): the output folder's files as paths relative to ``root``; ``own`` are the
    names ned-ray writes, ``foreign`` everything else (a folder that cannot hold ned-ray's files
    is one entry, ``name/``, not walked; symbolic links are foreign and never followed)."""
    if not fresh_exists(fs, root):
        return [], []
    walk = {layout.COMMITS, layout.IMAGE_PARTS} | _modalities()
    own: list[str] = []
    foreign: list[str] = []
    for rel in _files(fs, root, walk, foreign):
        (own if layout.owns(rel) else foreign).append(rel)
    return sorted(own), sorted(foreign)


def _files(fs, root: str, walk: set[str], foreign: list[str]) -> Iterable[str]:
    """Relative paths of the files under ``root``, descending only into top-level folders in ``walk``."""
    root = root.rstrip("/")
    if is_local(fs):
        with os.scandir(root) as entries:
            top = list(entries)
        for entry in top:
            if entry.is_symlink():
                foreign.append(entry.name)
            elif not entry.is_dir(follow_symlinks=False):
                yield entry.name
            elif entry.name not in walk:
                foreign.append(entry.name + "/")
            else:
                for folder, dirs, files in os.walk(entry.path):  # never follows links to folders
                    base = os.path.relpath(folder, root).replace(os.sep, "/")
                    for name in files + dirs:
                        if os.path.islink(os.path.join(folder, name)):
                            foreign.append(f"{base}/{name}")
                        elif name in files:
                            yield f"{base}/{name}"
        return
    for entry in fresh_ls(fs, root, detail=True):
        path = entry["name"].rstrip("/")
        name = posixpath.basename(path)
        if entry["type"] != "directory":
            yield name
        elif name not in walk:
            foreign.append(name + "/")
        else:
            if hasattr(fs, "invalidate_cache"):
                fs.invalidate_cache(path)
            for found in fs.find(path):
                yield posixpath.relpath(found, root)


def remove(fs, root: str, rels: Iterable[str], keep: Iterable[str] = ()) -> int:
    """Remove the files ``rels`` (relative to ``root``) that are ned-ray's own and lie inside the
    output, except ``keep``; then, on a local disk, the folders this left empty. Returns how many
    were removed. Paths that are not the output's are skipped, never removed."""
    kept = set(keep)
    root = root.rstrip("/")
    paths = [posixpath.join(root, rel) for rel in rels if rel not in kept and layout.owns(rel)]
    paths = [p for p in paths if resolves_inside(fs, root, p)]
    if not paths:
        return 0
    if is_local(fs):
        removed = 0
        for path in paths:
            try:
                os.remove(path)
                removed += 1
            except FileNotFoundError:
                pass
        _remove_empty_folders(root, paths)
        return removed
    fs.rm(paths)  # object stores: one batched delete
    return len(paths)


def _remove_empty_folders(root: str, paths: list[str]) -> None:
    """The folders of ``paths`` and their parents below ``root``, where now empty (deepest first)."""
    folders: set[str] = set()
    for path in paths:
        folder = posixpath.dirname(path)
        while folder.startswith(root + "/"):
            folders.add(folder)
            folder = posixpath.dirname(folder)
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        try:
            os.rmdir(folder)
        except OSError:  # not empty (a user's file, a part being written), or gone
            pass


def holds(fs, root: str, other_fs, other: str) -> bool:
    """Whether the location ``other`` (on ``other_fs``) is ``root`` or lies inside it."""
    if is_local(fs) != is_local(other_fs) or (not is_local(fs) and fs.protocol != other_fs.protocol):
        return False
    if is_local(fs):
        root, other = os.path.realpath(root), os.path.realpath(other)
        return other == root or other.startswith(root.rstrip(os.sep) + os.sep)
    root = root.rstrip("/")
    return other.rstrip("/") == root or other.startswith(root + "/")
