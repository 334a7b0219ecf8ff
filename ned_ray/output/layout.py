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

Every relative path an output's own files name (markers, the manifest) is checked with
:func:`is_inside` and :func:`owns` before it is read or removed: a path that would leave ``OUT``
(``..``, an absolute path, another bucket) or is not one of these names is damage, never followed.
:func:`owns` is also what ``--overwrite`` removes: ned-ray's files, never a user's.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Iterable

from ..storage import TMP_PREFIX  # written by storage.write_bytes

__all__ = ["MANIFEST", "JOB_FILE", "LISTING", "LEASE", "COMMITS", "IMAGE_PARTS", "IMAGES", "IMAGES_WRITER",
           "METADATA_JSON", "METADATA_NPZ", "TMP_PREFIX", "FORMAT_VERSION", "writer_key", "piece_name", "part",
           "index_part", "image_part", "marker", "metadata_files", "piece_of", "code_part", "head_file", "HEAD",
           "PROBE_PREFIX", "is_inside", "is_piece", "is_writer_key", "is_model_folder", "owns"]

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
PROBE_PREFIX = ".ned-ray-probe-"  # OUT/.ned-ray-probe-<hex>: the Ray executor's check that every node sees OUT

_PIECE = r"part-\d{5,}(?:-\d{9,})?"
_TMP = re.compile(r"\.tmp-[0-9a-f]{32}-(?P<name>.+)")  # storage.write_bytes' and the lease's temporary names
_TOP = {JOB_FILE, LISTING, LEASE, MANIFEST, IMAGES}
_MODEL_FILE = re.compile(rf"{_PIECE}\.(?:parquet|npy|image_index\.npy|codes\.parquet)")


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


def is_piece(name: object) -> bool:
    """Whether ``name`` is a piece name :func:`piece_name` makes."""
    return isinstance(name, str) and re.fullmatch(_PIECE, name) is not None


def is_writer_key(name: object) -> bool:
    """Whether ``name`` is a marker folder :func:`writer_key` (or the image sink) makes."""
    return isinstance(name, str) and (name == IMAGES_WRITER or re.fullmatch(r"models-[0-9a-f]{12}", name) is not None)


def is_inside(rel: object) -> bool:
    """Whether ``rel`` is a plain relative path below ``OUT``: '/'-separated names, none empty, ``.``
    or ``..``; no leading '/', backslash, protocol, or control character. Joined to ``OUT`` it stays
    inside ``OUT`` (and on object stores inside its bucket and prefix)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "://" in rel:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def is_model_folder(folder: str) -> bool:
    """Whether ``folder`` is a model's folder: the string form of a valid model id."""
    from ..ids import ModelId

    try:
        return str(ModelId.parse(folder)) == folder
    except (ValueError, TypeError):
        return False


def owns(rel: str) -> bool:
    """Whether ``OUT/rel`` is a file ned-ray writes in an output (by its name alone): the job's
    records, listing, lease, manifest and images table, commit markers, image parts, a model's
    parts, codes, head and metadata, the Ray executor's probe, and the temporary files of each.
    ``--overwrite`` removes these and nothing else."""
    if not is_inside(rel):
        return False
    folder, name = posixpath.split(rel)
    temporary = _TMP.fullmatch(name)
    name = temporary["name"] if temporary else name
    if not folder:
        return name in _TOP or (name.startswith(PROBE_PREFIX) and not temporary)
    if folder == IMAGE_PARTS:
        return re.fullmatch(rf"{_PIECE}\.parquet", name) is not None
    head, _, writer = folder.partition("/")
    if head == COMMITS:
        return is_writer_key(writer) and re.fullmatch(rf"{_PIECE}\.json", name) is not None
    if name in (METADATA_JSON, METADATA_NPZ, HEAD) or _MODEL_FILE.fullmatch(name):
        return is_model_folder(folder)
    return False
