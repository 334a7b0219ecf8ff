"""The family registry (ned_ray/families/): each family states its ids, files and selections once."""

from __future__ import annotations

import pytest

from ned_ray.families import BERG_IDS, BY_KEY, FAMILIES, VIT_B_32, family
from ned_ray.ids import ModelId
from ned_ray.selection.berg import SELECTION_KEYS


def test_the_registry_lists_every_family_once_by_path_key_and_berg_id():
    assert list(BY_KEY) == ["fwrf", "eeg", "fsaverage", "things_fmri", "meg", "tvsd"]
    assert len(FAMILIES) == len(BY_KEY) == len(BERG_IDS) == 6
    assert BERG_IDS["meg-things_meg_1-vit_b_32"] is BY_KEY["meg"] is family("meg")
    with pytest.raises(ValueError, match="unknown model family 'ecog'; valid: fwrf, eeg"):
        family("ecog")


@pytest.mark.parametrize("key", ["fwrf", "eeg", "fsaverage", "things_fmri", "meg", "tvsd"])
def test_each_family_states_what_the_job_and_the_apis_need(key):
    f = BY_KEY[key]
    assert ModelId.parse(f.example()).family is f  # its example is one of its ids
    assert f.response_layout and f.berg_outputs and f.dims and f.title
    assert (f.full_shape is not None) == (key in ("fwrf", "eeg"))  # NED's formats state theirs; BERG's use the rule
    assert f.uses_vit == (f.backbone == VIT_B_32) == (key != "fwrf")  # one ViT pass feeds every ViT family
    if f.uses_vit:  # BERG's families: selection rules, the metadata section checked, the accuracy field
        assert f.select_rows is not None and SELECTION_KEYS[key] == f.selection_keys and f.metadata_section
        assert f.accuracy is not None
    else:
        assert f.select_rows is None and key not in SELECTION_KEYS


@pytest.mark.parametrize("key, subject, variant", [("fsaverage", 3, "lh"), ("things_fmri", 2, None),
                                                   ("meg", 4, "split2"), ("tvsd", "F", None)])
def test_berg_file_names_and_patterns_agree(key, subject, variant):
    files = BY_KEY[key].berg_files
    weights = files.weights.match(files.weights_name.format(s=subject, v=variant))
    metadata = files.metadata.match(files.metadata_name.format(s=subject))
    assert weights and metadata and str(subject) in (weights.group(1).lstrip("0"), weights.group(1))
    assert weights.group(1) == metadata.group(1)
    if key == "meg":  # one weight file per train split
        assert weights.group(2) == variant
