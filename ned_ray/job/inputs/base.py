"""What every input kind shares: the listing, the listed input (:class:`ImageSource`), and the two
interfaces a kind implements.

* :class:`InputKind`: can it open this URI (:meth:`~InputKind.opens`), and its listing
  (:meth:`~InputKind.open`): what ``--images`` names directly (a ``.npy``, a Parquet file, a ``.txt``
  list, a folder, glob or brace pattern of files);
* :class:`ShardKind`: files that hold many images each (tar shards, Parquet shards), claimed from a
  folder, glob or pattern when its files hold no loose image;
* :class:`Reader`: how a listed input's images are read, shard by shard, on the decode workers.

The listing is an Arrow table (compact at millions of entries): ``image_id`` (the URI relative to the
input root, the id column, or the row number), ``uri``, ``bytes`` and ``version`` (the store's size
and ETag/generation/mtime, where listing gives them), ``skip`` (why a file is not read, or empty);
kinds read by position add ``offset`` (a tar member's byte offset, a Parquet row).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import pyarrow as pa

from ...storage import file_identity

__all__ = ["ImageSource", "InputKind", "ShardKind", "Reader", "Request", "Skipped", "LISTING_SCHEMA",
           "OFFSET_LISTING_SCHEMA", "KINDS", "SHARD_KINDS", "register", "listing_table", "version_of", "relative"]

LISTING_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("bytes", pa.int64()),
                            ("version", pa.string()), ("skip", pa.string())])
# inputs read by position inside a file: tar shards (the member's byte offset), Parquet files (the row)
OFFSET_LISTING_SCHEMA = LISTING_SCHEMA.append(pa.field("offset", pa.int64()))


@dataclass(frozen=True)
class Skipped:
    """A listed file that is not read: why."""

    reason: str


class Reader(ABC):
    """How one kind reads images [start, stop) of its listing: raw items (bytes, uint8 (3, H, W)
    arrays, :class:`Skipped`, or the exception reading raised). Small and picklable: it travels to
    every decode task with the input's description."""

    name: ClassVar[str]  # the kind's name (files | tar | npy | parquet)
    row_columns: ClassVar[tuple[str, ...]] = ()  # the listing columns read() needs of each image

    @abstractmethod
    def read(self, source: "ImageSource", start: int, stop: int, rows: pa.Table) -> list[Any]:
        """Raw items of images [start, stop); ``rows``: their listing rows (:attr:`row_columns`)."""


@dataclass
class ImageSource:
    """A listed input. ``read(start, stop)`` returns raw items for images [start, stop)."""

    uri: str
    listing: pa.Table
    reader: Reader
    storage_options: dict[str, Any] = field(default_factory=dict)
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # list entries naming a URI listed before
    notes: list[str] = field(default_factory=list)  # what a person should know about the listing (printed once)

    def __len__(self) -> int:
        return self.listing.num_rows

    @property
    def kind(self) -> str:
        return self.reader.name

    @property
    def ids(self) -> list[str]:
        return self.listing.column("image_id").to_pylist()

    @property
    def uris(self) -> list[str]:
        return self.listing.column("uri").to_pylist()

    def with_listing(self, listing: pa.Table) -> "ImageSource":
        """The same input with another listing (an output's recorded order plus appended images)."""
        return replace(self, listing=listing)

    def description(self) -> "ImageSource":
        """A copy without the per-image listing: what a decode task needs besides its shard item."""
        return replace(self, listing=self.listing.slice(0, 0), duplicates=[], notes=[])

    @property
    def row_columns(self) -> list[str]:
        """The listing columns :meth:`read` needs of each image."""
        return list(self.reader.row_columns)

    def read(self, start: int, stop: int, rows: pa.Table | None = None) -> list[Any]:
        """Raw items of images [start, stop); ``rows``: their listing rows (:attr:`row_columns`) when
        this copy does not hold the listing."""
        rows = rows if rows is not None else self.listing.slice(start, stop - start).select(self.row_columns)
        return self.reader.read(self, start, stop, rows)


@dataclass(frozen=True)
class Request:
    """What listing an input needs besides its URI: fsspec options, a Parquet input's image and id
    columns (``--image-column``, ``--id-column``), the job's output (never listed as an input), and
    the listing that output recorded (tar shards unchanged since are not indexed again)."""

    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    column: str | None = None
    id_column: str | None = None
    exclude: str | None = None
    known: pa.Table | None = None

    @property
    def protocol(self) -> str:
        """``s3://`` and the like, or "" for local paths."""
        return self.uri.split("://", 1)[0] + "://" if "://" in self.uri else ""


class InputKind(ABC):
    """One kind of ``--images``: a registered module of :mod:`ned_ray.job.inputs`."""

    name: ClassVar[str]
    what: ClassVar[str]  # how an error message names it: "a .npy array", "a folder"...

    @abstractmethod
    def opens(self, fs, path: str, request: Request) -> bool:
        """Whether ``path`` (on ``fs``) is an input of this kind (cheap: names and one stat at most)."""

    @abstractmethod
    def open(self, fs, path: str, request: Request) -> ImageSource:
        """The input's listing (on the driver: no image is read)."""


class ShardKind(ABC):
    """Files holding many images each, listed from a folder, glob or pattern of them."""

    name: ClassVar[str]

    @abstractmethod
    def claims(self, entries: list[tuple[str, int, str]]) -> bool:
        """Whether these files (path, size, version; none a loose image) are shards of this kind."""

    @abstractmethod
    def open_shards(self, fs, entries: list[tuple[str, int, str]], root: str, request: Request) -> ImageSource:
        """The shards' listing: one row per image they hold."""


def listing_table(ids: list[str], uris: list[str], sizes: list[int], versions: list[str], skips: list[str]) -> pa.Table:
    return pa.table([pa.array(ids, pa.string()), pa.array(uris, pa.string()), pa.array(sizes, pa.int64()),
                     pa.array(versions, pa.string()), pa.array(skips, pa.string())], schema=LISTING_SCHEMA)


def version_of(info: dict[str, Any]) -> str:
    """A stored file's version (ETag, generation or mtime: the first the filesystem reports)."""
    identity = file_identity(info)
    return next((str(v) for k, v in identity.items() if k != "bytes"), "")


def relative(uri: str, root: str) -> str:
    """``uri`` relative to ``root`` where it lies under it, else itself."""
    root = root.rstrip("/") + "/"
    return uri[len(root):] if uri.startswith(root) else uri


KINDS: list[InputKind] = []  # what --images may name, in the order they are asked (the package registers them)
SHARD_KINDS: list[ShardKind] = []  # files of many images each, in the order they claim a folder's files


def register(kind: InputKind | ShardKind) -> None:
    """Add an input kind (asked after those registered before it)."""
    (SHARD_KINDS if isinstance(kind, ShardKind) else KINDS).append(kind)
