"""examples/encode_hf_dataset.py and examples/analyse_output.py, run as their main() on this package's
Ray cluster with 2 logical GPUs (a new Ray per script would cost its start twice)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ned_ray.output import open_output

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module", autouse=True)
def importable():
    """The scripts importable here, and their functions sent to Ray's workers by value (as when each
    runs as ``__main__``), since the workers cannot import them by name."""
    import ray.cloudpickle

    sys.path.insert(0, str(EXAMPLES))
    import analyse_output
    import encode_hf_dataset

    for module in (analyse_output, encode_hf_dataset):
        ray.cloudpickle.register_pickle_by_value(module)
    yield
    for module in (analyse_output, encode_hf_dataset):
        ray.cloudpickle.unregister_pickle_by_value(module)
    sys.path.remove(str(EXAMPLES))


@pytest.mark.slow
def test_a_datasets_table_deduplicated_filtered_encoded_and_written_beside_its_labels(gpu_ray, demo_dir, encoded, tmp_path):
    from encode_hf_dataset import TEXTURES, main

    models = "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01"
    found = main(["--ned-dir", str(demo_dir), "--models", models, "--out", str(tmp_path / "out"),
                  "--workdir", str(tmp_path), "--cpu-threads", "1"])
    assert found["stimuli"] == 16 and found["unique"] == 14  # two photographs were in the table twice
    assert found["rows"] == 14 - len(TEXTURES) and found["errors"] == 0
    assert sorted(found["models"]) == sorted(models.split(","))
    rows = gpu_ray.data.read_parquet(str(tmp_path / "out")).take_batch(100, batch_format="numpy")
    assert set(rows["label"]) == {"object"} and len(set(rows["sha1"])) == len(rows["sha1"])
    reference = open_output(str(encoded))
    ids = reference.images().column("image_id").to_pylist()
    for mid in models.split(","):
        index, values = reference.responses(mid)
        by_name = {Path(ids[i]).name: v for i, v in zip(index.tolist(), values)}
        got = np.stack(list(rows[mid]))
        want = np.stack([by_name[name] for name in rows["file"]])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.std()))


def test_an_output_read_back_and_reduced_on_the_cluster(gpu_ray, encoded):
    from analyse_output import main

    found = main(["--output", str(encoded), "--top", "2"])
    output = open_output(str(encoded))
    ids = output.images().column("image_id").to_pylist()
    for mid, top in found["top"].items():
        index, values = output.responses(mid)
        means = values.mean(axis=1)
        best = np.argsort(-means, kind="stable")[:2]
        assert [i for i, _ in top] == [ids[index[b]] for b in best]
        np.testing.assert_allclose([v for _, v in top], means[best], rtol=1e-6)
    for mid, mean in found["eeg_mean"].items():
        np.testing.assert_allclose(mean, output.responses(mid)[1].astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-9)
