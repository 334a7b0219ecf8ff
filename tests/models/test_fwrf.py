"""fwrf: feature-map shapes, voxel chunking, and clear errors for weights that do not fit."""

from __future__ import annotations

import io

import pytest
import torch

from ned_ray.ids import ModelId
from ned_ray.modeldir import NedDir
from ned_ray.models import fwrf
from ned_ray.preprocess import fwrf_input, fwrf_normalise


@pytest.fixture(scope="module")
def v1(ned_dir):
    return fwrf.load_fwrf(NedDir(str(ned_dir)), ModelId.parse("fmri/nsd/fwrf/sub-01/V1"))


def test_feature_maps_have_neds_shapes(v1, fixture_images):
    x = fwrf_normalise(fwrf_input(fixture_images["images_small"]))
    with torch.inference_mode():
        maps = v1.encoders[0](x)
    assert [tuple(m.shape) for m in maps] == [(4, 256, 27, 27), (4, 256, 25, 25), (4, 256, 13, 13)]


def test_head_matches_the_formula_in_float64(v1, fixture_images):
    """r = sum_c phi(sum_s softmax(rf)[v,s] phi(F[b,c,s])) w[v,c] + b, written out independently."""
    x = fwrf_normalise(fwrf_input(fixture_images["images_227"][:3]))
    head = v1.heads[0]
    with torch.inference_mode():
        maps = v1.encoders[0](x)
        ours = head(maps).double()
        pooled = [torch.einsum("bcs,vs->bvc", fwrf.phi(f.double()).flatten(2), torch.softmax(rf.double().flatten(1), 1))
                  for f, rf in zip(maps, (head.rf0, head.rf1, head.rf2))]
        reference = (fwrf.phi(torch.cat(pooled, 2)) * head.w.double()).sum(2) + head.b.double()
    assert torch.allclose(ours, reference, rtol=0, atol=1e-5 * float(reference.std()))


def test_voxel_chunking_does_not_change_results(v1, fixture_images, monkeypatch):
    u8 = fwrf_input(fixture_images["images_small"])
    whole = v1(u8)
    monkeypatch.setattr(fwrf, "HEAD_ELEMENTS", 4 * 768 * 5)  # 5 voxels per chunk for a batch of 4
    chunked = v1(u8)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_split_roi_concatenates_both_halves(ned_dir):
    lateral = fwrf.load_fwrf(NedDir(str(ned_dir)), ModelId.parse("fmri/nsd/fwrf/sub-01/lateral"))
    assert [h.n_voxels for h in lateral.heads] == [20, 17] and lateral.n_voxels == 37


def test_checkpoint_that_does_not_fit_names_the_file(tmp_path, demo_dir):
    import shutil

    copy = tmp_path / "ned"
    shutil.copytree(demo_dir, copy)
    ned = NedDir(str(copy))
    rel = ned.fwrf_weights(1, "V1")[0]
    checkpoint = ned.load_checkpoint(rel)
    checkpoint["best_params"]["enc"]["enc.conv3.weight"] = torch.zeros(5, 5)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    (copy / rel).write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="weights_sub-01_roi-V1.pt: weights do not fit NED's fwrf architecture"):
        fwrf.load_fwrf(ned, ModelId.parse("fmri/nsd/fwrf/sub-01/V1"))


def test_under_bf16_only_the_backbone_is_bf16(v1, fixture_images):
    """--precision bf16: the backbone in bf16, the pooling fields and readout in float32."""
    u8 = fwrf_input(fixture_images["images_227"][:2])
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = v1.encoders[0](fwrf_normalise(u8))
            ours = v1(u8)
        reference = v1.heads[0](tuple(m.float() for m in maps))  # the same bf16 maps, head outside autocast
    assert all(m.dtype == torch.bfloat16 for m in maps) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
