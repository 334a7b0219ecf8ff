"""An output's responses in the formats neuroscientists open: GIFTI and MGH surface maps (fsaverage),
NIfTI volumes (NSD fwrf, THINGS-fMRI), MNE objects (EEG, MEG, Utah arrays), netCDF and Zarr (any
model, through xarray).

Each exporter takes an :class:`~ned_ray.output.reader.Output`, one model and optionally the rows
(images, in output order) to export, and writes one file that the format's own library reads back
(nibabel, mne, xarray). The libraries are optional (``pip install 'ned-ray[export]'``); a missing
one is one error naming the extra. :data:`EXPORTS` maps each ``--to`` name of ``ned-ray export`` to
its writer.

The destination is checked before anything is read (:mod:`.destination`) and written under a
temporary name, renamed into place when whole: a bad ``--dest``, rows that are not the model's, or
a full disk are one line each, and leave nothing at ``--dest``. Image ids are stored verbatim where
they are data (netCDF and Zarr coordinates, MNE metadata); where they are labels in markup (GIFTI
names, MNE comments) non-printable characters are escaped (:func:`~ned_ray.text.printable`); a
format that cannot hold an id says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DestinationExistsError, MissingDependencyError, OutputError
from ..ids import ModelId
from ..text import printable
from .destination import check_file, is_url, written

if TYPE_CHECKING:
    from .reader import Output

__all__ = ["EXPORTS", "to_gifti", "to_mgh", "to_nifti", "to_mne", "write_mne", "to_netcdf", "to_zarr", "surface_maps",
           "parse_rows"]

Rows = slice | Sequence[int] | np.ndarray | None


def _need(module: str, what: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise MissingDependencyError(f"{what} needs {module.split('.')[0]}: pip install 'ned-ray[export]'") from None


def parse_rows(text: str | None) -> Rows:
    """``--images``: ``START:END`` (a slice of rows) or ``i,j,k`` (rows), in output order; None: all."""
    if not text:
        return None
    try:
        if ":" in text:
            start, _, end = text.partition(":")
            return slice(int(start) if start else None, int(end) if end else None)
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise OutputError(f"--images must be START:END or a comma-separated list of rows, got '{text}'") from None


def _describe(rows: Rows) -> str:
    if isinstance(rows, slice):
        return f"{'' if rows.start is None else rows.start}:{'' if rows.stop is None else rows.stop}"
    return ",".join(str(int(r)) for r in np.asarray(rows).reshape(-1)[:5]) + (", ..." if np.size(rows) > 5 else "")


def _positions(rows: Rows, n: int, key: str) -> np.ndarray | slice:
    """The rows to export as positions in ``range(n)`` (all: ``slice(None)``); rows that are not the
    model's, or none at all, are one line saying which rows it has."""
    has = f"it has {n} image(s): rows 0 to {n - 1}" if n else "it has no image"
    if rows is None:
        if not n:
            raise OutputError(f"no images to export from {key} ({has})")
        return slice(None)
    if isinstance(rows, slice):
        if rows.step is not None and rows.step < 1:
            raise OutputError(f"--images {_describe(rows)}: a range goes forward (START:END)")
        picked = np.arange(n)[rows]
    else:
        picked = np.asarray(rows, np.int64).reshape(-1)
        outside = picked[(picked < 0) | (picked >= n)]
        if len(outside):
            raise OutputError(f"--images {_describe(rows)}: {', '.join(map(str, outside[:3].tolist()))} "
                              f"{'is' if len(outside) == 1 else 'are'} not a row of {key} ({has})")
    if not len(picked):
        raise OutputError(f"--images {_describe(rows)} selects no image of {key} ({has})")
    return picked


def _values(out: "Output", key: str, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, float32 responses) of ``rows`` of a model (all rows when None)."""
    index, values = out.responses(key)
    picked = _positions(rows, len(index), key)
    ids = out.images().column("image_id").to_numpy(zero_copy_only=False)[index]
    return np.asarray(ids[picked]).astype(str), values[picked]


# -- surfaces ---------------------------------------------------------------------------------------
def surface_maps(out: "Output", model_id: str | ModelId, rows: Rows = None) -> tuple[str, np.ndarray, np.ndarray]:
    """(hemisphere, image ids, (images, vertices) float32) of an fsaverage model on its hemisphere's
    whole mesh: the vertices its selection kept in place, every other vertex NaN."""
    key = out._key(model_id)
    mid = ModelId.parse(key)
    if mid.family.variant != "hemisphere":
        raise OutputError(f"{key} is not a surface (fsaverage) model; GIFTI and MGH hold fsaverage maps "
                          "(export it --to netcdf or zarr)")
    meta = out.metadata(key)
    total = len(meta["npz"][f"fmri/{mid.variant}_ncsnr"])  # every vertex of the hemisphere (163,842 on fsaverage)
    ids, values = _values(out, key, rows)
    full = np.full((len(values), total), np.nan, dtype=np.float32)
    full[:, out.coords(key)["vertex"]] = values
    return mid.variant, ids, full


def to_gifti(out: "Output", model_id: str | ModelId, dest: str, rows: Rows = None) -> str:
    """A GIFTI functional file (``.func.gii``): one float32 data array per image, named by its
    image_id, on the hemisphere's whole mesh (NaN where the selection kept no vertex)."""
    nib = _need("nibabel", "export to GIFTI")
    path = check_file(dest)
    hemisphere, ids, full = surface_maps(out, model_id, rows)
    structure = {"lh": "CortexLeft", "rh": "CortexRight"}[hemisphere]
    image = nib.gifti.GiftiImage(meta=nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure}))
    for name, values in zip(ids, full):
        image.add_gifti_data_array(nib.gifti.GiftiDataArray(
            values, intent="NIFTI_INTENT_NONE", datatype="NIFTI_TYPE_FLOAT32",
            meta=nib.gifti.GiftiMetaData({"Name": printable(name)})))  # XML holds no control character
    with written(path) as tmp:
        nib.save(image, str(tmp))
    return dest


def to_mgh(out: "Output", model_id: str | ModelId, dest: str, rows: Rows = None) -> str:
    """A FreeSurfer MGH/MGZ overlay: (vertices, 1, 1, images) float32 on the hemisphere's whole mesh
    (NaN where the selection kept no vertex); image ids are the output's order."""
    nib = _need("nibabel", "export to MGH")
    path = check_file(dest)
    _, _, full = surface_maps(out, model_id, rows)
    with written(path) as tmp:
        nib.save(nib.MGHImage(np.ascontiguousarray(full.T)[:, None, None, :], np.eye(4)), str(tmp))
    return dest


# -- volumes ----------------------------------------------------------------------------------------
def to_nifti(out: "Output", model_id: str | ModelId, dest: str, rows: Rows = None, fill: float = 0.0) -> str:
    """A 4-D NIfTI volume (x, y, z, image), ``fill`` outside the model's voxels.

    NSD fwrf: voxel v goes to the v-th True entry (C order) of NED's ``roi_mask_volume``, with NED's
    ``fmri_affine``. THINGS-fMRI: voxel v goes to ``voxel_coords[v]`` of BERG's metadata, in a volume
    just large enough for them, in voxel coordinates (identity affine: the metadata gives no affine)."""
    nib = _need("nibabel", "export to NIfTI")
    path = check_file(dest)
    key = out._key(model_id)
    npz = out.metadata(key)["npz"]
    if "fmri/roi_mask_volume" not in npz and "fmri/voxel_coords" not in npz:
        raise OutputError(f"{key} is not a volume model (NSD fwrf or THINGS-fMRI): NIfTI holds volumes "
                          "(surfaces: --to gifti or mgh; any model: --to netcdf or zarr)")
    _, values = _values(out, key, rows)
    voxels = out.coords(key)["voxel"]
    if "fmri/roi_mask_volume" in npz:
        mask, affine = npz["fmri/roi_mask_volume"].astype(bool), np.asarray(npz["fmri/fmri_affine"], np.float64)
        full = np.full((len(values), int(mask.sum())), fill, dtype=np.float32)
        full[:, voxels] = values
        volume = np.full((*mask.shape, len(values)), fill, dtype=np.float32)
        volume[mask] = full.T  # boolean indexing walks the mask in C order, as NED's vol[mask] = response
    else:
        coords = np.asarray(npz["fmri/voxel_coords"], np.int64)[voxels]
        volume = np.full((*(np.asarray(npz["fmri/voxel_coords"]).max(0) + 1), len(values)), fill, dtype=np.float32)
        volume[coords[:, 0], coords[:, 1], coords[:, 2]] = values.T  # a voxel selected twice holds its one value
        affine = np.eye(4)
    with written(path) as tmp:
        nib.save(nib.Nifti1Image(volume, affine), str(tmp))
    return dest


# -- sensors: MNE ------------------------------------------------------------------------------------
SENSOR_AXES = {"channel": "eeg", "sensor": "mag", "electrode": "misc"}  # response axis -> MNE channel type


def to_mne(out: "Output", model_id: str | ModelId, rows: Rows = None, mean: bool = False,
           repetition: int | None = None):
    """An MNE object of an EEG, MEG or Utah-array model: ``mne.EvokedArray`` of one image (or of the
    mean over ``rows`` with ``mean``), else ``mne.EpochsArray`` (an epoch per image, event id 1,
    image ids in ``epochs.metadata`` when pandas is installed). Channel names and times come from
    the output's coordinates; EEG repetitions are averaged unless ``repetition`` (1-based) picks
    one; EEG gets the standard 10-20 montage when every channel is in it. Values are the model's
    units (z-scored), not volts or tesla."""
    mne = _need("mne", "export to MNE")
    key = out._key(model_id)
    coords = out.coords(key)
    axis = next((a for a in SENSOR_AXES if a in coords), None)
    if axis is None or "time" not in coords:
        raise OutputError(f"{key} has no sensors and times (its axes: {', '.join(coords)}); MNE holds EEG, MEG and "
                          "Utah-array models (any model: --to netcdf or zarr)")
    ids, values = _values(out, key, rows)
    if "repetition" in coords:
        values = values.mean(axis=1) if repetition is None else values[:, list(coords["repetition"]).index(repetition)]
    times = np.asarray(coords["time"], np.float64)
    steps = np.diff(times)
    if len(times) > 1 and not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9):
        raise OutputError(f"{key}: its time points are not evenly spaced (a time selection with gaps); MNE needs a "
                          "sampling rate: export --to netcdf or zarr instead")
    names = [str(n) for n in coords[axis]]
    if len(set(names)) != len(names):
        raise OutputError(f"{key}: a channel appears twice (the selection kept duplicates); MNE needs unique names")
    sfreq = 1.0 / steps[0] if len(times) > 1 else 1.0
    info = mne.create_info(names, sfreq, ch_types=SENSOR_AXES[axis])
    if axis == "channel":
        builtin = mne.channels.get_builtin_montages()  # MNE 1.13 renamed standard_1020 to colin27_1020
        montage = mne.channels.make_standard_montage("colin27_1020" if "colin27_1020" in builtin else "standard_1020")
        if set(names) <= set(montage.ch_names):
            info.set_montage(montage)
    data = values.astype(np.float64)
    if mean or len(data) == 1:
        comment = f"{key}: mean of {len(data)} images" if len(data) > 1 else f"{key}: {printable(ids[0])}"
        return mne.EvokedArray(data.mean(axis=0), info, tmin=times[0], nave=len(data), comment=comment, verbose=False)
    events = np.column_stack([np.arange(len(data)), np.zeros(len(data), int), np.ones(len(data), int)])
    metadata = None
    try:
        import pandas as pd

        metadata = pd.DataFrame({"image_id": ids})
    except ImportError:
        pass
    return mne.EpochsArray(data, info, events=events, tmin=times[0], event_id={"image": 1}, metadata=metadata,
                           verbose=False)


def write_mne(out: "Output", model_id: str | ModelId, dest: str, rows: Rows = None, mean: bool = False) -> str:
    """:func:`to_mne` saved as FIF: an Evoked to ``*-ave.fif``, Epochs to ``*-epo.fif`` (MNE's names)."""
    path = check_file(dest)
    obj = to_mne(out, model_id, rows, mean)
    suffix = "-ave.fif" if type(obj).__name__ == "EvokedArray" else "-epo.fif"
    if not dest.endswith(suffix):
        kind = "one image or --mean gives an Evoked" if suffix == "-ave.fif" else "several images give Epochs"
        raise OutputError(f"--dest must end with '{suffix}' ({kind}; MNE reads files by these names), got '{dest}'")
    with written(path) as tmp:
        obj.save(str(tmp), overwrite=True, verbose=False)
    return dest


# -- arrays: xarray ----------------------------------------------------------------------------------
def _dataset(out: "Output", model_id: str | ModelId, rows: Rows, chunks: int | None = None):
    data = out.to_xarray(model_id, chunks=chunks)
    picked = _positions(rows, data.sizes["image"], out._key(model_id))
    if rows is not None:
        data = data.isel(image=picked)
    dataset = data.to_dataset(name="responses")
    dataset.attrs.update(data.attrs)
    for name, coord in dataset.coords.items():  # names as variable-length strings (netCDF-4's and Zarr v3's)
        if coord.dtype.kind == "U":
            dataset = dataset.assign_coords({name: coord.astype(object)})
    return dataset


def to_netcdf(out: "Output", model_id: str | ModelId, dest: str, rows: Rows = None) -> str:
    """A netCDF-4 file (h5netcdf) of one model: ``responses`` with its named axes and coordinates.
    Made in memory, then written whole (HDF5 does not survive a full disk mid-file)."""
    _need("h5netcdf", "export to netCDF")
    path = check_file(dest)
    dataset = _dataset(out, model_id, rows)
    ids = pa.array(dataset["image"].values, pa.string())
    nul = ids.filter(pc.match_substring(ids, "\x00"))
    if len(nul):
        raise OutputError(f"netCDF cannot store image ids holding a NUL character ({len(nul)} of them, e.g. "
                          f"'{printable(nul[0].as_py())}'); export --to zarr, which keeps them")
    data = bytes(dataset.to_netcdf(engine="h5netcdf"))
    with written(path) as tmp:
        tmp.write_bytes(data)
    return dest


def to_zarr(out: "Output", model_id: str | ModelId, dest: str, rows: Rows = None, chunks: int = 1024,
            **kwargs: Any) -> str:
    """A Zarr store (a local path or any fsspec URL; ``kwargs`` go to ``xarray.Dataset.to_zarr``, e.g.
    ``storage_options``), written one chunk of ``chunks`` images at a time. An existing store is
    replaced only with ``mode="w"``; a local store appears whole or not at all, a remote one that
    fails part-way is removed."""
    _need("zarr", "export to Zarr")
    mode = kwargs.pop("mode", "w-")
    consolidated = kwargs.pop("consolidated", False)
    if not is_url(dest):
        path = check_file(dest, exists_ok=mode == "w", store=True)
        dataset = _dataset(out, model_id, rows, chunks=chunks)
        with written(path) as tmp:
            dataset.to_zarr(str(tmp), mode="w-", consolidated=consolidated, **kwargs)
        return dest
    from ..storage import filesystem

    fs, root = filesystem(dest, kwargs.get("storage_options"))
    existed = fs.exists(root)
    if existed and mode != "w":
        raise DestinationExistsError(f"--dest '{dest}' already exists; remove it or choose another path")
    dataset = _dataset(out, model_id, rows, chunks=chunks)
    try:
        dataset.to_zarr(dest, mode=mode, consolidated=consolidated, **kwargs)
    except BaseException:
        if not existed and fs.exists(root):
            fs.rm(root, recursive=True)
        raise
    return dest


EXPORTS: dict[str, Callable[..., str]] = {"gifti": to_gifti, "mgh": to_mgh, "nifti": to_nifti, "mne": write_mne,
                                          "netcdf": to_netcdf, "zarr": to_zarr}
