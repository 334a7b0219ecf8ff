"""A Ray cluster of this package's own: 2 CPUs and 2 logical GPUs (Ray schedules GPU actors on them;
inside, torch sees no CUDA device and computes on CPU, as ``device="auto"`` does on a broken GPU node)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ..job.conftest import own_ray

MODELS = "fmri/nsd/fwrf/sub-01/V1,fmri/nsd/fwrf/sub-02/FFA-1,eeg/things_eeg_2/vit_b_32/sub-01,eeg/things_eeg_2/vit_b_32/sub-02"


@pytest.fixture(scope="package")
def gpu_ray():
    with own_ray(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False) as ray:
        yield ray


@pytest.fixture(scope="package")
def photos(tmp_path_factory) -> Path:
    """The demo's photographs as files, plus one that is not an image."""
    from ned_ray.demo import write_demo_images

    folder = tmp_path_factory.mktemp("photos")
    write_demo_images(folder)
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="package")
def encoded(demo_dir, photos, tmp_path_factory) -> Path:
    """``ned-ray encode``'s output for the photographs (in process, one thread as the actors here)."""
    from ned_ray.job.options import EncodeConfig
    from ned_ray.job.run import run_encode

    out = tmp_path_factory.mktemp("reference") / "out"
    run_encode(EncodeConfig(str(demo_dir), str(photos), MODELS, str(out), device="cpu", executor="local",
                            cpu_threads=1, shard_size=4))
    return out


@pytest.fixture(scope="package")
def reference(encoded) -> dict[str, dict[str, np.ndarray]]:
    """``ned-ray encode``'s responses to the photographs: {model: {file name: response}}."""
    from ned_ray.output import open_output

    output = open_output(str(encoded))
    ids = output.images().column("image_id").to_pylist()
    found = {}
    for mid in output.models:
        index, values = output.responses(mid)
        found[mid] = {Path(ids[i]).name: v for i, v in zip(index.tolist(), values)}
    return found
