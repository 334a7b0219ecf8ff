"""The family registry (ned_ray/families/): each family states its ids, files and selections once."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ned_ray.families import (
    ALEXNET,
    ALEXNET_UNTRAINED,
    BACKBONES,
    BERG_IDS,
    BY_KEY,
    FAMILIES,
    FWRF,
    VIT_B_32,
    Plot,
    family,
    register,
    unregister,
)
from ned_ray.ids import ModelId

KEYS = ["fwrf", "eeg", "fsaverage", "things_fmri", "meg", "tvsd", "eeg_alexnet", "eeg_alexnet_untrained",
        "fsaverage_alexnet", "fsaverage_alexnet_untrained"]


def test_the_registry_lists_every_family_once_by_path_key_and_berg_id():
    assert list(BY_KEY) == KEYS
    assert len(FAMILIES) == len(BY_KEY) == len(BERG_IDS) == 10
    assert BERG_IDS["meg-things_meg_1-vit_b_32"] is BY_KEY["meg"] is family("meg")
    with pytest.raises(ValueError, match="unknown model family 'ecog'; valid: fwrf, eeg"):
        family("ecog")


@pytest.mark.parametrize("key", KEYS)
def test_each_family_states_what_the_job_and_the_apis_need(key):
    f = BY_KEY[key]
    assert ModelId.parse(f.example()).family is f  # its example is one of its ids
    assert f.response_layout and f.berg_outputs and f.dims and f.title
    assert (f.full_shape is not None) == (key.split("_")[0] in ("fwrf", "eeg"))  # NED's formats state theirs (and
    # BERG's EEG on AlexNet, laid out as NED's); BERG's others use the rule
    assert f.has_heads == f.backbone.shared == (key != "fwrf")  # one pass per backbone feeds every family on it
    backbone = FWRF if key == "fwrf" else ALEXNET_UNTRAINED if key.endswith("untrained") else ALEXNET if "alexnet" in key \
        else VIT_B_32
    assert f.backbone == backbone
    assert f.backbone in BACKBONES and f.input == f.backbone.input and f.plot.kind in ("timecourses", "distributions", "surface")
    assert (f.plot.kind == "surface") == (f.variant == "hemisphere")  # fsaverage on the cortex
    assert (f.maps is not None) == (f.key.split("_")[0] in ("eeg", "meg")) and (f.maps is None or f.maps.kind == "topomaps")
    assert (f.plot.kind == "timecourses") == ("time" in f.dims) == (f.plot.unit_groups is not None)
    assert bool(f.ned_options) == (f.ned_accuracy is not None) == (key in ("fwrf", "eeg"))  # NED's own two families
    assert f.repetitions == ("repetition" in f.dims)
    if f.has_heads:  # BERG's families: selection rules, the metadata section checked, the accuracy field, the files
        assert f.select_rows is not None and f.selection_keys and f.metadata_section
        assert f.accuracy is not None and f.berg_files is not None
    else:
        assert f.select_rows is None and not f.selection_keys


@pytest.mark.parametrize("key, subject, variant", [("eeg", 7, None), ("fsaverage", 3, "lh"), ("things_fmri", 2, None),
                                                   ("meg", 4, "split2"), ("tvsd", "F", None)])
def test_berg_file_names_and_patterns_agree(key, subject, variant):
    files = BY_KEY[key].berg_files
    weights = files.weights.match(files.weights_name.format(s=subject, v=variant))
    metadata = files.metadata.match(files.metadata_name.format(s=subject))
    assert weights and metadata and str(subject) in (weights.group(1).lstrip("0"), weights.group(1))
    assert weights.group(1) == metadata.group(1)
    if key == "meg":  # one weight file per train split
        assert weights.group(2) == variant


def test_a_registered_name_cannot_be_registered_again():
    with pytest.raises(ValueError, match="'meg' is already registered"):
        register(dataclasses.replace(BY_KEY["meg"], train_dataset="other", model="other"))
    assert len(BY_KEY) == 10


# -- a family ned-ray does not ship, added as one module would add it ------------------------------

NEW = dataclasses.replace(  # as a module of ned_ray/families would state it: THINGS-fMRI's rules, another dataset
    BY_KEY["things_fmri"], key="things_fmri_2", train_dataset="things_fmri_2", title="THINGS-fMRI 2",
    plot=Plot("distributions", "things_fmri_2_distributions", "THINGS-fMRI 2"))


@pytest.fixture
def new_family(tmp_path: Path):
    """NEW registered, and a BERG-format directory holding the demo models plus one NEW model (the
    demo's THINGS-fMRI files under NEW's folder)."""
    from ned_ray.demo import make_demo_models, write_demo_images
    from ned_ray.modeldir import family_root

    ned_dir = tmp_path / "ned"
    make_demo_models(str(ned_dir), fmri_subjects=(1,), rois=("V1",), eeg_subjects=(1,), berg=True)
    register(NEW)
    try:
        shutil.copytree(ned_dir / family_root(BY_KEY["things_fmri"]), ned_dir / family_root(NEW))
        images = tmp_path / "images"
        write_demo_images(images)
        yield ned_dir, images
    finally:
        unregister(NEW)


def test_a_new_family_runs_end_to_end_from_its_module_alone(new_family, tmp_path):
    """Catalogue, selections, the job (local executor), metadata, the reader, xarray, the model listing,
    BERG's API and the figures all take the new family from its Family: no other file knows it."""
    from ned_ray import BERG, EncodeConfig, open_output, run_encode
    from ned_ray.modeldir import NedDir
    from ned_ray.plots import plot_output
    from ned_ray.summaries import model_summary

    ned_dir, images = new_family
    old, new = "fmri/things_fmri_1/vit_b_32/sub-01", "fmri/things_fmri_2/vit_b_32/sub-01"
    ned = NedDir(str(ned_dir))
    assert ned.entry(new).format == "berg" and ModelId.parse(new).family is NEW
    listed = {r["id"]: r for r in model_summary(ned)}
    assert listed[new]["family"] == "things_fmri_2" and listed[new]["response_shape"] == listed[old]["response_shape"]

    rois = list(ned.metadata(old)["roi"].keys())[:1]
    out = tmp_path / "out"
    summary = run_encode(EncodeConfig(str(ned_dir), str(images), f"{old},{new}", str(out), device="cpu", executor="local",
                                      shard_size=8, cpu_threads=1, berg_selection={"fmri/things_fmri_2/*": {"roi": rois}}))
    assert summary["run"]["executor"] == "local" and summary["images"]["ok"] > 0
    result = open_output(str(out))
    _, full = result.responses(old)
    _, picked = result.responses(new)
    kept = result.coords(new)["voxel"]
    assert 0 < len(kept) < full.shape[1] and picked.shape == (full.shape[0], len(kept))
    np.testing.assert_allclose(picked, full[:, kept], rtol=0, atol=1e-5)  # same weights: the kept rows of the old
    document = json.loads((out / new / "metadata.json").read_text())
    assert document["berg_model"]["id"] == "fmri-things_fmri_2-vit_b_32" and document["dims"] == ["voxel"]
    assert result.to_xarray(new).attrs["family"] == "things_fmri_2"

    berg, x = BERG(str(ned_dir)), np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    ours = berg.encode(berg.get_encoding_model("fmri-things_fmri_2-vit_b_32", subject=1, device="cpu",
                                               selection={"roi": rois}), x)
    theirs = berg.encode(berg.get_encoding_model("fmri-things_fmri_1-vit_b_32", subject=1, device="cpu"), x)
    np.testing.assert_allclose(ours, theirs[:, kept], rtol=0, atol=1e-5)
    figures = {p.name for p in plot_output(result, tmp_path / "plots")}
    assert {"things_fmri_2_distributions.png", "things_fmri_distributions.png"} <= figures
