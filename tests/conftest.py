"""Shared fixtures: NED's and BERG's parity fixtures (../shared), their ViT weights, demo models.

The parity fixtures are required: CI provides ../shared beside the clone. If they are missing the
tests that need them fail with a message saying where they were looked for (never a silent skip).
Set NED_FIXTURES to use another copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# ned-ray's per-user caches (model file hashes) go to a folder of this test session, not ~/.cache
os.environ.setdefault("NED_RAY_CACHE", tempfile.mkdtemp(prefix="ned-ray-test-cache-"))
FIXTURES = Path(os.environ.get("NED_FIXTURES", REPO.parent / "shared" / "ned-fixtures"))
FIXTURE_IMAGES = ("images", "images_227", "images_small")
FIXTURE_MODELS = {  # expected/<tag>__<images>.npy  ->  NED get_encoding_model arguments
    "fmri_sub-01_V1": ("fmri", "nsd", "fwrf", 1, "V1"),
    "fmri_sub-01_lateral": ("fmri", "nsd", "fwrf", 1, "lateral"),
    "fmri_sub-02_V1": ("fmri", "nsd", "fwrf", 2, "V1"),
    "eeg_sub-01": ("eeg", "things_eeg_2", "vit_b_32", 1, None),
    "eeg_sub-02": ("eeg", "things_eeg_2", "vit_b_32", 2, None),
}

# Parity figures (max |ours - NED| / std(expected)) reported at the end of the run.
PARITY: dict[str, float] = {}


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not (FIXTURES / "ned_dir" / "encoding_models").is_dir():
        pytest.fail(f"NED parity fixtures not found at {FIXTURES}: clone the project with ../shared beside it "
                    "(or set NED_FIXTURES)", pytrace=False)
    return FIXTURES


@pytest.fixture(scope="session")
def ned_dir(fixtures: Path) -> Path:
    return fixtures / "ned_dir"


@pytest.fixture(scope="session")
def fixture_images(fixtures: Path) -> dict[str, np.ndarray]:
    return {name: np.load(fixtures / f"{name}.npy") for name in FIXTURE_IMAGES}


BERG_FIXTURES = Path(os.environ.get("BERG_FIXTURES", REPO.parent / "shared" / "berg-fixtures"))


@pytest.fixture(scope="session")
def berg_fixtures() -> Path:
    if not (BERG_FIXTURES / "weights_spec.json").exists():
        pytest.fail(f"BERG parity fixtures not found at {BERG_FIXTURES}: clone the project with ../shared beside it "
                    "or set BERG_FIXTURES")
    return BERG_FIXTURES


# BERG's fixture cases (berg-fixtures/README.md): case -> (BERG model id, get_encoding_model kwargs)
BERG_CASES = {
    "eeg_sub-01": ("eeg-things_eeg_2-vit_b_32", {"subject": 1}),
    "eeg_sub-01_sel": ("eeg-things_eeg_2-vit_b_32", {"subject": 1}),
    "fsavg_sub-01": ("fmri-nsd_fsaverage-vit_b_32", {"subject": 1}),
    "fsavg_sub-01_V1v": ("fmri-nsd_fsaverage-vit_b_32", {"subject": 1}),
    "fsavg_sub-01_vertices": ("fmri-nsd_fsaverage-vit_b_32", {"subject": 1}),
    "thfmri_sub-01": ("fmri-things_fmri_1-vit_b_32", {"subject": 1}),
    "thfmri_sub-01_rois": ("fmri-things_fmri_1-vit_b_32", {"subject": 1}),
    "meg_P1_full": ("meg-things_meg_1-vit_b_32", {"subject": 1}),
    "meg_P1_split2_sel": ("meg-things_meg_1-vit_b_32", {"subject": 1, "train_split": "split2"}),
    "tvsd_F": ("utah_array-tvsd-vit_b_32", {"subject": "F"}),
    "tvsd_F_V4": ("utah_array-tvsd-vit_b_32", {"subject": "F"}),
}


def berg_selection(berg_fixtures: Path, case: str) -> dict:  # (or the AlexNet fixtures' folder)
    """The selection BERG was given in a fixture case, rebuilt as the fixture README says."""
    path = berg_fixtures / "expected" / f"selection_{case}.npz"
    if not path.exists():
        return {}
    stored = np.load(path)
    return {k: str(a) if a.ndim == 0 else list(a) if a.dtype.kind == "U" else a.astype(int)
            for k, a in ((k, stored[k]) for k in stored.files)}


def berg_expected(berg_fixtures: Path, case: str, images: str) -> list[np.ndarray]:
    """BERG's outputs of a case: one array, or fsaverage's [lh, rh]."""
    path = berg_fixtures / "expected" / f"{case}__{images}"
    if path.with_suffix(".npz").exists():
        stored = np.load(path.with_suffix(".npz"))
        return [stored["lh"], stored["rh"]]
    return [np.load(path.with_suffix(".npy"))]


def berg_runs(berg_fixtures: Path, eeg: bool) -> list[tuple[str, str]]:
    """(case, images) pairs with expected outputs: the EEG ones or the others."""
    runs = [tuple(p.stem.split("__")) for p in sorted((berg_fixtures / "expected").glob("*__*.np[yz]"))]
    return [(case, images) for case, images in runs if case.startswith("eeg") == eeg]


@pytest.fixture(scope="session")
def berg_dir(tmp_path_factory: pytest.TempPathFactory, berg_fixtures: Path) -> Path:
    """The fixtures' BERG directory with the weight files of the fMRI, MEG and Utah-array models
    rebuilt by their own script (about 180 MB; the 1.9 GB EEG file is left out)."""
    target = _writable_copy(berg_fixtures / "berg_dir", tmp_path_factory.mktemp("berg") / "berg_dir")
    for family in ("modality-fmri", "modality-meg", "modality-utah_array"):
        subprocess.run([sys.executable, str(berg_fixtures / "make_berg_weights.py"), str(target), "--spec",
                        str(berg_fixtures / "weights_spec.json"), "--only", family], check=True, capture_output=True)
    return target


@pytest.fixture(scope="session")
def berg_eeg_file(berg_dir: Path, berg_fixtures: Path) -> Path:
    """BERG's EEG weight file for subject 1 (1.9 GB: 4 pickled scikit-learn PCAs of 250 x 460,800),
    rebuilt by the fixtures' script (needs scikit-learn, a test dependency for this only)."""
    subprocess.run([sys.executable, str(berg_fixtures / "make_berg_weights.py"), str(berg_dir), "--spec",
                    str(berg_fixtures / "weights_spec.json"), "--only", "modality-eeg"], check=True, capture_output=True)
    return berg_dir / ("encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/encoding_models_weights/"
                       "weights_subject-01.npy")


ALEXNET_CASES = {  # berg-fixtures/alexnet/README.md: case -> (BERG model id, get_encoding_model kwargs)
    "eeg_sub-01": ("eeg-things_eeg_2-alexnet", {"subject": 1}),
    "eeg_sub-01_sel": ("eeg-things_eeg_2-alexnet", {"subject": 1}),
    "eegu_sub-01": ("eeg-things_eeg_2-alexnet_untrained", {"subject": 1}),
    "fsavg_sub-01": ("fmri-nsd_fsaverage-alexnet", {"subject": 1}),
    "fsavg_sub-01_V1v": ("fmri-nsd_fsaverage-alexnet", {"subject": 1}),
    "fsavgu_sub-01_vertices": ("fmri-nsd_fsaverage-alexnet_untrained", {"subject": 1}),
}


@pytest.fixture(scope="session")
def alexnet_fixtures(berg_fixtures: Path) -> Path:
    return berg_fixtures / "alexnet"


def _writable_copy(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target, copy_function=shutil.copyfile)
    for folder in [target, *target.rglob("*")]:  # ../shared is read-only: its folders copy read-only too
        if folder.is_dir():
            folder.chmod(0o755)
    return target


@pytest.fixture(scope="session")
def alexnet_berg_dir(tmp_path_factory: pytest.TempPathFactory, alexnet_fixtures: Path) -> Path:
    """The AlexNet fixtures' BERG directory with its four weight files rebuilt by their script
    (1.85 GB: two EEG files of 4 x 250 components over 205,672 features, two fsaverage files)."""
    target = _writable_copy(alexnet_fixtures / "berg_dir", tmp_path_factory.mktemp("berg_alexnet") / "berg_dir")
    subprocess.run([sys.executable, str(alexnet_fixtures / "make_alexnet_berg_weights.py"), str(target)],
                   check=True, capture_output=True)
    return target


@pytest.fixture(scope="session")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory, alexnet_fixtures: Path) -> Path:
    """The fixtures' stand-in for torchvision's ImageNet AlexNet (244 MB, made by their script)."""
    target = tmp_path_factory.mktemp("alexnet") / "alexnet-owt-7be5be79.pth"
    result = subprocess.run([sys.executable, str(alexnet_fixtures / "make_alexnet_weights.py"), str(target)],
                            capture_output=True, text=True, check=True)
    assert "fc6a23d7cccf08cfe918e6ca36d37534a45f128afec959e703018159b8e97f8d" in result.stdout, result.stdout
    return target


@pytest.fixture
def alexnet_weights(alexnet_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ned-ray at the stand-in AlexNet for one test (as a user's $NED_RAY_ALEXNET_WEIGHTS)."""
    monkeypatch.setenv("NED_RAY_ALEXNET_WEIGHTS", str(alexnet_file))
    return alexnet_file


@pytest.fixture(scope="session")
def families_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every demo model (one of each family, AlexNet included) over the built-in photographs, with
    the in-process executor; the ViT fsaverage models keep ROI V1v (the AlexNet ones every vertex)."""
    from ned_ray import EncodeConfig, run_encode
    from ned_ray.demo import make_demo_models, write_demo_images

    root = tmp_path_factory.mktemp("families")
    make_demo_models(str(root / "ned"), fmri_subjects=(1,), rois=("V1",), eeg_subjects=(1,), berg=True)
    write_demo_images(root / "images")
    run_encode(EncodeConfig(str(root / "ned"), str(root / "images"), "all", str(root / "out"), device="cpu",
                            executor="local", shard_size=7, cpu_threads=1,
                            berg_selection={"fmri/nsd_fsaverage/vit_b_32/*": {"roi": "V1v"}}))
    return root / "out"


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory, fixtures: Path) -> Path:
    """A TORCH_HOME whose hub cache holds the fixtures' ViT-B/32 weights (made by their script)."""
    home = tmp_path_factory.mktemp("torch_home")
    target = home / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth"
    target.parent.mkdir(parents=True)
    result = subprocess.run([sys.executable, str(fixtures / "make_vit_weights.py"), str(target)],
                            capture_output=True, text=True, check=True)
    assert "ff156cabad76da3a1b6e03b00c67ef457516d3c5c5af34fb8706b7c50924f111" in result.stdout, result.stdout
    return home


@pytest.fixture
def vit_cache(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point torch hub at the fixture weights for one test."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv("NED_RAY_VIT_WEIGHTS", raising=False)
    return torch_home / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ned_ray.demo import make_demo_models

    path = tmp_path_factory.mktemp("demo") / "ned_dir"
    make_demo_models(str(path))
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster for the session (2 CPUs, as on this machine class)."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # see tests/job/conftest.py
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray
    import ray.data  # noqa: F401 - before ray.init, as ned-ray's Ray executor imports it before it connects
    # (imported after ray.init, Ray Data logs its progress to the driver's stderr: the tests read stderr)

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_output(ray_cluster, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every demo model on the 14 built-in photographs plus one corrupt file, Parquet and .npy parts."""
    from ned_ray.demo import write_demo_images
    from ned_ray.job.options import EncodeConfig
    from ned_ray.job.run import run_encode

    root = tmp_path_factory.mktemp("demo_output")
    write_demo_images(root / "images")
    (root / "images" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run_encode(EncodeConfig(str(demo_dir), str(root / "images"), "all", str(root / "out"), device="cpu",
                            formats=("parquet", "npy"), shard_size=5, cpu_threads=1))
    return root / "out"


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    """The in-process variants of tests parametrized by executor are ``local_executor`` tests: the local
    executor never imports Ray (tests/test_structure.py), so the run on the oldest Ray leaves them out
    (Makefile: test-ray-oldest) and runs their Ray variants."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("executor") == "local":
            item.add_marker(pytest.mark.local_executor)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if PARITY:
        terminalreporter.section("NED parity: max |ours - NED| / std(expected), tolerance 1e-4")
        for key in sorted(PARITY):
            terminalreporter.write_line(f"{key:45s} {PARITY[key]:.2e}")
        terminalreporter.write_line(f"{'worst':45s} {max(PARITY.values()):.2e}")
