"""Folders, globs and brace patterns of files, and reading loose image files.

A folder is searched recursively (symlinked folders followed once each); folder and glob names are
taken literally (``stimuli [v2]/a [1].png`` is a name, not a pattern); a brace pattern
(``shards/{0000..0099}.tar``) names files that must exist. Files whose extension ned-ray does not
read are listed too, with ``skip`` saying why (rows of ``images.parquet`` with status ``skipped``).
Where the files hold no loose image, a shard kind (tar, Parquet: :data:`~.base.SHARD_KINDS`)
claims them. The job's own output is never an input: when it lies inside a folder or glob being
listed, its files are left out (and a note says so).
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import braceexpand
from PIL import features

from ...errors import NoImagesError
from ...storage import filesystem, is_local
from .base import SHARD_KINDS, ImageSource, InputKind, Reader, Request, Skipped, listing_table, relative, version_of

__all__ = ["READABLE", "FilesReader", "Folder", "BracePattern", "Glob", "read_files", "skip_reason"]

# Raster formats Pillow decodes by itself (animated GIF/APNG/WebP: the first frame), read from folders
# and globs; JPEG 2000 and AVIF where this Pillow build has their codecs.
READABLE = tuple([".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
                  ".tga", ".ppm", ".pgm", ".pbm", ".pnm", ".qoi", ".ico", ".pcx", ".sgi", ".psd"]
                 + ([".jp2", ".j2k", ".jpx", ".jpf", ".j2c"] if features.check("jpg_2000") else [])
                 + ([".avif"] if features.check("avif") else []))


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def read_files(uris: list[str], storage_options: dict[str, Any]) -> list[bytes | Exception]:
    """The bytes of each URI (or the exception reading it), each through its own protocol's filesystem
    and options: a local ``.txt`` list may name ``s3://`` or ``gs://`` objects."""
    found: dict[str, bytes | Exception] = {}
    for protocol in dict.fromkeys(_protocol(u) for u in uris):
        wanted = [u for u in uris if _protocol(u) == protocol]
        try:
            fs, _ = filesystem(wanted[0], storage_options)
            paths = [filesystem(u, storage_options)[1] for u in wanted]
            # concurrent on object stores; paths are taken literally (no glob expansion of '[', '*', '?')
            data = fs.cat_ranges(paths, None, None, on_error="return")
        except Exception as exc:  # no such filesystem, unreachable store: every image of it is an error row
            data = [exc] * len(wanted)
        found.update(zip(wanted, data))
    return [found[u] for u in uris]


class FilesReader(Reader):
    """Loose image files, each read whole by its URI; listed files that are not read are skipped rows."""

    name = "files"
    row_columns = ("uri", "skip")

    def read(self, source: ImageSource, start: int, stop: int, rows) -> list[Any]:
        uris, skip = rows.column("uri").to_pylist(), rows.column("skip").to_pylist()
        wanted = [i for i, s in enumerate(skip) if not s]
        found = dict(zip(wanted, read_files([uris[i] for i in wanted], source.storage_options)))
        return [Skipped(s) if s else found[i] for i, s in enumerate(skip)]


def skip_reason(path: str) -> str:
    """Why a listed file is not read as an image ("" when it is)."""
    name = posixpath.basename(path)
    if name.startswith("."):
        return "hidden file"
    ext = posixpath.splitext(name)[1].lower()
    if ext not in READABLE:
        return (f"not a format ned-ray reads ({ext or 'no extension'}); it reads "
                f"{', '.join(READABLE)}; list the file in a .txt input to try it anyway")
    return ""


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _walk_local(root: str, exclude: str | None = None) -> list[tuple[str, int, str]]:
    """Every file under ``root`` (path, size, mtime), following symlinked folders once each (loops cut);
    the folder ``exclude`` (the job's output) is not entered."""
    found = []
    seen: set[tuple[int, int]] = set()
    skip = _stat_key(exclude) if exclude else None
    for folder, dirs, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen or (stat.st_dev, stat.st_ino) == skip:
            dirs[:] = []  # a symlink back up the tree, a folder linked twice, or the output
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:  # a dangling symlink: listed, and its read fails with the reason
                found.append((path, -1, ""))
                continue
            found.append((path, int(st.st_size), str(st.st_mtime_ns)))
    return found


def _under(path: str, folder: str | None) -> bool:
    return bool(folder) and (path == folder or path.startswith(folder.rstrip("/") + "/"))


def _list_folder(fs, path: str, exclude: str | None = None) -> list[tuple[str, int, str]]:
    if is_local(fs):
        return [e for e in _walk_local(path, exclude) if not _under(e[0], exclude)]
    return [(name, int(info.get("size") or 0), version_of(info))
            for name, info in sorted(fs.find(path, detail=True).items())
            if info.get("type") != "directory" and not _under(name, exclude)]


def _output_inside(fs, root: str, output: str | None, storage_options: dict[str, Any]) -> str | None:
    """The output's path on ``fs`` when it lies inside the listed folder ``root``, else None."""
    if not output:
        return None
    try:
        out_fs, out_path = filesystem(output, storage_options)
    except (ImportError, ValueError):
        return None
    if is_local(fs) != is_local(out_fs) or (not is_local(fs) and out_fs.protocol != fs.protocol):
        return None
    if is_local(fs):
        out_path, root = os.path.realpath(out_path), os.path.realpath(root)
    out_path = out_path.rstrip("/")
    return out_path if _under(out_path, root) and out_path != root.rstrip("/") else None


def _excluded(source: ImageSource, inside: str | None, output: str | None) -> ImageSource:
    if inside:
        source.notes.append(f"note: the output '{output}' lies inside the input '{source.uri}': its files are not "
                            "inputs (left out of the listing)")
    return source


def _files_source(fs, entries: list[tuple[str, int, str]], root: str, request: Request) -> ImageSource:
    """Listed files as an input: loose images; or, where the files hold no image, the shards of the
    first shard kind that claims them."""
    entries = sorted(entries)
    if not any(not skip_reason(p) for p, _, _ in entries):
        for kind in SHARD_KINDS:
            if kind.claims(entries):
                return kind.open_shards(fs, entries, root, request)
    protocol = request.protocol
    listing = listing_table([relative(p, root) for p, _, _ in entries], [protocol + p if protocol else p for p, _, _ in entries],
                            [s for _, s, _ in entries], [v for _, _, v in entries], [skip_reason(p) for p, _, _ in entries])
    source = ImageSource(request.uri, listing, FilesReader(), request.storage_options)
    if listing.num_rows and all(listing.column("skip").to_pylist()):
        names = listing.column("image_id").to_pylist()
        raise NoImagesError(f"no images found in '{request.uri}': {len(names)} file(s), none in a format ned-ray reads "
                            f"(e.g. {names[0]}); it reads {', '.join(READABLE)}")
    return source


class Folder(InputKind):
    name, what = "folder", "a folder"

    def opens(self, fs, path: str, request: Request) -> bool:
        return fs.isdir(path)

    def open(self, fs, path: str, request: Request) -> ImageSource:
        inside = _output_inside(fs, path, request.exclude, request.storage_options)
        entries = _list_folder(fs, path, inside)
        if not entries:
            raise NoImagesError(f"no images found in '{request.uri}': the folder is empty")
        return _excluded(_files_source(fs, entries, path, request), inside, request.exclude)


class BracePattern(InputKind):
    name, what = "brace pattern", "a brace pattern"

    def opens(self, fs, path: str, request: Request) -> bool:
        return "{" in path and "}" in path and not fs.exists(path)  # a literal name with braces wins

    def open(self, fs, path: str, request: Request) -> ImageSource:
        """The files the pattern names (``shards/{0000..0099}.tar``), each of which must exist; one
        listing per folder, not a request per file."""
        paths = list(dict.fromkeys(braceexpand.braceexpand(path)))
        folders: dict[str, dict[str, dict]] = {}
        for folder in dict.fromkeys(posixpath.dirname(p) for p in paths):
            try:
                folders[folder] = {fs._strip_protocol(e["name"]).rstrip("/"): e for e in fs.ls(folder, detail=True)}
            except (FileNotFoundError, NotADirectoryError):
                folders[folder] = {}
        found = [(p, folders[posixpath.dirname(p)].get(p.rstrip("/"))) for p in paths]
        missing = [p for p, info in found if info is None or info.get("type") == "directory"]
        if missing:
            raise NoImagesError(f"the pattern '{request.uri}' names {len(paths)} files and {len(missing)} of them do not "
                                f"exist (e.g. '{missing[0]}'); fix the pattern or restore the files")
        entries = [(p, int(info.get("size") or 0), version_of(info)) for p, info in found]
        return _files_source(fs, entries, path.split("{")[0].rsplit("/", 1)[0], request)


class Glob(InputKind):
    name, what = "glob", "a glob"

    def opens(self, fs, path: str, request: Request) -> bool:
        return any(ch in path for ch in "*?[")

    def open(self, fs, path: str, request: Request) -> ImageSource:
        root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        inside = _output_inside(fs, root, request.exclude, request.storage_options)
        matches = {name: info for name, info in fs.glob(path, detail=True).items()
                   if info.get("type") != "directory" and not _under(os.path.realpath(name) if is_local(fs) else name, inside)}
        if not matches:
            raise NoImagesError(f"no images found: the pattern '{request.uri}' matches no file")
        entries = [(name, int(info.get("size") or 0), version_of(info)) for name, info in matches.items()]
        return _excluded(_files_source(fs, entries, root, request), inside, request.exclude)
