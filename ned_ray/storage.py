"""fsspec filesystems for URIs, with per-protocol options (``{"s3": {...}, "gs": {...}}``)."""

from __future__ import annotations

from typing import Any

import fsspec

__all__ = ["filesystem", "options_for", "is_local", "bucket_of"]


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
