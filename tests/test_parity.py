"""Our numbers equal NED's: every fixture model x image file through the NED-compatible API."""

from __future__ import annotations

import numpy as np
import pytest

from ned_ray import NED

from .conftest import FIXTURE_IMAGES, FIXTURE_MODELS, PARITY

TOLERANCE = 1e-4  # max |ours - NED| <= 1e-4 * std(expected), per file (fixtures README)


@pytest.fixture(scope="module")
def loaded(ned_dir, torch_home):
    """Each fixture model loaded once through the API, ViT weights from the torch hub cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        ned = NED(ned_dir)
        models = {tag: ned.get_encoding_model(*args[:4], roi=args[4], device="cpu") for tag, args in FIXTURE_MODELS.items()}
    return ned, models


@pytest.mark.parametrize("images", FIXTURE_IMAGES)
@pytest.mark.parametrize("tag", sorted(FIXTURE_MODELS))
def test_matches_ned(loaded, fixtures, fixture_images, tag, images):
    ned, models = loaded
    expected = np.load(fixtures / "expected" / f"{tag}__{images}.npy")
    ours = ned.encode(models[tag], fixture_images[images], return_metadata=False, device="cpu")
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape
    figure = float(np.abs(ours - expected).max() / expected.std())
    PARITY[f"{tag} x {images}"] = figure
    assert figure <= TOLERANCE, f"{tag} x {images}: max|ours-NED|/std = {figure:.3e} > {TOLERANCE}"
