"""BERG's AlexNet backbones (berg-spec §9): torchvision's AlexNet, trained (ImageNet) or untrained.

features = eight nodes' outputs, each flattened (C, H, W) row-major, concatenated in this order:
features.2, 5, 7, 9, 12 (after conv1-5) and classifier.2, 5 (the ReLUs after fc1, fc2) and 6 (the
logits): 205,672 float32 values per image, on the same 224-px crop and ImageNet normalisation as
ViT-B/32. The heads on them are BERG's (scaler -> PCA -> linear), run by
:class:`~ned_ray.models.vit_heads.HeadStack` like every BERG ViT head.

The untrained network has no weight file: BERG builds it at every load with
``torch.manual_seed(20200220); torchvision.models.alexnet(weights=None)``, so its weights are whatever
torch's CPU generator and torchvision's initialisation draw. :func:`untrained_alexnet` draws them the
same way (without touching the caller's RNG state) and refuses, in one line, a torch whose draws give
another network than the one BERG's models were fitted on (:data:`UNTRAINED_DIGEST`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import AlexNet, alexnet

from ..errors import ModelLoadError
from ..modeldir import MissingFileError, NedDir
from .vit_eeg import first_existing, read_checkpoint

__all__ = ["ALEXNET_FILENAME", "ALEXNET_ENV", "N_FEATURES", "UNTRAINED_SEED", "UNTRAINED_DIGEST", "find_alexnet_weights",
           "load_alexnet", "untrained_alexnet", "alexnet_features", "state_digest"]

ALEXNET_FILENAME = "alexnet-owt-7be5be79.pth"  # torchvision's IMAGENET1K_V1 file, as cached by torch.hub
ALEXNET_ENV = "NED_RAY_ALEXNET_WEIGHTS"
FEATURE_NODES = ((2, 5, 7, 9, 12), (2, 5, 6))  # indices in .features and in .classifier (berg-spec §9.1)
N_FEATURES = 46_656 + 32_448 + 64_896 + 43_264 + 9_216 + 4_096 + 4_096 + 1_000  # 205,672
UNTRAINED_SEED = 20200220
# sha256 over (key, float32 bytes) in sorted key order of the network BERG's untrained models read:
# torch 2.14.1 / torchvision 0.29.1 (../berg-fixtures/alexnet/README.md, "The untrained networks").
UNTRAINED_DIGEST = "be84bfc9fae72e1eb55d2af6023baae3ecee03fb9626b8eb066b577ce0e4b936"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over each key and its float32 bytes, keys sorted (the fixtures' digest)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def untrained_alexnet(check: bool = True) -> AlexNet:
    """BERG's untrained AlexNet: torchvision's initialisation after ``torch.manual_seed(20200220)``, on
    the CPU. The caller's RNG state is left as it was (BERG resets the global seed; ned-ray does not).

    ``check``: refuse a network whose digest is not :data:`UNTRAINED_DIGEST` (a torch or torchvision
    whose RNG or initialisation draws differently builds an unrelated network)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        model = alexnet(weights=None)
    if check:
        found = state_digest(model.state_dict())
        if found != UNTRAINED_DIGEST:
            import torchvision

            raise ModelLoadError(
                f"torch {torch.__version__} / torchvision {torchvision.__version__} draw another untrained AlexNet than "
                f"the one BERG's *_untrained models were fitted on (state digest {found[:12]}..., expected "
                f"{UNTRAINED_DIGEST[:12]}...): install torch 2.14.1 and torchvision 0.29.1 to run these models")
    return model.eval()


def find_alexnet_weights(explicit: str | os.PathLike | None = None) -> str:
    """Where torchvision's ImageNet AlexNet weights are, without downloading anything: ``explicit``
    (a path or fsspec URL), ``$NED_RAY_ALEXNET_WEIGHTS``, then torch hub's cache
    ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` (where BERG's own loader finds them)."""
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILENAME
    candidates = [str(explicit)] if explicit else ([os.environ[ALEXNET_ENV]] if os.environ.get(ALEXNET_ENV) else [])
    candidates.append(str(hub_file))
    found = first_existing(candidates, None)
    if found is not None:
        return found
    raise MissingFileError(
        f"AlexNet weights not found (looked at: {', '.join(candidates)}). BERG's trained AlexNet models need "
        f"torchvision's ImageNet AlexNet file '{ALEXNET_FILENAME}'. Copy it to '{hub_file}' (set TORCH_HOME to move "
        f"that folder) or set ${ALEXNET_ENV} to its path. On a machine with internet, `python -c \"import torchvision; "
        "torchvision.models.alexnet(weights='DEFAULT')\"` downloads it to that cache.")


def load_alexnet(location: str, ned: NedDir | None = None) -> AlexNet:
    """torchvision's AlexNet with the weights at ``location`` (``weights_only=True``; 16 tensors)."""
    state = read_checkpoint(location, ned)
    if not isinstance(state, dict) or "features.0.weight" not in state:
        raise ValueError(f"{location}: not a torchvision AlexNet state dict (no 'features.0.weight')")
    with torch.device("meta"):  # no random initialisation: the weights replace it
        model = AlexNet()
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{location}: weights do not fit torchvision's AlexNet: {str(exc).splitlines()[0]}") from None
    return model.eval()


def alexnet_features(model: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """(B, 205,672) float32: the eight nodes of berg-spec §9.1 from normalised (B, 3, 224, 224) images.

    The modules run in order and the nodes' outputs are kept as they come; no later module writes
    into them (each in-place ReLU acts on its own convolution's or linear's fresh output)."""
    outputs = []
    for stage, keep in ((model.features, FEATURE_NODES[0]), (model.classifier, FEATURE_NODES[1])):
        if stage is model.classifier:
            x = torch.flatten(model.avgpool(x), 1)
        for i, module in enumerate(stage):
            x = module(x)
            if i in keep:
                outputs.append(x.flatten(1))
    return torch.cat(outputs, dim=1)


class AlexNetFeatures(nn.Module):
    """An AlexNet as a feature extractor: normalised images -> (B, 205,672) features."""

    def __init__(self, model: AlexNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return alexnet_features(self.model, x)
