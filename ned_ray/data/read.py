"""A finished output as a Ray Dataset, for distributed analyses: read in parallel by Ray tasks, one
per part of the first model (an image_index range), never gathered on the driver.

One row per image that was encoded (``status="ok"``): ``image_index``, ``image_id`` and one float32
tensor column per model, named by its id, in each model's response shape. A task reads, as plain
Parquet, every model's parts that hold its range and aligns them on image_index (no shuffle: parts
cover ranges). Models stored as codes (``--store codes``) have their responses rebuilt from the
codes and the head, in the tasks. Memory per task: one part of each model. Rows come in range order
per task, tasks in no guaranteed order: sort by ``image_index`` when order matters.
"""

from __future__ import annotations

import fnmatch
import posixpath
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from ..errors import ModelNotInOutputError, OutputError
from ..output.codes import CodeHead, rebuild
from ..output.reader import Output, open_output

__all__ = ["read_output"]

IMAGE_COLUMNS = ("image_id", "status", "error", "width", "height")  # of images.parquet, beside image_index


def _models(output: Output, models: str | Sequence[str] | None) -> list[str]:
    if models is None:
        return output.models
    patterns = [models] if isinstance(models, str) else list(map(str, models))
    chosen = [m for m in output.models if any(fnmatch.fnmatchcase(m, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(m, p) for m in output.models)]
    if missing or not chosen:
        raise ModelNotInOutputError(f"{output.uri} has no model matching {', '.join(missing or patterns)}; it has: "
                                    f"{', '.join(output.models)}")
    return chosen


def _ranges(output: Output, key: str) -> list[tuple[int, int]]:
    """[lo, hi] image_index ranges of a model's parts: the read tasks' units."""
    return [(p["lo"], p["hi"]) for p in output.parts(key) if p["hi"] >= p["lo"]]  # an empty part holds no range


def _values(table: pa.Table, column: str, shape: tuple[int, ...], head: CodeHead | None) -> np.ndarray:
    """A part's flat ``response`` or ``code`` column (rebuilt with ``head``) as float32 (n, *shape)."""
    if not len(table):
        return np.zeros((0, *shape), np.float32)
    flat = table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1)
    values = rebuild(flat, head) if head is not None else flat
    return np.ascontiguousarray(values, np.float32).reshape(len(table), *shape)


def _read_ranges(batch: dict[str, np.ndarray], *, output: Output, keys: list[str], columns: list[str]
                 ) -> dict[str, np.ndarray]:
    """One read task: the rows of image_index [lo, hi] of every model in ``keys``, each model's parts
    that hold them read whole (plain Parquet) and aligned on image_index."""
    fs, root = output.filesystem()
    lo, hi = int(batch["lo"].min()), int(batch["hi"].max())
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ids = None
    for key in keys:
        held = output.manifest["models"][key]["parts"]
        kind = "parquet" if "parquet" in held else "codes"
        column = "response" if kind == "parquet" else "code"
        head = output.head(key) if kind == "codes" else None
        tables = []
        for part in output.parts(key, np.arange(lo, hi + 1)):
            with fs.open(part[kind], "rb") as fh:
                table = pq.read_table(fh, columns=["image_index", "image_id", column])
            index = table.column("image_index")
            tables.append(table.filter(pc.and_(pc.greater_equal(index, lo), pc.less_equal(index, hi))))
        table = pa.concat_tables(tables).sort_by("image_index") if tables else None
        if table is None:
            found[key] = (np.zeros(0, np.int64), np.zeros((0, *output.shape(key)), np.float32))
            continue
        found[key] = (table.column("image_index").to_numpy(), _values(table, column, output.shape(key), head))
        if ids is None:
            ids = dict(zip(found[key][0].tolist(), table.column("image_id").to_pylist()))
    common = found[keys[0]][0]
    for index, _ in found.values():
        common = np.intersect1d(common, index)
    out: dict[str, np.ndarray] = {"image_index": common}
    if "image_id" in columns:
        out["image_id"] = np.asarray([ids[i] for i in common.tolist()], object)
    extra = [c for c in columns if c != "image_id"]
    if extra:
        with fs.open(posixpath.join(root, output.manifest["images"]["file"]), "rb") as fh:
            images = pq.read_table(fh, columns=["image_index", *extra],
                                   filters=[("image_index", ">=", lo), ("image_index", "<=", hi)])
        rows = np.searchsorted(images.column("image_index").to_numpy(), common)
        for c in extra:
            out[c] = images.column(c).to_numpy(zero_copy_only=False)[rows]
    for key, (index, values) in found.items():
        out[key] = values[np.searchsorted(index, common)]
    return out


def read_output(uri: str | Output, models: str | Sequence[str] | None = None, *, columns: Sequence[str] = ("image_id",),
                storage_options: dict[str, Any] | None = None) -> ray.data.Dataset:
    """A finished output (``ned-ray encode``'s folder or URL, or an opened :class:`~ned_ray.output.Output`)
    as a lazy Ray Dataset: ``image_index``,
    the ``columns`` asked of the images' table (any of image_id, status, error, width, height) and
    one tensor column per model of ``models`` (ids or globs; default every model). Refused in one
    line when the output is unfinished (nothing read) or a model is not in it."""
    output = uri if isinstance(uri, Output) else open_output(uri, storage_options)
    keys = _models(output, models)
    bad = [c for c in columns if c not in IMAGE_COLUMNS]
    if bad:
        raise ValueError(f"columns: {', '.join(bad)} not among the images' columns {', '.join(IMAGE_COLUMNS)}")
    for key in keys:
        if not {"parquet", "codes"} & set(output.manifest["models"][key]["parts"]):
            raise OutputError(f"{output.uri}: model {key} has .npy parts only (--format npy); read_output reads Parquet "
                              "parts: encode with --format parquet (or parquet,npy), or use open_output(...).iter_batches")
    units = [{"lo": lo, "hi": hi} for lo, hi in _ranges(output, keys[0])]
    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    return ds.map_batches(_read_ranges, batch_size=1, batch_format="numpy",
                          fn_kwargs={"output": output, "keys": keys, "columns": list(columns)})
