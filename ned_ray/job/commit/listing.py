"""The listing an output holds, ``_listing.parquet`` (invariant 7 of :mod:`.transaction`): its
fingerprint, and how a rerun's input is reconciled with it."""

from __future__ import annotations

import hashlib
import io
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import ListingChangedError
from ...output.layout import LISTING
from ...storage import fresh_exists, parquet_bytes, write_bytes

__all__ = ["listing_fingerprint", "read_listing", "write_listing", "reconcile"]


def listing_fingerprint(listing: pa.Table, chunk_rows: int = 65_536) -> str:
    """sha256 of the listing's rows (id, size, version), in order: equal listings, equal fingerprints.

    Streamed by chunks of rows (one digest of every row's length, one of all the rows' bytes,
    combined): memory stays bounded whatever the listing's length, and the value does not depend
    on the chunking."""
    import pyarrow.compute as pc

    lengths, data = hashlib.sha256(), hashlib.sha256()
    for start in range(0, listing.num_rows, chunk_rows):
        chunk = listing.slice(start, chunk_rows)
        rows = pc.binary_join_element_wise(chunk.column("image_id"), pc.cast(chunk.column("bytes"), pa.string()),
                                           chunk.column("version"), "\t")
        rows = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)[rows.offset:rows.offset + len(rows) + 1]
        lengths.update(np.diff(offsets).astype("<i4").tobytes())
        data.update(memoryview(rows.buffers()[2])[offsets[0]:offsets[-1]])
    return hashlib.sha256(lengths.digest() + data.digest()).hexdigest()


def read_listing(fs, root: str) -> pa.Table | None:
    path = posixpath.join(root, LISTING)
    if not fresh_exists(fs, path):
        return None
    return pq.read_table(io.BytesIO(fs.cat_file(path)))


def write_listing(fs, root: str, listing: pa.Table) -> None:
    write_bytes(fs, posixpath.join(root, LISTING), parquet_bytes(listing))


def reconcile(previous: pa.Table, current: pa.Table, output: str) -> tuple[pa.Table, int]:
    """The listing a rerun works on: the output's recorded listing (its image_index order kept), plus
    images added to the input since, appended in sorted order; every row takes the columns of the
    input now (the recorded listing gives only the order). Returns (listing, number added).
    Refuses, in one line, inputs that lost images or changed ones (other size or version).
    Compared with one Arrow join (no Python object per image)."""
    import pyarrow.compute as pc

    keys = ["image_id", "bytes", "version"]
    joined = previous.select(keys).join(current.select(keys), keys="image_id", join_type="full outer",
                                        left_suffix="_old", right_suffix="_new", coalesce_keys=True)
    old_here, new_here = pc.is_valid(joined.column("bytes_old")), pc.is_valid(joined.column("bytes_new"))
    removed = joined.filter(pc.and_(old_here, pc.invert(new_here)))
    both = joined.filter(pc.and_(old_here, new_here))
    modified = both.filter(pc.or_(pc.not_equal(both.column("bytes_old"), both.column("bytes_new")),
                                  pc.not_equal(both.column("version_old"), both.column("version_new"))))
    added = joined.filter(pc.invert(old_here)).column("image_id")
    if removed.num_rows or modified.num_rows:
        removed, modified = removed.sort_by("image_id"), modified.sort_by("image_id")
        parts = [f"{removed.num_rows} removed" + (f" (e.g. {removed['image_id'][0]})" if removed.num_rows else ""),
                 f"{modified.num_rows} modified" + (
                     f" (e.g. {modified['image_id'][0]}: size/version ({modified['bytes_old'][0]}, "
                     f"'{modified['version_old'][0]}') -> ({modified['bytes_new'][0]}, '{modified['version_new'][0]}'))"
                     if modified.num_rows else "")]
        raise ListingChangedError(f"the input changed since output '{output}' was started: {', '.join(parts)}, "
                                  f"{len(added)} added; use --overwrite to start over, or another --output")
    # the recorded listing gives the order; how to read each image (its URI, offset, skip) is the input's
    # as listed now, never what the output's file says (an output received from elsewhere may name anything)
    positions = previous.select(["image_id"]).append_column("position", pa.array(np.arange(previous.num_rows)))
    previous = positions.join(current, keys="image_id", join_type="inner").sort_by("position").select(current.schema.names)
    if len(added) == 0:
        return previous, 0
    appended = current.filter(pc.is_in(current.column("image_id"), added)).sort_by("image_id")
    return pa.concat_tables([previous, appended.cast(previous.schema)]), len(added)
