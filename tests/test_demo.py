"""Demo models round-trip: generated, listed, encoded; and they say they are untrained."""

from __future__ import annotations

import numpy as np

from ned_ray import NED
from ned_ray.demo import DEMO_NOTE, demo_images


def test_demo_directory_round_trips(demo_dir):
    ned = NED(demo_dir)
    assert ned.models() == [
        "eeg/things_eeg_2/vit_b_32/sub-01", "eeg/things_eeg_2/vit_b_32/sub-02", "eeg/things_eeg_2/vit_b_32/sub-03",
        "fmri/nsd/fwrf/sub-01/FFA-1", "fmri/nsd/fwrf/sub-01/V1", "fmri/nsd/fwrf/sub-01/lateral",
        "fmri/nsd/fwrf/sub-02/FFA-1", "fmri/nsd/fwrf/sub-02/V1", "fmri/nsd/fwrf/sub-02/lateral"]
    assert DEMO_NOTE in (demo_dir / "README.txt").read_text()
    images = demo_images(128)
    for args, shape in ((("fmri", "nsd", "fwrf", 2, "lateral"), (14, 40)), (("eeg", "things_eeg_2", "vit_b_32", 3), (14, 4, 63, 140))):
        model = ned.get_encoding_model(*args, device="cpu")
        responses, metadata = ned.encode(model, images)
        assert responses.shape == shape and responses.dtype == np.float32 and np.isfinite(responses).all()
        assert responses.std(axis=0).mean() > 0.1  # images are told apart: not degenerate
        assert metadata["ned_ray_demo"] == DEMO_NOTE


def test_demo_metadata_is_consistent(demo_dir):
    metadata = NED(demo_dir).get_metadata("fmri", "nsd", "fwrf", 1, "V1")
    assert metadata["fmri"]["roi_mask_volume"].sum() == len(metadata["fmri"]["ncsnr"]) == 48
    eeg = NED(demo_dir).get_metadata("eeg", "things_eeg_2", "vit_b_32", 1)["eeg"]
    assert len(eeg["ch_names"]) == 63 and eeg["times"][0] == -0.1 and np.isclose(eeg["times"][-1], 0.595)


def test_demo_images_are_photographs():
    images = demo_images()
    assert images.dtype == np.uint8 and images.shape == (14, 3, 256, 256)
    assert len({img.tobytes() for img in images}) == 14 and images.std() > 30
