"""BERG's AlexNet backbones: the untrained network rebuilt bit for bit (and refused where torch would
draw another), BERG's eight feature nodes in order, and one pass per backbone in a mixed group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import alexnet
from torchvision.models.feature_extraction import create_feature_extractor

from ned_ray.errors import MissingFileError, ModelLoadError
from ned_ray.models import alexnet as ax
from ned_ray.models.group import ModelGroup

NODES = ["features.2", "features.5", "features.7", "features.9", "features.12", "classifier.2", "classifier.5",
         "classifier.6"]  # berg-spec §9.1, in BERG's order


def test_the_untrained_network_is_bergs_and_leaves_the_callers_rng_alone():
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    model = ax.untrained_alexnet()
    assert ax.state_digest(model.state_dict()) == ax.UNTRAINED_DIGEST
    assert torch.initial_seed() == 7 and torch.equal(torch.rand(3), expected_next)  # BERG resets it; we do not
    torch.manual_seed(ax.UNTRAINED_SEED)  # BERG's own recipe gives the same network
    assert ax.state_digest(alexnet(weights=None).state_dict()) == ax.UNTRAINED_DIGEST


def test_a_torch_that_draws_another_network_is_refused(monkeypatch):
    monkeypatch.setattr(ax, "UNTRAINED_DIGEST", "0" * 64)
    with pytest.raises(ModelLoadError, match=r"torch .* draw another untrained AlexNet .* install torch 2\.14\.1"):
        ax.untrained_alexnet()


def test_the_features_are_bergs_eight_nodes_in_order():
    model = ax.untrained_alexnet()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ours = ax.alexnet_features(model, x)
        nodes = create_feature_extractor(model, return_nodes=NODES)(x)  # what BERG calls
        theirs = torch.hstack([torch.flatten(nodes[n], start_dim=1) for n in NODES])
    assert ours.shape == (2, ax.N_FEATURES) == (2, 205_672)
    assert torch.equal(ours, theirs)


def test_missing_trained_weights_name_the_file_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(ax.ALEXNET_ENV, raising=False)
    with pytest.raises(MissingFileError, match=r"alexnet-owt-7be5be79\.pth.*NED_RAY_ALEXNET_WEIGHTS"):
        ax.find_alexnet_weights()


def test_a_file_that_is_not_an_alexnet_is_refused(tmp_path):
    path = tmp_path / "not.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision AlexNet state dict"):
        ax.load_alexnet(str(path))


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)


@pytest.fixture(scope="module")
def both_dir(tmp_path_factory, berg_dir: Path, alexnet_berg_dir: Path) -> Path:
    """BERG's ViT-B/32 fsaverage model and its two AlexNet ones, in one directory (files linked)."""
    root = tmp_path_factory.mktemp("both") / "berg_dir"
    for source in (berg_dir, alexnet_berg_dir):
        for path in (source / "encoding_models/modality-fmri/train_dataset-nsd_fsaverage").rglob("*.npy"):
            _link(path, root / path.relative_to(source))
    return root


def test_a_group_runs_each_backbone_once_per_batch(both_dir, vit_cache, alexnet_weights, berg_fixtures):
    ids = ["fmri/nsd_fsaverage/vit_b_32/sub-01/lh", "fmri/nsd_fsaverage/alexnet/sub-01/lh",
           "fmri/nsd_fsaverage/alexnet/sub-01/rh", "fmri/nsd_fsaverage/alexnet_untrained/sub-01/rh"]
    group = ModelGroup(both_dir, ids, "cpu")
    networks = group.shared.networks
    assert sorted(networks) == ["alexnet", "alexnet_untrained", "vit_b_32"]
    calls = {name: 0 for name in networks}
    hooks = [net.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, net in networks.items()]
    images = np.load(berg_fixtures / "images_small.npy")
    try:
        out = group.encode(images, batch_size=4)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"alexnet": 1, "alexnet_untrained": 1, "vit_b_32": 1}  # 4 models, one pass per backbone
    for mid in group.model_ids:  # each model as it is alone
        alone = ModelGroup(both_dir, [mid], "cpu").encode(images, batch_size=4)[mid]
        assert out[mid].shape == alone.shape == (4, 163_842)
        assert float(np.abs(out[mid] - alone).max()) <= 1e-5 * float(alone.std())
