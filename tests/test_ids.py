"""Model ids parse, print, reject path tricks, and select by glob with helpful errors."""

from __future__ import annotations

import pytest

from ned_ray.ids import ModelId, UnknownModelError, select


def test_round_trip():
    for text in ("fmri/nsd/fwrf/sub-01/V1", "fmri/nsd/fwrf/sub-08/mfs-words", "eeg/things_eeg_2/vit_b_32/sub-10"):
        assert str(ModelId.parse(text)) == text
    mid = ModelId.parse("fmri/nsd/fwrf/sub-03/lateral")
    assert (mid.subject, mid.roi, mid.is_split) == (3, "lateral", True)


@pytest.mark.parametrize("text", [
    "fmri/nsd/fwrf/sub-01/../../etc", "fmri/nsd/fwrf/sub-01/..", "eeg/things_eeg_2/vit_b_32/sub-1",
    "eeg/things_eeg_2/vit_b_32/sub-01/V1", "fmri/nsd/fwrf/sub-01", "/abs/olute", "meg/x/y/sub-01",
    "fmri/nsd/fwrf/sub-01/V1\\..\\x", "fmri/nsd/fwrf/sub-01/.hidden", "s3://bucket/fmri/nsd/fwrf/sub-01/V1",
])
def test_bad_ids_are_rejected(text):
    with pytest.raises(UnknownModelError):
        ModelId.parse(text)


def test_components_must_be_plain_names():
    with pytest.raises(ValueError, match="not a plain name"):
        ModelId("fmri", "nsd", "fwrf", 1, "../V1")
    with pytest.raises(ValueError, match="subject"):
        ModelId("eeg", "things_eeg_2", "vit_b_32", True)


def test_select_globs_and_errors():
    available = [ModelId.parse(t) for t in (
        "fmri/nsd/fwrf/sub-01/V1", "fmri/nsd/fwrf/sub-02/V1", "fmri/nsd/fwrf/sub-01/FFA-1",
        "eeg/things_eeg_2/vit_b_32/sub-01", "eeg/things_eeg_2/vit_b_32/sub-02")]
    assert [str(m) for m in select(available, "fmri/nsd/fwrf/sub-0*/V1")] == ["fmri/nsd/fwrf/sub-01/V1", "fmri/nsd/fwrf/sub-02/V1"]
    assert len(select(available, "eeg/*")) == 2
    assert len(select(available, "eeg")) == 2  # a prefix selects everything under it
    assert select(available, "all") == sorted(available)
    assert len(select(available, "eeg/*,fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01")) == 3
    with pytest.raises(UnknownModelError) as info:
        select(available, "fmri/nsd/fwrf/sub-01/PPA")
    assert "fmri/nsd/fwrf/sub-01/V1" in str(info.value) and "Valid model ids" in str(info.value)


def test_alexnet_ids_and_globs():
    from ned_ray.ids import select

    ids = [ModelId.parse(t) for t in ("fmri/nsd_fsaverage/alexnet/sub-01/lh", "fmri/nsd_fsaverage/alexnet_untrained/sub-01/lh",
                                      "fmri/nsd_fsaverage/vit_b_32/sub-01/lh", "eeg/things_eeg_2/alexnet_untrained/sub-02")]
    assert ids[0].berg == ("fmri-nsd_fsaverage-alexnet", {"subject": 1}) and ids[3].family.key == "eeg_alexnet_untrained"
    assert [str(m) for m in select(ids, "fmri-nsd_fsaverage-alexnet")] == ["fmri/nsd_fsaverage/alexnet/sub-01/lh"]
    assert len(select(ids, "*/*/alexnet_untrained/*")) == 2 and len(select(ids, "*/*/alexnet_untrained/*/*")) == 1  # a subject: its hemispheres
    assert len(select(ids, "fmri/nsd_fsaverage/*/sub-01/lh")) == 3
