"""``ned-ray export`` and ``ned-ray plot`` as users mistype them: every wrong argument is one line
naming it and the fix, exit 2, nothing left at ``--dest``; image ids holding ``$``, control
characters or NUL stay verbatim where they are data and inert where they are labels or markup."""

from __future__ import annotations

import io
import xml.dom.minidom
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ned_ray.cli import main
from ned_ray.output import open_output

from ..job.conftest import random_png

FSAVG = "fmri/nsd_fsaverage/alexnet_untrained/sub-01/rh"
EEG = "eeg/things_eeg_2/vit_b_32/sub-01"
MEG = "meg/things_meg_1/vit_b_32/sub-01/full"


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ned-ray {command}: error: "), err
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


EXPORT_MISTAKES = {  # --images / --dest / --to as typed -> what the line must say
    "no such row": (["--images", "999"], "out.nc", "999 is not a row of"),
    "a row beyond the end": (["--images", "3,99"], "out.nc", "99 is not a row of"),
    "an empty range": (["--images", "5:2"], "out.nc", "selects no image"),
    "a missing folder": ([], "missing/out.nc", "does not exist; create it first"),
    "a folder": ([], ".", "is a folder; give a file name"),
    "under a file": ([], "a_file.txt/out.nc", "is a file, not a folder"),
    "GIFTI in a missing folder": (["--to", "gifti"], "missing/rh.func.gii", "does not exist"),
    "a URL for a local format": (["--to", "gifti"], "s3://bucket/rh.func.gii", "written to a local path"),
}


@pytest.mark.parametrize("mistake", EXPORT_MISTAKES)
def test_a_mistyped_export_is_one_line_and_leaves_nothing(families_output, tmp_path, capsys, monkeypatch, mistake):
    extra, dest, message = EXPORT_MISTAKES[mistake]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file.txt").write_text("a user's file")
    to = [] if "--to" in extra else ["--to", "netcdf"]
    before = _leftovers(tmp_path)
    assert main(["export", str(families_output), "--model", FSAVG, *to, "--dest", dest, *extra]) == 2
    line = _one_line(capsys, "export")
    assert message in line, line
    assert _leftovers(tmp_path) == before and (tmp_path / "a_file.txt").read_text() == "a user's file"


def test_an_existing_zarr_store_is_refused_and_kept(families_output, tmp_path, capsys):
    store = tmp_path / "eeg.zarr"
    assert main(["export", str(families_output), "--model", EEG, "--to", "zarr", "--dest", str(store)]) == 0
    capsys.readouterr()
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    assert main(["export", str(families_output), "--model", EEG, "--to", "zarr", "--dest", str(store)]) == 2
    assert "already exists; remove it or choose another path" in _one_line(capsys, "export")
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert _leftovers(tmp_path) == ["eeg.zarr"]


PLOT_MISTAKES = {
    "--times abc": (["--times", "abc"], "--times must be seconds separated by commas"),
    "--times with a gap": (["--times", "0.1,,0.2"], "--times must be seconds"),
    "--to a file": (["--to", "a_file.txt"], "is a file; give a folder for the figures"),
}


@pytest.mark.parametrize("mistake", PLOT_MISTAKES)
def test_a_mistyped_plot_is_one_line(families_output, tmp_path, capsys, monkeypatch, mistake):
    extra, message = PLOT_MISTAKES[mistake]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file.txt").write_text("a user's file")
    assert main(["plot", str(families_output), "--models", EEG, *extra]) == 2
    assert message in _one_line(capsys, "plot")
    assert (tmp_path / "a_file.txt").read_text() == "a user's file"


IDS = ["math $x^2$ and $y$", "tab\there", "nul\x00inside", "bell\x07 <tag> & 'quote'", "esc\x1b[31mred"]


@pytest.fixture(scope="module")
def hostile_output(tmp_path_factory) -> Path:
    """An output whose image ids (from a Parquet input's id column) hold $, control characters and NUL."""
    from ned_ray import EncodeConfig, run_encode
    from ned_ray.demo import make_demo_models

    root = tmp_path_factory.mktemp("hostile_ids")
    make_demo_models(str(root / "ned"), fmri_subjects=(1,), rois=("V1",), eeg_subjects=(1,), berg=True)
    pq.write_table(pa.table({"image": [random_png(i) for i in range(len(IDS))], "image_id": IDS}), root / "in.parquet")
    run_encode(EncodeConfig(str(root / "ned"), str(root / "in.parquet"), f"{FSAVG},{EEG}", str(root / "out"),
                            device="cpu", executor="local", cpu_threads=1, id_column="image_id"))
    return root / "out"


def test_hostile_ids_stay_verbatim_in_the_output_and_zarr(hostile_output, tmp_path):
    import xarray as xr

    out = open_output(str(hostile_output))
    assert sorted(out.images().column("image_id").to_pylist()) == sorted(IDS)
    store = out.export(EEG, "zarr", str(tmp_path / "eeg.zarr"))
    with xr.open_zarr(store, consolidated=False) as back:
        assert sorted(str(i) for i in back["image"].values) == sorted(IDS)


def test_hostile_ids_in_gifti_are_escaped_and_the_file_is_well_formed(hostile_output, tmp_path):
    import nibabel as nib

    out = open_output(str(hostile_output))
    dest = out.export(FSAVG, "gifti", str(tmp_path / "rh.func.gii"))
    xml.dom.minidom.parse(dest)  # well-formed XML
    names = [d.meta["Name"] for d in nib.load(dest).darrays]
    ids = out.images().column("image_id").to_pylist()
    assert "nul\\x00inside" in names and "tab\\there" in names and "bell\\x07 <tag> & 'quote'" in names
    assert names == [i.encode("unicode_escape").decode("ascii").replace("\\'", "'") if not i.isprintable() else i
                     for i in ids]


def test_hostile_ids_netcdf_says_it_cannot_hold_a_nul_and_mne_keeps_them(hostile_output, tmp_path, capsys):
    import mne

    assert main(["export", str(hostile_output), "--model", EEG, "--to", "netcdf", "--dest", str(tmp_path / "e.nc")]) == 2
    assert "netCDF cannot store image ids holding a NUL character" in _one_line(capsys, "export")
    assert _leftovers(tmp_path) == []
    dest = open_output(str(hostile_output)).export(EEG, "mne", str(tmp_path / "eeg-epo.fif"))
    epochs = mne.read_epochs(dest, verbose=False)
    assert sorted(epochs.metadata["image_id"]) == sorted(IDS)


def test_hostile_ids_plot_and_inspect(hostile_output, tmp_path, capsys):
    assert main(["plot", str(hostile_output), "--to", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "heatmap.png").stat().st_size > 1000
    assert main(["inspect", str(hostile_output)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x00" not in out


def test_the_whole_export_round_trips(families_output, tmp_path):
    import xarray as xr

    dest = open_output(str(families_output)).export(MEG, "netcdf", str(tmp_path / "meg.nc"), images=slice(1, 3))
    with xr.open_dataset(io.BytesIO(Path(dest).read_bytes()), engine="h5netcdf") as back:
        np.testing.assert_array_equal(back["responses"].values,
                                      open_output(str(families_output)).responses(MEG)[1][1:3])
    assert _leftovers(tmp_path) == ["meg.nc"]
