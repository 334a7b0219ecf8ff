"""WebDataset tar shards as an input (a folder or glob of ``.tar`` files, or a brace pattern such as
``shards/{0000..0099}.tar``): one row per sample, ``image_id = <shard>/<key>``, read by ranged reads
of its member (:mod:`.tarshards`: headers indexed once). Files beside the shards are skipped rows;
shards an output's recorded listing holds at their current version are not indexed again."""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import NoImagesError
from ...storage import filesystem
from .base import OFFSET_LISTING_SCHEMA, ImageSource, Reader, Request, ShardKind, Skipped, relative
from .files import READABLE
from .tarshards import index_shards, read_members, sample_rows

__all__ = ["TarShards", "TarReader"]


class TarReader(Reader):
    """Each sample's image member, by its byte range in its shard (neighbours merged into one read)."""

    name = "tar"
    row_columns = ("uri", "skip", "offset", "bytes")

    def read(self, source: ImageSource, start: int, stop: int, rows) -> list[Any]:
        uris, skip = rows.column("uri").to_pylist(), rows.column("skip").to_pylist()
        wanted = [i for i, s in enumerate(skip) if not s]
        fs, _ = filesystem(source.uri, source.storage_options)
        offsets, sizes = rows.column("offset").to_pylist(), rows.column("bytes").to_pylist()
        data = read_members(fs, [fs._strip_protocol(uris[i]) for i in wanted], [offsets[i] for i in wanted],
                            [sizes[i] for i in wanted])
        found = dict(zip(wanted, data))
        return [Skipped(s) if s else found[i] for i, s in enumerate(skip)]


def _is_shard(path: str) -> bool:
    return path.lower().endswith(".tar") and not posixpath.basename(path).startswith(".")


def _recorded_samples(known: pa.Table | None, versions: dict[str, str]) -> dict[str, list[tuple[str, int, int, str]]]:
    """The rows an earlier listing (an output's) holds for each tar shard URI whose version it
    recorded is ``versions[uri]`` still: those shards need no indexing."""
    if known is None or "offset" not in known.column_names:
        return {}
    keep = pc.is_in(known.column("uri"), pa.array(list(versions), pa.string()))
    rows = known.filter(keep)
    found: dict[str, list[tuple[str, int, int, str]]] = {}
    stale: set[str] = set()
    for image_id, shard, size, version, skip, offset in zip(*(rows.column(c).to_pylist() for c in (
            "image_id", "uri", "bytes", "version", "skip", "offset"))):
        if version != versions[shard]:
            stale.add(shard)
        found.setdefault(shard, []).append((image_id, offset, size, skip))
    return {shard: samples for shard, samples in found.items() if shard not in stale}


class TarShards(ShardKind):
    name = "tar shards"

    def claims(self, entries: list[tuple[str, int, str]]) -> bool:
        return any(_is_shard(p) for p, _, _ in entries)

    def open_shards(self, fs, entries: list[tuple[str, int, str]], root: str, request: Request) -> ImageSource:
        uri, protocol = request.uri, request.protocol
        shards = [e for e in entries if _is_shard(e[0])]
        recorded = _recorded_samples(request.known, {(protocol + p if protocol else p): v for p, _, v in shards})
        new = [(p, s) for p, s, _ in shards if (protocol + p if protocol else p) not in recorded]
        indexes = dict(zip([p for p, _ in new], index_shards(fs, new))) if new else {}
        ids, uris, sizes, versions, skips, offsets = [], [], [], [], [], []
        for path, size, version in entries:
            shard_id, shard_uri = relative(path, root), protocol + path if protocol else path
            if shard_uri in recorded:
                rows = recorded[shard_uri]
            elif path in indexes:
                rows = sample_rows(fs, path, shard_id, indexes[path], READABLE)
            else:
                rows = [(shard_id, 0, size, "not a tar shard (this input is a set of tar shards)")]
            for image_id, offset, member_size, skip in rows:
                ids.append(image_id), uris.append(shard_uri), sizes.append(member_size), versions.append(version)
                skips.append(skip), offsets.append(offset)
        if not ids:
            raise NoImagesError(f"no images found in '{uri}': its tar shards hold no members")
        listing = pa.table([pa.array(ids, pa.string()), pa.array(uris, pa.string()), pa.array(sizes, pa.int64()),
                            pa.array(versions, pa.string()), pa.array(skips, pa.string()), pa.array(offsets, pa.int64())],
                           schema=OFFSET_LISTING_SCHEMA)
        if all(skips):
            raise NoImagesError(f"no images found in '{uri}': {len(shards)} tar shard(s), no sample with an image member "
                                f"(e.g. {ids[0]}: {skips[0]})")
        return ImageSource(uri, listing, TarReader(), request.storage_options)
