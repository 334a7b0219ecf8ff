"""ModelGroup: per-model batch sizes from memory, reduced precision measured against fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ned_ray.demo import demo_images
from ned_ray.models import group as group_module
from ned_ray.models.group import MAX_BATCH, ModelGroup, free_memory

MODELS = ["fmri/nsd/fwrf/sub-01/V1", "fmri/nsd/fwrf/sub-01/lateral", "eeg/things_eeg_2/vit_b_32/sub-01"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return demo_images()[:6]


def test_batch_sizes_follow_free_memory(demo_dir, monkeypatch):
    roomy = ModelGroup(str(demo_dir), MODELS, "cpu")
    assert set(roomy.batch_sizes) == {"fwrf", "vit"}
    assert all(1 <= size <= MAX_BATCH["cpu"] for size in roomy.batch_sizes.values())
    assert free_memory(torch.device("cpu")) > 0
    # 300 MB free: fwrf needs ~8 MB per image and backbone, the EEG model ~10 MB per image
    monkeypatch.setattr(group_module, "free_memory", lambda device: 300 * 2**20)
    tight = ModelGroup(str(demo_dir), MODELS, "cpu")
    fwrf_per_image = max(m.bytes_per_image() for m in tight.fmri.values())
    assert tight.batch_sizes["fwrf"] == (150 * 2**20 // fwrf_per_image) // 8 * 8
    assert tight.batch_sizes["vit"] < roomy.batch_sizes["vit"] or roomy.batch_sizes["vit"] == tight.batch_sizes["vit"] == MAX_BATCH["cpu"]
    assert tight.batch_sizes["fwrf"] < MAX_BATCH["cpu"]


def test_results_do_not_depend_on_batch_size(demo_dir, images):
    auto = ModelGroup(str(demo_dir), MODELS, "cpu")
    small = ModelGroup(str(demo_dir), MODELS, "cpu", batch_size=4)  # 6 images -> batches of 4 and 2
    assert small.batch_sizes == {"fwrf": 4, "vit": 4}
    a, b = auto.encode(images), small.encode(images)
    for mid in auto.model_ids:
        np.testing.assert_allclose(a[mid], b[mid], rtol=0, atol=1e-5 * float(a[mid].std()))


def test_bf16_is_close_to_fp32_and_its_deviation_is_measured(demo_dir, images):
    fp32 = ModelGroup(str(demo_dir), MODELS, "cpu")
    bf16 = ModelGroup(str(demo_dir), MODELS, "cpu", precision="bf16")
    inputs = fp32.preprocess(images)
    exact, reduced = fp32.run(inputs), bf16.run(inputs)
    deviations = bf16.deviation(inputs, reduced, images=2)
    for mid in fp32.model_ids:
        assert reduced[mid].dtype == np.float32
        true_deviation = float(np.abs(reduced[mid][:2] - exact[mid][:2]).max())
        measured, std = deviations[mid]
        assert measured == pytest.approx(true_deviation, rel=1e-6, abs=1e-9)
        assert measured > 0  # bf16 really ran in reduced precision
        assert measured < 0.5 * std  # ... and is still near fp32 (bf16 keeps 8 bits of mantissa)
    # fp32 measured against itself deviates by nothing
    assert all(d == 0 for d, _ in fp32.deviation(inputs, exact).values())


def test_unknown_precision_is_refused(demo_dir):
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16, got 'fp16'"):
        ModelGroup(str(demo_dir), MODELS[:1], "cpu", precision="fp16")


@pytest.mark.parametrize("raised, becomes", [(OSError("disk gone"), "ModelLoadError"),
                                             (RuntimeError("size mismatch for weight"), "ModelLoadError"),
                                             (TypeError("load_fwrf() got an unexpected keyword"), "TypeError"),
                                             (AttributeError("'NoneType' object has no attribute 'shape'"), "AttributeError")])
def test_a_damaged_file_is_one_line_and_a_bug_stays_a_traceback(demo_dir, monkeypatch, raised, becomes):
    def load(*args, **kwargs):
        raise raised

    monkeypatch.setattr(group_module, "load_fwrf", load)
    with pytest.raises(Exception) as caught:
        ModelGroup(str(demo_dir), MODELS[:1], "cpu")
    assert type(caught.value).__name__ == becomes
    if becomes == "ModelLoadError":
        assert str(caught.value).startswith(f"model {MODELS[0]} failed to load from ") and str(raised) in str(caught.value)
