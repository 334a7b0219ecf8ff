"""Reading a finished output: ``open_output(OUT)`` -> responses per model, in ``image_index`` order.

Only parts listed in ``_manifest.json`` are read, so a half-written output is never mistaken for a
complete one (opening it raises :class:`IncompleteOutputError`).
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import IncompleteOutputError, MissingDependencyError, ModelNotInOutputError, OutputDamagedError, OutputError
from ..ids import ModelId
from ..safeload import read_npy_header
from ..storage import filesystem
from ..text import printable
from . import layout
from .codes import CodeHead, rebuild, sha256

__all__ = ["open_output", "Output", "IncompleteOutputError"]

READ_BLOCK = 4 * 2**20  # bytes per request when streaming a part from an object store (s3fs reads 50 MiB by default)


@dataclass
class Output:
    """A finished ned-ray output folder."""

    uri: str
    manifest: dict[str, Any]
    storage_options: dict[str, Any] = field(default_factory=dict)
    _heads: dict[str, CodeHead] = field(default_factory=dict, repr=False, compare=False)

    @property
    def models(self) -> list[str]:
        return list(self.manifest["models"])

    def _fs(self):
        return filesystem(self.uri, self.storage_options)

    def _parts(self, key: str, rows: np.ndarray | None = None) -> list[dict[str, Any]]:
        """The model's parts ({"lo", "hi", format: path}) in image_index order; with ``rows`` (sorted
        image indexes), only the parts whose range holds one of them. The ranges come from the
        manifest (outputs written before they were recorded: from each part's image_index)."""
        entry = self.manifest["models"][key]
        fs, root = self._fs()
        formats = {fmt: [posixpath.join(root, p) for p in paths] for fmt, paths in entry["parts"].items()}
        n = len(next(iter(formats.values()), []))
        ranges = entry.get("index_ranges")
        if ranges is None:  # an earlier ned-ray's manifest: read each part's image indexes (small)
            ranges = [[int(i.min()), int(i.max())] if len(i) else [0, -1] for i in self._part_indexes(fs, formats, n)]
        parts = sorted(({"lo": lo, "hi": hi, **{fmt: paths[k] for fmt, paths in formats.items()}}
                        for k, (lo, hi) in enumerate(ranges)), key=lambda p: p["lo"])
        if rows is not None:
            parts = [p for p in parts if np.searchsorted(rows, p["lo"]) < np.searchsorted(rows, p["hi"], side="right")]
        return parts

    @staticmethod
    def _part_indexes(fs, formats: dict[str, list[str]], n: int) -> list[np.ndarray]:
        if "npy" in formats:
            data = fs.cat([p[:-4] + ".image_index.npy" for p in formats["npy"]])
            return [np.load(io.BytesIO(data[p[:-4] + ".image_index.npy"])) for p in formats["npy"]]
        return [pq.read_table(fs.open(p, "rb"), columns=["image_index"]).column(0).to_numpy() for p in formats["parquet"]]

    @staticmethod
    def _rows(rows: slice | range | np.ndarray | list[int] | None) -> np.ndarray | None:
        """Image indexes asked for, sorted and unique (a slice or range of image_index, or indexes)."""
        if rows is None:
            return None
        if isinstance(rows, (slice, range)):
            if rows.stop is None or (rows.step or 1) < 0:
                raise ValueError("rows must be a slice with a stop and a positive step (image_index values), or indexes")
            rows = np.arange(rows.start or 0, rows.stop, rows.step or 1)
        return np.unique(np.asarray(rows, np.int64))

    @staticmethod
    def _parquet_batches(fs, path: str, column: str, rows_per_batch: int):
        """(image_index, flat float32 values) batches of a part's ``column``, one row group at a time."""
        with fs.open(path, "rb", block_size=READ_BLOCK) as fh:  # object stores: 4 MiB requests
            parquet = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20)
            for batch in parquet.iter_batches(batch_size=rows_per_batch, columns=["image_index", column], use_threads=False):
                flat = batch.column(1)
                yield batch.column(0).to_numpy(), flat.flatten().to_numpy(zero_copy_only=False).reshape(len(batch), -1)

    def _kind(self, key: str, source: str) -> str:
        """The parts a read uses: ``auto``: response parts (Parquet, else .npy), else codes; ``responses``
        or ``codes`` (rebuilt) as asked, or one line saying the output does not hold them."""
        held = self.manifest["models"][key]["parts"]
        responses = next((k for k in ("parquet", "npy") if k in held), None)
        if source not in ("auto", "responses", "codes"):
            raise ValueError(f"source must be auto, responses or codes, got {source!r}")
        kind = (responses or "codes") if source == "auto" else (responses if source == "responses" else "codes")
        if kind is None or kind not in held:
            raise OutputError(f"{self.uri}: model {key} was stored without {source} (--store "
                              f"{self.manifest['models'][key].get('store', 'responses')})")
        return kind

    def _read_part(self, fs, part: dict[str, Any], rows_per_batch: int, kind: str = "parquet", key: str = "",
                   device: str = "cpu"):
        """(image_index, flat float32 responses) batches of one part, at most ``rows_per_batch`` rows
        each: Parquet one row group at a time, .npy by ranged reads of its rows, codes rebuilt."""
        if kind == "parquet":
            yield from self._parquet_batches(fs, part["parquet"], "response", rows_per_batch)
            return
        if kind == "codes":
            head = self.head(key)
            for index, codes in self._parquet_batches(fs, part["codes"], "code", rows_per_batch):
                yield index, rebuild(codes, head, device).reshape(len(index), -1)
            return
        index = np.load(io.BytesIO(fs.cat_file(part["npy"][:-4] + ".image_index.npy")))
        with fs.open(part["npy"], "rb") as fh:
            shape, _, dtype = read_npy_header(fh, part["npy"])
            offset = fh.tell()
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], rows_per_batch):
            stop = min(shape[0], start + rows_per_batch)
            data = fs.cat_file(part["npy"], start=offset + start * row, end=offset + stop * row)
            yield index[start:stop], np.frombuffer(data, dtype).reshape(stop - start, -1)

    def head(self, model_id: str | ModelId) -> CodeHead:
        """A coded model's head (``--store codes|both``), checked against the manifest's sha256."""
        key = self._key(model_id)
        if key not in self._heads:
            recorded = self.manifest["models"][key].get("head")
            if recorded is None:
                raise OutputError(f"{self.uri}: model {key} was stored without codes (--store responses)")
            fs, root = self._fs()
            data = fs.cat_file(posixpath.join(root, recorded["file"]))
            if sha256(data) != recorded["sha256"]:
                raise OutputDamagedError(f"{self.uri}: {recorded['file']} is not the head the manifest recorded (sha256 "
                                         "differs); the output is damaged")
            self._heads[key] = CodeHead.from_bytes(data)
        return self._heads[key]

    def iter_batches(self, model_id: str | ModelId, rows_per_batch: int = 1024,
                     rows: slice | range | np.ndarray | list[int] | None = None, source: str = "auto",
                     device: str = "cpu"):
        """Stream one model's responses: (image_index (n,), float32 responses (n, ...)) batches of at
        most ``rows_per_batch`` rows, in image_index order, one part (and one row group) at a time:
        memory is bounded by the batch, whatever the output's size. ``rows``: only these image
        indexes (a slice/range of image_index, or indexes); only the parts holding them are read.
        ``source``: ``auto`` (stored responses, else rebuilt from codes), ``responses``, or ``codes``
        (rebuilt from the codes, on ``device``: "cpu" or a torch device such as "cuda")."""
        if rows_per_batch < 1:
            raise ValueError(f"rows_per_batch must be at least 1, got {rows_per_batch}")
        key = self._key(model_id)
        wanted, shape, kind = self._rows(rows), self.shape(key), self._kind(key, source)
        fs, _ = self._fs()
        for part in self._parts(key, wanted):
            for index, values in self._read_part(fs, part, rows_per_batch, kind, key, device):
                if wanted is not None:
                    keep = np.isin(index, wanted)
                    index, values = index[keep], values[keep]
                if len(index) and np.any(np.diff(index) < 0):  # parts are written in order: rarely needed
                    order = np.argsort(index, kind="stable")
                    index, values = index[order], values[order]
                if len(index):
                    yield index, values.reshape(len(index), *shape)

    def codes(self, model_id: str | ModelId, rows: slice | range | np.ndarray | list[int] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(image_index (n,), float32 codes (n, width)) of a coded model, sorted by image_index: the
        small linear code its responses are made from (``head(model).readouts``)."""
        key = self._key(model_id)
        self._kind(key, "codes")
        wanted, fs = self._rows(rows), self._fs()[0]
        pieces = [(i, c) for part in self._parts(key, wanted)
                  for i, c in self._parquet_batches(fs, part["codes"], "code", 1 << 30)]
        index = np.concatenate([i for i, _ in pieces]) if pieces else np.zeros(0, np.int64)
        values = np.concatenate([c for _, c in pieces]) if pieces else np.zeros((0, self.head(key).width), np.float32)
        keep = np.isin(index, wanted) if wanted is not None else slice(None)
        order = np.argsort(index[keep], kind="stable")
        return index[keep][order], values[keep][order]

    def table(self, model_id: str | ModelId, rows: slice | range | np.ndarray | list[int] | None = None) -> pa.Table:
        """Arrow table (image_index, image_id, response) of one model, sorted by image_index;
        ``rows`` as :meth:`iter_batches` (only the parts holding them are read)."""
        key = self._key(model_id)
        wanted = self._rows(rows)
        parts = self._parts(key, wanted)
        if "parquet" not in self.manifest["models"][key]["parts"]:
            raise OutputError(f"{self.uri}: model {key} has no Parquet response parts (--format npy, or --store codes); "
                              "use responses() or iter_batches()")
        fs, _ = self._fs()
        paths = [p["parquet"] for p in parts]
        tables = [pq.read_table(io.BytesIO(data)) for data in fs.cat(paths).values()] if paths else []
        if not tables:  # no part holds the rows asked for
            return pa.table({"image_index": pa.array([], pa.int64()), "image_id": pa.array([], pa.string()),
                             "response": pa.array([], pa.list_(pa.float32(), int(np.prod(self.shape(key)))))})
        table = pa.concat_tables(tables)
        if wanted is not None:
            table = table.filter(pc.is_in(table.column("image_index"), pa.array(wanted)))
        return table.sort_by("image_index")

    def shape(self, model_id: str | ModelId) -> tuple[int, ...]:
        """Per-image response shape, from the model's metadata."""
        return self._shape(self._key(model_id), self.metadata(model_id))

    @staticmethod
    def _shape(key: str, meta: dict[str, Any]) -> tuple[int, ...]:
        if "response_shape" in meta["json"]:  # after any selection
            return tuple(meta["json"]["response_shape"])
        if ModelId.parse(key).family.key == "fwrf":  # outputs written before response_shape was recorded
            return (int(meta["npz"]["fmri/ncsnr"].shape[0]),)
        enc = meta["json"]["ned_metadata"]["encoding_models"]["encoding_accuracy"]["correlation_single_repetitions"]
        return tuple(enc["shape"])

    def responses(self, model_id: str | ModelId, rows: slice | range | np.ndarray | list[int] | None = None,
                  source: str = "auto", device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """(image_index (n,), float32 responses (n, V) or (n, 4, 63, 140)), sorted by image_index;
        ``rows``, ``source`` and ``device`` as :meth:`iter_batches` (only the parts holding the rows are read)."""
        key = self._key(model_id)
        batches = list(self.iter_batches(key, rows_per_batch=1 << 30, rows=rows, source=source, device=device))
        if not batches:
            return np.zeros(0, np.int64), np.zeros((0, *self.shape(key)), np.float32)
        index = np.concatenate([i for i, _ in batches])
        values = np.concatenate([v for _, v in batches]) if len(batches) > 1 else batches[0][1]
        order = np.argsort(index, kind="stable")
        return index[order], values[order]

    def images(self) -> pa.Table:
        """Every input image: image_index, image_id, status, error, width, height."""
        fs, root = self._fs()
        return pq.read_table(io.BytesIO(fs.cat_file(posixpath.join(root, self.manifest["images"]["file"]))))

    def metadata(self, model_id: str | ModelId) -> dict[str, Any]:
        """{'json': metadata.json as a dict, 'npz': {path: array}} of one model."""
        key = self._key(model_id)
        fs, root = self._fs()
        document = json.loads(fs.cat_file(posixpath.join(root, layout.metadata_files(key)[0])))
        with np.load(io.BytesIO(fs.cat_file(posixpath.join(root, layout.metadata_files(key)[1])))) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return {"json": document, "npz": arrays}

    def coords(self, model_id: str | ModelId) -> dict[str, np.ndarray]:
        """The response axes' labels after any selection: ``voxel`` (indexes into NED's voxel order)
        for fwrf and THINGS-fMRI; ``repetition`` (1-based), ``channel`` (names) and ``time`` (seconds)
        for EEG; ``vertex`` (fsaverage indexes of the hemisphere); ``sensor`` (names) and ``time``
        for MEG; ``electrode`` (indexes) and ``time`` for the TVSD Utah arrays."""
        key = self._key(model_id)
        meta = self.metadata(key)
        shape = self._shape(key, meta)
        npz, ned = meta["npz"], meta["json"]["ned_metadata"]
        dims = meta["json"].get("dims")
        if dims and all(f"coords/{d}" in npz for d in dims):
            return {d: npz[f"coords/{d}"] for d in dims}
        # outputs written before ned-ray recorded dims and coords (NED's models only)
        if ModelId.parse(key).family.key == "fwrf":
            return {"voxel": npz.get("selection/voxels", np.arange(shape[0]))}
        names = np.asarray(ned["eeg"]["ch_names"])
        times = npz["eeg/times"] if "eeg/times" in npz else np.asarray(ned["eeg"]["times"], dtype=np.float64)
        return {"repetition": np.arange(1, shape[0] + 1),
                "channel": names[npz["selection/channels"]] if "selection/channels" in npz else names,
                "time": times[npz["selection/times"]] if "selection/times" in npz else times}

    def to_xarray(self, model_id: str | ModelId, chunks: int | None = None):
        """One model's responses as an ``xarray.DataArray`` with named dimensions and coordinates:
        (image, voxel) or (image, repetition, channel, time); ``image`` is labelled by image_id, with
        image_index as a second coordinate. Needs xarray (``pip install 'ned-ray[analysis]'``).

        ``chunks``: a lazy array backed by dask, one task per part (rechunked to ``chunks`` images):
        nothing is read until computed, and computing reads only the parts it needs."""
        try:
            import xarray as xr
        except ImportError:
            raise MissingDependencyError("Output.to_xarray needs xarray: pip install 'ned-ray[analysis]'") from None
        key = self._key(model_id)
        images = self.images()
        ids = images.column("image_id").to_numpy(zero_copy_only=False)
        if chunks is None:
            index, values = self.responses(key)
        else:
            index, values = self._lazy(key, images, chunks)
        coords = self.coords(key)
        family = ModelId.parse(key).family
        return xr.DataArray(values, dims=("image", *coords), name=key,
                            coords={"image": ids[index], "image_index": ("image", index), **coords},
                            attrs={"model_id": key, "family": family.key,
                                   "units": f"{family.title} responses (as the model was trained: z-scored)"})

    def _lazy(self, key: str, images: pa.Table, chunks: int):
        """(image_index, dask array) of a model: a model holds a row for every ``ok`` image, so each
        part's rows are known from images.parquet without reading the part."""
        try:
            import dask
            import dask.array as da
        except ImportError:
            raise MissingDependencyError("Output.to_xarray(chunks=...) needs dask: pip install 'ned-ray[analysis]'") from None
        if chunks < 1:
            raise ValueError(f"chunks must be at least 1 image, got {chunks}")
        ok = pc.equal(images.column("status"), "ok")
        index = np.sort(images.column("image_index").filter(ok).to_numpy())
        shape = self.shape(key)
        blocks = []
        for part in self._parts(key):
            rows = index[np.searchsorted(index, part["lo"]):np.searchsorted(index, part["hi"], side="right")]
            if len(rows):
                read = dask.delayed(self._part_values)(part, rows, shape, self._kind(key, "auto"), key)
                blocks.append(da.from_delayed(read, shape=(len(rows), *shape), dtype=np.float32))
        values = da.concatenate(blocks) if blocks else da.zeros((0, *shape), np.float32)
        return index, values.rechunk({0: chunks})

    def _part_values(self, part: dict[str, Any], rows: np.ndarray, shape: tuple[int, ...], kind: str,
                     key: str) -> np.ndarray:
        """One part's responses, checked to be the rows images.parquet says it holds."""
        fs, _ = self._fs()
        pieces = list(self._read_part(fs, part, 1 << 30, kind, key))
        index = np.concatenate([i for i, _ in pieces]) if pieces else np.zeros(0, np.int64)
        values = np.concatenate([v for _, v in pieces]) if pieces else np.zeros((0, int(np.prod(shape))), np.float32)
        order = np.argsort(index, kind="stable")
        if not np.array_equal(index[order], rows):
            raise OutputError(f"{self.uri}: part {part.get('parquet') or part.get('npy')} holds other rows than "
                              "images.parquet's ok images; the output is damaged")
        return values[order].reshape(len(rows), *shape)

    # -- exports (ned_ray.output.exports) ---------------------------------------------------------
    def export(self, model_id: str | ModelId, to: str, dest: str, images: slice | list[int] | None = None,
               **options: Any) -> str:
        """Write one model as ``to`` (gifti, mgh, nifti, mne, netcdf, zarr) at ``dest``; ``images``:
        the rows to export (default all). The formats and their options: :mod:`ned_ray.output.exports`."""
        from .exports import EXPORTS

        if to not in EXPORTS:
            raise OutputError(f"unknown export format '{to}'; valid: {', '.join(EXPORTS)}")
        return EXPORTS[to](self, model_id, dest, images, **options)

    def to_zarr(self, model_id: str | ModelId, store: str, chunks: int = 1024, **kwargs: Any) -> str:
        """One model's responses with their coordinates as a Zarr store (:func:`~.exports.to_zarr`)."""
        from .exports import to_zarr

        return to_zarr(self, model_id, store, chunks=chunks, **kwargs)

    def to_nifti(self, model_id: str | ModelId, path: str, images: slice | list[int] | None = None,
                 fill: float = 0.0) -> str:
        """fMRI responses as a 4-D NIfTI volume (:func:`~.exports.to_nifti`)."""
        from .exports import to_nifti

        return to_nifti(self, model_id, path, images, fill)

    def to_mne(self, model_id: str | ModelId, images: slice | list[int] | None = None, mean: bool = False,
               repetition: int | None = None):
        """An ``mne.EvokedArray`` (one image, or the mean) or ``mne.EpochsArray`` (:func:`~.exports.to_mne`)."""
        from .exports import to_mne

        return to_mne(self, model_id, images, mean, repetition)

    def parts(self, model_id: str | ModelId, rows: np.ndarray | None = None) -> list[dict[str, Any]]:
        """A model's parts in image_index order: {"lo", "hi" (its image_index range), and per format
        held ("parquet", "npy", "codes") the part's path on :meth:`filesystem`}; with ``rows`` (sorted
        image indexes), only the parts holding one of them."""
        return self._parts(self._key(model_id), rows)

    def filesystem(self):
        """(fsspec filesystem, root path) of the output."""
        return self._fs()

    def _key(self, model_id: str | ModelId) -> str:
        key = str(model_id)
        if key not in self.manifest["models"]:
            raise ModelNotInOutputError(f"{self.uri} has no model '{key}'; it has: {', '.join(self.models)}")
        return key


def open_output(uri: str, storage_options: dict[str, Any] | None = None) -> Output:
    """Open a finished output folder (local or fsspec URL)."""
    fs, root = filesystem(uri, storage_options)
    path = posixpath.join(root, layout.MANIFEST)
    if not fs.exists(path):
        raise IncompleteOutputError(f"'{uri}' is not a finished ned-ray output (no _manifest.json): the job did not "
                                    "complete; rerun the same command to resume it")
    try:
        manifest = json.loads(fs.cat_file(path))
    except ValueError:
        raise OutputDamagedError(f"'{uri}': its _manifest.json is not JSON; the output is damaged: rerun the job "
                                 "with --overwrite") from None
    _check_manifest(uri, manifest)
    return Output(uri, manifest, storage_options or {})


def _check_manifest(uri: str, manifest: Any) -> None:
    """Every file the manifest names is one of the output's own, inside it (``layout.owns``): a
    manifest naming ``../x``, an absolute path or another bucket is damage, and nothing is read."""
    def bad(what: str) -> OutputDamagedError:
        return OutputDamagedError(f"'{uri}': its manifest {what}; the output is damaged (nothing read): rerun the job "
                                  "with --overwrite, or use the output it came from")

    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict) or \
            not isinstance(manifest.get("images"), dict):
        raise bad("is not a ned-ray manifest")
    if manifest["images"].get("file") != layout.IMAGES:
        raise bad(f"names images file {printable(manifest['images'].get('file'))!r}, not {layout.IMAGES}")
    for key, entry in manifest["models"].items():
        if not layout.is_model_folder(key):
            raise bad(f"names model {printable(key)!r}, which is not a model id")
        parts = entry.get("parts", {}) if isinstance(entry, dict) else None
        if not isinstance(parts, dict) or not all(isinstance(v, list) for v in parts.values()):
            raise bad(f"lists the parts of {key} in another shape")
        head = entry.get("head", {}).get("file", layout.head_file(key)) if isinstance(entry.get("head"), dict) else \
            layout.head_file(key)
        for rel in [p for paths in parts.values() for p in paths] + [head]:
            if not (isinstance(rel, str) and layout.owns(rel) and posixpath.dirname(rel) == key):
                raise bad(f"names {printable(rel)!r}, which is not a file of {key} inside the output")
