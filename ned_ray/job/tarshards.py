"""WebDataset tar shards as an input (``shards/``, ``shards/*.tar``, ``shards/{0000..0099}.tar``, on
any fsspec filesystem).

A shard is a plain tar whose members are grouped into samples by key: the member's path up to the
first dot of its file name (``n01440764/img_0001.jpg`` and ``n01440764/img_0001.cls`` are one
sample, key ``n01440764/img_0001``), as WebDataset groups them. A sample's image is its member with
an extension ned-ray reads (the first in :data:`~ned_ray.job.sources.READABLE` order); the image id
is ``<shard>/<key>`` (``00012.tar/n01440764/img_0001``).

Each shard is indexed once, on the driver, by reading its headers only (one ranged read per header,
through a small read-ahead that also catches the small members between images); the listing keeps
each image's byte range, and decode tasks read a shard's images with merged ranged reads (adjacent
members in one request), never the whole shard per image. Nothing is silently lost:

* a member whose bytes do not decode is an error row (decode's usual message);
* a member cut off by the end of the shard reads short: an error row saying so;
* a shard whose tail holds no readable header (truncated within a header, or garbage) gets one
  skipped row ``<shard>/(unreadable tail)`` saying from which byte;
* a sample without an image member is a skipped row naming the members it has;
* a shard that is not a tar at all is one skipped row ``<shard>`` with the reason.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fsspec.utils import merge_offset_ranges

__all__ = ["ShardIndex", "index_shard", "index_shards", "sample_rows", "read_members", "TAIL", "READ_AHEAD"]

READ_AHEAD = 4 * 1024  # bytes fetched per header read: the headers of the small members after it come with it
MERGE_GAP = 64 * 1024  # members this close in one shard are read in one request
INDEX_THREADS = 32  # shards indexed at once (remote stores: latency-bound)
TAIL = "(unreadable tail)"


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file over ranged reads of ``path`` (``size`` bytes): each read that
    misses the buffer fetches ``max(n, READ_AHEAD)`` bytes at the current position."""

    def __init__(self, fs, path: str, size: int) -> None:
        self.fs, self.path, self.size = fs, path, size
        self.pos, self.buffer_start, self.buffer = 0, 0, b""
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else n
        if n <= 0 or self.pos >= self.size:
            return b""
        start = self.pos - self.buffer_start
        if not (0 <= start and start + n <= len(self.buffer)):
            end = min(self.size, self.pos + max(n, READ_AHEAD))
            self.buffer, self.buffer_start, start = self.fs.cat_file(self.path, start=self.pos, end=end), self.pos, 0
            self.requests += 1
        data = self.buffer[start:start + n]
        self.pos += len(data)
        return data

    def readinto(self, target) -> int:
        data = self.read(len(target))
        target[:len(data)] = data
        return len(data)


@dataclass(frozen=True)
class ShardIndex:
    """A shard's regular-file members (name, data offset, size) in archive order, and where its
    readable part ends (``end``: the byte after the last member's blocks, or the archive's end)."""

    members: list[tuple[str, int, int]]
    size: int
    end: int
    problem: str = ""  # the shard is not a readable tar at all: why


def index_shard(fs, path: str, size: int) -> ShardIndex:
    """Read a shard's headers (not its data)."""
    members: list[tuple[str, int, int]] = []
    raw = _RangeFile(fs, path, size)
    try:
        archive = tarfile.open(fileobj=raw, mode="r:")
    except tarfile.TarError as exc:
        return ShardIndex([], size, 0, f"not a readable tar file ({exc})")
    with archive:
        try:
            for member in archive:
                if member.isfile():
                    members.append((member.name, member.offset_data, member.size))
        except tarfile.ReadError:  # the last member's data runs past the end: it is listed, and reads short
            pass
        return ShardIndex(members, size, archive.offset)


def index_shards(fs, shards: list[tuple[str, int]], threads: int = INDEX_THREADS) -> list[ShardIndex]:
    """Index shards (path, size) at once, in their order."""
    with ThreadPoolExecutor(max(1, min(threads, len(shards)))) as pool:
        return list(pool.map(lambda shard: index_shard(fs, *shard), shards))


def _key(name: str) -> tuple[str, str]:
    """(key, extension) of a member, as WebDataset splits them: at the first dot of the file name."""
    folder, base = posixpath.split(name)
    stem, dot, extension = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), (extension.lower() if dot else "")


def _tail_is_padding(fs, path: str, index: ShardIndex) -> bool:
    """Whether the bytes after the last member are only the archive's zero blocks."""
    if index.end >= index.size:
        return True
    if index.size - index.end > 1 << 20:
        return False
    return not fs.cat_file(path, start=index.end, end=index.size).strip(b"\0")


def sample_rows(fs, path: str, shard_id: str, index: ShardIndex, readable: tuple[str, ...]) -> list[tuple[str, int, int, str]]:
    """One row per sample of a shard: (image id, data offset, size, skip reason or '')."""
    if index.problem:
        return [(shard_id, 0, index.size, index.problem)]
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    for name, offset, size in index.members:
        key, extension = _key(name)
        samples.setdefault(key, {}).setdefault(extension, (offset, size))  # a repeated member: the first one
    order = {ext.lstrip("."): i for i, ext in enumerate(readable)}
    rows = []
    for key, members in samples.items():
        images = sorted((e for e in members if e.rsplit(".", 1)[-1] in order), key=lambda e: order[e.rsplit(".", 1)[-1]])
        if images:
            offset, size = members[images[0]]
            rows.append((f"{shard_id}/{key}", offset, size, ""))
        else:
            has = ", ".join(f".{e}" if e else "(no extension)" for e in members)
            rows.append((f"{shard_id}/{key}", 0, 0, f"no image member in this tar sample (it has {has})"))
    if not _tail_is_padding(fs, path, index):
        rows.append((f"{shard_id}/{TAIL}", index.end, index.size - index.end,
                     f"truncated or corrupt tar shard: no readable tar header at byte {index.end} of {index.size} "
                     f"({index.size - index.end} bytes not read)"))
    return rows


def read_members(fs, paths: list[str], offsets: list[int], sizes: list[int]) -> list[bytes | Exception]:
    """The bytes of each member (path, offset, size), members close to each other in one shard read
    in one request (concurrent on object stores); a member cut off by the shard's end is a
    ``ValueError`` saying so."""
    if not paths:
        return []
    order = sorted(range(len(paths)), key=lambda i: (paths[i], offsets[i]))
    merged_paths, starts, ends = merge_offset_ranges([paths[i] for i in order], [offsets[i] for i in order],
                                                     [offsets[i] + sizes[i] for i in order], max_gap=MERGE_GAP,
                                                     sort=False)
    try:
        blocks = fs.cat_ranges(merged_paths, starts, ends, on_error="return")
    except Exception as exc:  # an unreachable store: every member of it is an error row
        blocks = [exc] * len(merged_paths)
    out: list[Any] = [None] * len(paths)
    block = 0
    for i in order:
        while not (merged_paths[block] == paths[i] and starts[block] <= offsets[i] and offsets[i] + sizes[i] <= ends[block]):
            block += 1
        data = blocks[block]
        if isinstance(data, Exception):
            out[i] = data
            continue
        piece = data[offsets[i] - starts[block]:offsets[i] - starts[block] + sizes[i]]
        out[i] = piece if len(piece) == sizes[i] else ValueError(
            f"truncated tar shard: the member has {len(piece)} of its {sizes[i]} bytes (the shard ends inside it)")
    return out
