"""fsspec filesystems for URIs, with per-protocol options (``{"s3": {...}, "gs": {...}}``), and the
per-node cache of remote model files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import time
import uuid
from typing import Any, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import storage_error

__all__ = ["filesystem", "options_for", "is_local", "bucket_of", "file_identity", "cached_copy", "sha256_file",
           "local_file_record", "HASH_CACHE_ENV"]


def options_for(uri: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The options that apply to ``uri``'s protocol (a flat dict applies to every protocol)."""
    if not storage_options:
        return {}
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if all(isinstance(v, dict) for v in storage_options.values()):
        return dict(storage_options.get(protocol, {}))
    return dict(storage_options)


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a local path or any fsspec URL."""
    return fsspec.core.url_to_fs(uri, **options_for(uri, storage_options))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def bucket_of(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The bucket of an object-store path (s3fs, gcsfs, adlfs...), None on filesystems without buckets."""
    if is_local(fs) or not hasattr(fs, "split_path"):
        return None
    return fs.split_path(path)[0] or None


def file_identity(info: dict[str, Any]) -> dict[str, Any]:
    """What identifies a stored file's content without reading it: size plus the store's ETag,
    MD5, generation or modification time (the first the filesystem reports)."""
    record: dict[str, Any] = {"bytes": int(info.get("size") or 0)}
    for key in ("ETag", "etag", "md5Hash", "generation", "VersionId", "mtime", "LastModified", "updated"):
        value = info.get(key)
        if value not in (None, ""):
            record[key.lower()] = str(value).strip('"')
            break
    return record


def cached_copy(fs: fsspec.AbstractFileSystem, path: str, cache_dir: str) -> str:
    """A local copy of ``path`` in this node's ``cache_dir``, downloaded at most once per node.

    The copy is keyed by the file's URI and its identity (size + ETag/generation/mtime), so a
    changed remote file is fetched again. One process downloads (an exclusive lock per file) to a
    temporary name and renames it into place: no reader ever sees a half-written file, and the
    others wait for it instead of downloading it again. Each download is logged to
    ``cache_dir/downloads.log`` (time, process, bytes, seconds, URI).
    """
    import fcntl

    uri = fs.unstrip_protocol(path)
    identity = json.dumps(file_identity(fs.info(path)), sort_keys=True)
    key = hashlib.sha256(f"{uri}\n{identity}".encode()).hexdigest()[:20]
    final = os.path.join(cache_dir, f"{key}-{os.path.basename(path)}")
    if os.path.exists(final):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    with open(f"{final}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if os.path.exists(final):  # another process of this node fetched it while we waited
            return final
        started = time.perf_counter()
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        try:
            fs.get_file(path, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)  # atomic: readers see nothing or the whole file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        with open(os.path.join(cache_dir, "downloads.log"), "a") as log:
            log.write(f"{time.time():.3f}\t{os.getpid()}\t{os.path.getsize(final)}\t"
                      f"{time.perf_counter() - started:.3f}\t{uri}\n")
    return final


HASH_CACHE_ENV = "NED_RAY_CACHE"  # folder of ned-ray's per-user caches (default ~/.cache/ned-ray)


def sha256_file(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """sha256 of a file's content, read in 4 MiB blocks."""

    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_cache_file() -> str:

    folder = os.environ.get(HASH_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ned-ray")
    return os.path.join(folder, "sha256.json")


def local_file_record(path: str, known: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Provenance of a local file: sha256, size and mtime. The hash is computed once per file version:
    reused from ``known`` records (an output's provenance) or ned-ray's per-user cache
    (``$NED_RAY_CACHE/sha256.json``) when the size and mtime are unchanged."""
    import uuid

    st = os.stat(path)
    size, mtime = int(st.st_size), str(st.st_mtime_ns)
    for record in known or []:
        if record.get("file") == path and record.get("bytes") == size and record.get("mtime") == mtime \
                and record.get("sha256"):
            return dict(record)
    cache_file = _hash_cache_file()
    try:
        with open(cache_file) as fh:
            cache = json.load(fh)
    except (OSError, ValueError):
        cache = {}
    key = os.path.realpath(path)
    entry = cache.get(key, {})
    if entry.get("bytes") == size and entry.get("mtime") == mtime and entry.get("sha256"):
        digest = entry["sha256"]
    else:
        digest = sha256_file(fsspec.filesystem("file"), path)
        cache[key] = {"bytes": size, "mtime": mtime, "sha256": digest}
        try:  # best effort, atomic: a concurrent writer's entries may be lost, never corrupted
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            tmp = f"{cache_file}.{uuid.uuid4().hex}"
            with open(tmp, "w") as fh:
                json.dump(cache, fh)
            os.replace(tmp, cache_file)
        except OSError:
            pass
    return {"file": path, "sha256": digest, "bytes": size, "mtime": mtime}


TMP_PREFIX = ".tmp-"  # a file being written on a local disk, until renamed into place


# -- whole-file writes and fresh listings (the commit protocol's primitives) -------------------------
def write_bytes(fs, path: str, data: bytes) -> None:
    """Write a whole file so that readers never see half of it (rename on local disks). A failure
    (a full disk, no permission) is a :class:`~ned_ray.errors.StorageError` naming the file, and
    leaves no temporary file behind."""
    parent = posixpath.dirname(path)
    try:
        if is_local(fs):
            fs.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(path)}")
            try:
                with fs.open(tmp, "wb") as fh:
                    fh.write(data)
                fs.mv(tmp, path)  # atomic rename on one filesystem
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
        else:
            fs.pipe_file(path, data)  # object stores: the upload is all-or-nothing
    except Exception as exc:  # noqa: BLE001 - OS, botocore and gcsfs errors alike
        raise storage_error("write", _uri(fs, path), exc) from exc


def _uri(fs, path: str) -> str:
    """A path as the user wrote it (with its protocol on object stores), for messages."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


ROW_GROUP_BYTES = 4 * 2**20  # uncompressed bytes per Parquet row group: what a streaming reader holds at once


def parquet_bytes(table: pa.Table, plain: Sequence[str] = ()) -> bytes:
    """A whole Parquet file (zstd), in row groups of about :data:`ROW_GROUP_BYTES`. Columns in
    ``plain`` (float responses) are written without dictionary encoding or statistics: neither
    helps float data, and they cost a quarter of the write (bench/RESULTS.md, steady state)."""
    buffer = io.BytesIO()
    others = [c for c in table.column_names if c not in plain]
    rows = max(1, int(ROW_GROUP_BYTES * table.num_rows // max(1, table.nbytes))) if table.num_rows else None
    pq.write_table(table, buffer, compression="zstd", use_dictionary=others if plain else True,
                   write_statistics=others if plain else True, row_group_size=rows)
    return buffer.getvalue()


def fresh_ls(fs, path: str, detail: bool = True):
    """List a folder from the store itself, not from fsspec's listing cache (the commit protocol's invariant 8)."""
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    return fs.ls(path, detail=detail)


def fresh_exists(fs, path: str) -> bool:
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    return fs.exists(path)
