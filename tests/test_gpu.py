"""On a CUDA GPU: NED's numbers in fp32, the deviations of tf32 and bf16, batch sizes from a GPU
share, pinned copies, and the encode job end to end (``pytest -m gpu``; DEVELOPERS.md says how to run
them on a lent GPU machine). Without a GPU every test here is skipped, and says why.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ned_ray.ids import ModelId
from ned_ray.models.group import ModelGroup

from .conftest import FIXTURE_IMAGES, FIXTURE_MODELS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (none here): run `pytest -m gpu` on a lent GPU machine, see DEVELOPERS.md")]

TOLERANCE = 1e-4
GPU_FIGURES: dict[str, float] = {}  # printed with -s; copied into bench/RESULTS.md by hand


def _id(tag: str) -> str:
    modality, dataset, model, subject, roi = FIXTURE_MODELS[tag]
    return f"{modality}/{dataset}/{model}/sub-{subject:02d}" + (f"/{roi}" if roi else "")


@pytest.fixture(scope="module")
def tags(fixtures) -> list[str]:
    """The fixture models present: a lent GPU machine may get the EEG or the fMRI half (DEVELOPERS.md)."""
    present = [t for t in sorted(FIXTURE_MODELS) if (fixtures / "expected" / f"{t}__images.npy").exists()]
    assert present, f"no fixture model in {fixtures}"
    return present


@pytest.fixture(scope="module")
def groups(ned_dir, torch_home, tags):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        ids = [_id(tag) for tag in tags]
        return {p: ModelGroup(ned_dir, ids, "cuda", precision=p) for p in ("fp32", "tf32", "bf16")}


@pytest.mark.parametrize("images", FIXTURE_IMAGES)
def test_fp32_on_cuda_is_neds_numbers(groups, tags, fixtures, fixture_images, images):
    group = groups["fp32"]
    assert group.projection == "float32"  # the folded EEG projection runs on GPUs
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    out = group.encode(fixture_images[images])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before  # restored
    for tag in tags:
        expected = np.load(fixtures / "expected" / f"{tag}__{images}.npy")
        figure = float(np.abs(out[ModelId.parse(_id(tag))] - expected).max() / expected.std())
        GPU_FIGURES[f"fp32 {tag} x {images}"] = figure
        assert figure <= TOLERANCE, (tag, images, figure)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_deviation_is_measured(groups, fixture_images, precision):
    images = fixture_images["images"]
    exact = groups["fp32"].encode(images)
    reduced = groups[precision].encode(images)
    for mid in exact:
        figure = float(np.abs(reduced[mid] - exact[mid]).max() / exact[mid].std())
        GPU_FIGURES[f"{precision} {mid}"] = figure
        assert np.isfinite(figure)
        if mid.modality == "eeg":  # the ViT in reduced precision, the projection and heads in float32/64
            assert figure < (0.01 if precision == "tf32" else 0.1), (mid, figure)
    # the job's own check (first image of a block) agrees with the full comparison
    group = groups[precision]
    inputs = group.preprocess(images[:4])
    checks = group.deviation(inputs, group.run(inputs))
    assert all(np.isfinite(d) and s > 0 for d, s in checks.values())


def test_batch_sizes_follow_the_actors_share_of_the_gpu(ned_dir, torch_home, tags, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    ids = [_id(tag) for tag in tags]
    whole = ModelGroup(ned_dir, ids, "cuda")
    quarter = ModelGroup(ned_dir, ids, "cuda", memory_share=0.25)
    total = torch.cuda.get_device_properties(0).total_memory
    assert quarter.available_memory() <= 0.25 * total
    assert all(quarter.batch_sizes[k] <= whole.batch_sizes[k] for k in whole.batch_sizes)
    assert all(1 <= b <= 1024 for b in whole.batch_sizes.values())


def test_pinned_inputs_give_the_same_numbers(groups, fixture_images):
    group = groups["fp32"]
    inputs = group.preprocess(fixture_images["images"][:8])
    pinned = {k: v.pin_memory() for k, v in inputs.items()}
    assert all(v.is_pinned() for v in pinned.values())
    plain, fast = group.run(inputs), group.run(pinned)
    for mid in plain:
        np.testing.assert_array_equal(plain[mid], fast[mid])


def test_the_job_runs_on_the_gpu(demo_dir, tmp_path):
    """The whole job on demo models (they carry their own small ViT), on Ray Data and in process: needs Ray, no fixtures."""
    ray = pytest.importorskip("ray", reason="the job test needs Ray on the GPU machine (DEVELOPERS.md)")
    from PIL import Image

    from ned_ray.job.options import EncodeConfig
    from ned_ray.job.run import run_encode
    from ned_ray.output import open_output

    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    results = {}
    for device, executor in (("cuda", "ray"), ("cuda", "local"), ("cpu", "ray")):
        out_dir = tmp_path / f"{device}-{executor}"
        summary = run_encode(EncodeConfig(str(demo_dir), str(tmp_path), "all", str(out_dir), device=device,
                                          shard_size=8, executor=executor))
        assert summary["job"]["plan"]["device"] == device and summary["run"]["executor"] == executor
        assert all(d["ran_on"] == {device: 16} for d in summary["devices"])
        out = open_output(str(out_dir))
        results[device, executor] = {m: out.responses(m)[1] for m in out.models}
    for key in (("cuda", "ray"), ("cuda", "local")):  # fp32 on the GPU: the CPU's numbers, either executor
        for mid, values in results[key].items():
            reference = results["cpu", "ray"][mid]
            assert np.abs(values - reference).max() <= 1e-4 * reference.std(), (key, mid)


def teardown_module(module):  # noqa: ARG001
    for key in sorted(GPU_FIGURES):
        print(f"GPU {key}: {GPU_FIGURES[key]:.2e}")
