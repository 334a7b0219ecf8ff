"""Crafted pickles never run; NED's real files load; BERG's sklearn objects become inert holders."""

from __future__ import annotations

import io
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from ned_ray import NED
from ned_ray.modeldir import NedDir
from ned_ray.safeload import Attributes, UnsafePickleError, load_npy_dict, load_torch_checkpoint


class _Payload:
    """Pickles as a call to os.system that would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _malicious_npy(marker) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array({"scale_": _Payload(marker)}, dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _malicious_pt(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save({"stim_mean": np.zeros((1, 3, 1, 1), np.float32), "best_params": _Payload(marker)}, buffer)
    return buffer.getvalue()


def test_malicious_npy_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError, match=r"evil\.npy: refusing to load '(posix|os)\.system'"):
        load_npy_dict(_malicious_npy(marker), source="evil.npy")
    assert not marker.exists()


def test_malicious_pt_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError, match=r"evil\.pt: refusing to unpickle"):
        load_torch_checkpoint(io.BytesIO(_malicious_pt(marker)), source="evil.pt")
    assert not marker.exists()


def test_malicious_files_inside_a_ned_directory(tmp_path, demo_dir):
    """Through the public API: the error names the file, and the payload never runs."""
    ned_copy = tmp_path / "ned"
    shutil.copytree(demo_dir, ned_copy)
    marker = tmp_path / "pwned"
    ned = NedDir(str(ned_copy))
    (ned_copy / ned.fwrf_weights(1, "V1")[0]).write_bytes(_malicious_pt(marker))
    (ned_copy / ned.eeg_regression(2)).write_bytes(_malicious_npy(marker))
    api = NED(ned_copy)
    with pytest.raises(UnsafePickleError, match="weights_sub-01_roi-V1.pt"):
        api.get_encoding_model("fmri", "nsd", "fwrf", 1, "V1", device="cpu")
    with pytest.raises(UnsafePickleError, match="LinearRegression_param_sub-02.npy"):
        api.get_encoding_model("eeg", "things_eeg_2", "vit_b_32", 2, device="cpu")
    assert not marker.exists()


def test_real_ned_files_load(ned_dir):
    ned = NedDir(str(ned_dir))
    checkpoint = ned.load_checkpoint(ned.fwrf_weights(1, "V1")[0])
    assert isinstance(checkpoint["stim_mean"], np.ndarray) and checkpoint["stim_mean"].shape == (1, 3, 1, 1)
    assert len(checkpoint["best_params"]["enc"]) == 54
    pca = ned.load_npy(ned.EEG_PCA)
    reference = np.load(ned.path(ned.EEG_PCA), allow_pickle=True).item()
    assert pca.keys() == reference.keys()
    np.testing.assert_array_equal(pca["components_"], reference["components_"])


def test_corrupt_files_give_clear_errors():
    with pytest.raises(ValueError, match="bad.npy: not a valid .npy file"):
        load_npy_dict(b"not numpy at all", source="bad.npy")
    truncated = _malicious_npy("/nonexistent")[:90]
    with pytest.raises((ValueError, UnsafePickleError), match="short.npy"):
        load_npy_dict(truncated, source="short.npy")
    with pytest.raises(ValueError, match="bad.pt: not a readable torch checkpoint"):
        load_torch_checkpoint(io.BytesIO(b"PK\x03\x04garbage"), source="bad.pt")


def test_sklearn_estimators_become_inert_attribute_holders(monkeypatch):
    """BERG pickles sklearn PCA objects; they load as Attributes without importing sklearn."""
    fake = types.ModuleType("sklearn.decomposition._pca")

    class PCA:  # stands in for sklearn's class while pickling
        pass

    PCA.__module__, PCA.__qualname__ = "sklearn.decomposition._pca", "PCA"
    fake.PCA = PCA
    for name in ("sklearn", "sklearn.decomposition", "sklearn.decomposition._pca"):
        monkeypatch.setitem(sys.modules, name, fake)
    pca = PCA()
    pca.components_ = np.arange(6.0).reshape(2, 3)
    pca.mean_ = np.ones(3)
    buffer = io.BytesIO()
    np.save(buffer, np.array({"pca_param": {"rep-1": pca}}, dtype=object), allow_pickle=True)
    for name in ("sklearn", "sklearn.decomposition", "sklearn.decomposition._pca"):
        monkeypatch.delitem(sys.modules, name)

    loaded = load_npy_dict(buffer.getvalue(), source="weights_subject-01.npy")["pca_param"]["rep-1"]
    assert isinstance(loaded, Attributes)
    np.testing.assert_array_equal(loaded["components_"], pca.components_)
    assert "sklearn.decomposition._pca" not in sys.modules
