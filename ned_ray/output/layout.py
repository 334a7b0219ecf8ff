"""Every name under an output folder ``OUT``, in one place: the writers, the verifier and the reader
all build their paths here (paths are relative to ``OUT``, '/'-separated, on any store).

    OUT/_job.json                               JOB_FILE: the options that define the content (checked on rerun)
    OUT/_listing.parquet                        LISTING: the images the output holds, in image_index order
    OUT/_lease.json                             LEASE: which job writes the output now
    OUT/<model_id>/part-NNNNN.parquet           image_index int64, image_id string, response fixed_size_list<float32>
    OUT/<model_id>/part-NNNNN.npy               float32 (n, V) or (n, 4, 63, 140)   [--format npy]
    OUT/<model_id>/part-NNNNN.image_index.npy   int64 (n,), the rows' image_index   [--format npy]
    OUT/<model_id>/part-NNNNN.codes.parquet     image_index, image_id, code fixed_size_list<float32>  [--store codes|both]
    OUT/<model_id>/head.npz                     HEAD: the model's readouts from its code (ned_ray.output.codes)
    OUT/<model_id>/metadata.json|.npz           NED's or BERG's metadata + provenance
    OUT/_images/part-NNNNN.parquet              IMAGE_PARTS: the images' status, per piece
    OUT/_commits/<writer>/part-NNNNN.json       COMMITS: commit markers (:mod:`ned_ray.job.commit`)
    OUT/images.parquet                          IMAGES: every input: image_index, image_id, status, error, width, height
    OUT/_manifest.json                          MANIFEST: written last; its presence means the output is complete

Piece names depend only on image indexes, so a rerun rewrites the same names and never duplicates
rows. Files being written on a local disk start with ``TMP_PREFIX`` until renamed into place.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from ..storage import TMP_PREFIX  # written by storage.write_bytes

__all__ = ["MANIFEST", "JOB_FILE", "LISTING", "LEASE", "COMMITS", "IMAGE_PARTS", "IMAGES", "IMAGES_WRITER",
           "METADATA_JSON", "METADATA_NPZ", "TMP_PREFIX", "FORMAT_VERSION", "writer_key", "piece_name", "part",
           "index_part", "image_part", "marker", "metadata_files", "piece_of", "code_part", "head_file", "HEAD"]

FORMAT_VERSION = 1  # of what readers see (parts, images.parquet, manifest); markers are internal
MANIFEST = "_manifest.json"
JOB_FILE = "_job.json"
LISTING = "_listing.parquet"
LEASE = "_lease.json"
COMMITS = "_commits"
IMAGE_PARTS = "_images"
IMAGES = "images.parquet"
IMAGES_WRITER = "images"  # the image sink's marker folder under COMMITS
METADATA_JSON = "metadata.json"
METADATA_NPZ = "metadata.npz"
HEAD = "head.npz"


def writer_key(models: Iterable[object]) -> str:
    """The marker folder of a writer that hosts ``models`` (stable for the same set of models)."""
    names = ",".join(sorted(str(m) for m in models))
    return "models-" + hashlib.sha1(names.encode()).hexdigest()[:12]


def piece_name(first: int, n_rows: int, shard_size: int, n_images: int) -> str:
    """``part-SSSSS`` for a whole shard, ``part-SSSSS-IIIIIIIII`` (I = first image_index) for a part of one."""
    shard = first // shard_size
    start, stop = shard * shard_size, min((shard + 1) * shard_size, n_images)
    return f"part-{shard:05d}" if (first, n_rows) == (start, stop - start) else f"part-{shard:05d}-{first:09d}"


def piece_of(name: str) -> str:
    """The piece a file of a part folder belongs to (``part-00003.image_index.npy`` -> ``part-00003``)."""
    return name.split(".", 1)[0]


def part(model: object, piece: str, fmt: str) -> str:
    """A model's response part in format ``fmt`` (parquet, npy)."""
    return f"{model}/{piece}.{fmt}"


def index_part(model: object, piece: str) -> str:
    """The image indexes of a ``.npy`` response part."""
    return f"{model}/{piece}.image_index.npy"


def code_part(model: object, piece: str) -> str:
    """A model's codes of one piece (``--store codes|both``)."""
    return f"{model}/{piece}.codes.parquet"


def head_file(model: object) -> str:
    """A model's head: its readouts from its code."""
    return f"{model}/{HEAD}"


def image_part(piece: str) -> str:
    """The images' status of one piece."""
    return f"{IMAGE_PARTS}/{piece}.parquet"


def marker(writer: str, piece: str) -> str:
    """The commit marker of a writer's piece."""
    return f"{COMMITS}/{writer}/{piece}.json"


def metadata_files(model: object) -> tuple[str, str]:
    """A model's metadata: (JSON document, arrays)."""
    return f"{model}/{METADATA_JSON}", f"{model}/{METADATA_NPZ}"
