"""WebDataset tar shards as an input (``shards/``, ``shards/*.tar``, ``shards/{0000..0099}.tar``, on
any fsspec filesystem).

A shard is a plain tar whose members are grouped into samples by key: the member's path up to the
first dot of its file name (``n01440764/img_0001.jpg`` and ``n01440764/img_0001.cls`` are one
sample, key ``n01440764/img_0001``), as WebDataset groups them. A sample's image is its member with
an extension ned-ray reads (the first in :data:`~ned_ray.job.inputs.files.READABLE` order); the image id
is ``<shard>/<key>`` (``00012.tar/n01440764/img_0001``).

Each shard is indexed once, on the driver, by reading its headers only (one ranged read per header,
through a small read-ahead that also catches the small members between images); the listing keeps
each image's byte range, and decode tasks read a shard's images with merged ranged reads (adjacent
members in one request), never the whole shard per image. Nothing is silently lost:

* a member whose bytes do not decode is an error row (decode's usual message);
* a member whose header declares more bytes than the shard holds after it (the shard ends inside
  it, or the header lies: a PAX size of 1 TiB) is a skipped row saying so, never read: no read is
  larger than the shard, and its neighbours are read as usual; what follows such a header cannot
  be located, so the rest of the shard is the unreadable tail;
* a hard link is read as the member it links to, a symbolic link as the member of the same shard
  it points to; a link to nothing in the shard, a device, a FIFO or another special member is a
  skipped row naming its kind (folders are not inputs);
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
    """A shard's members (name, data offset, size, why it is not read or ''), folders left out, in
    archive order: regular files and links resolved to one (the data of the member linked to) are
    read; and where its readable part ends (``end``: the byte after the last member's blocks, or the
    archive's end)."""

    members: list[tuple[str, int, int, str]]
    size: int
    end: int
    problem: str = ""  # the shard is not a readable tar at all: why


_KINDS = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO"}


def index_shard(fs, path: str, size: int) -> ShardIndex:
    """Read a shard's headers (not its data)."""
    raw = _RangeFile(fs, path, size)
    try:
        archive = tarfile.open(fileobj=raw, mode="r:")
    except tarfile.TarError as exc:
        return ShardIndex([], size, 0, f"not a readable tar file ({exc})")
    files: dict[str, tuple[int, int]] = {}  # regular members by name (the first of a repeated name)
    order: list[tuple[str, tarfile.TarInfo]] = []
    end = None  # where a header that declares more data than the shard holds stops the reading
    with archive:
        try:
            for member in archive:
                if member.isdir():
                    continue  # a folder is not an input
                order.append((member.name, member))
                if member.isreg() and member.offset_data + member.size > size:
                    end = member.offset_data
                    break
                if member.isreg():
                    files.setdefault(posixpath.normpath(member.name), (member.offset_data, member.size))
        except tarfile.ReadError:  # the last member's data runs past the end: it is listed, and skipped below
            pass
        end = min(archive.offset, size) if end is None else end
    links = [(name, member) for name, member in order if member.islnk() or member.issym()]
    for _ in range(8):  # links to links (a symbolic link to a hard link GNU tar wrote): a few hops
        found = {posixpath.normpath(name): files[_link_target(member, name)] for name, member in links
                 if _link_target(member, name) in files and posixpath.normpath(name) not in files}
        if not found:
            break
        files.update(found)
    members = []
    for name, member in order:
        reason = _not_read(member, name, files, size)
        target = files.get(_link_target(member, name)) if member.islnk() or member.issym() else None
        members.append((name, *(target or ((0, 0) if reason else (member.offset_data, member.size))), reason))
    return ShardIndex(members, size, end)


def _link_target(member: tarfile.TarInfo, name: str) -> str:
    """The member a link names (normalised): a hard link's is an archive path, a symbolic link's is
    relative to its folder."""
    if member.islnk():
        return posixpath.normpath(member.linkname)
    return posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))


def _not_read(member: tarfile.TarInfo, name: str, files: dict[str, tuple[int, int]], size: int) -> str:
    """Why a member is not read ('' when it is): past the shard's end, a link to nothing in the
    shard, or a special file."""
    if member.isreg():
        left = max(0, size - member.offset_data)
        if member.size > left:
            return (f"truncated or corrupt tar shard: the member's header declares {member.size} bytes but the shard "
                    f"holds {left} after it (the shard ends inside it, or its header is corrupt); not read")
        return ""
    if member.islnk() or member.issym():
        kind = "a hard link" if member.islnk() else "a symbolic link"
        if _link_target(member, name) in files:
            return ""
        return f"{kind} to '{member.linkname}', which is not a file of this shard; not read"
    return f"{_KINDS.get(member.type, 'a special member')} in the tar shard, not a file; not read"


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
    samples: dict[str, dict[str, tuple[int, int, str]]] = {}
    for name, offset, size, reason in index.members:
        key, extension = _key(name)
        samples.setdefault(key, {}).setdefault(extension, (offset, size, reason))  # a repeated member: the first one
    order = {ext.lstrip("."): i for i, ext in enumerate(readable)}
    rows = []
    for key, members in samples.items():
        images = sorted((e for e in members if e.rsplit(".", 1)[-1] in order),  # a readable one first
                        key=lambda e: (bool(members[e][2]), order[e.rsplit(".", 1)[-1]]))
        if images:
            offset, size, reason = members[images[0]]
            rows.append((f"{shard_id}/{key}", offset, size, reason))
        else:
            has = ", ".join(f".{e}" if e else "(no extension)" for e in members)
            notes = [f"{f'.{e}' if e else '(no extension)'}: {m[2]}" for e, m in members.items() if m[2]]
            rows.append((f"{shard_id}/{key}", 0, 0, f"no image member in this tar sample (it has {has})"
                         + (f"; {notes[0]}" if notes else "")))
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
