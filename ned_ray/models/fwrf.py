"""NED's fMRI model ``fwrf`` (ned-spec §2): a small conv backbone and a per-voxel pooling head.

Module and parameter names mirror the checkpoint's state-dict keys, so NED's ``best_params['enc']``
and ``best_params['fwrfs'][subject]`` load with ``strict=True``. ``lateral``/``ventral`` ROIs are two
checkpoints (two backbones and heads) concatenated along voxels, as NED does.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ids import ModelId
from ..modeldir import NedDir
from ..preprocess import fwrf_normalise

__all__ = ["FwrfEncoder", "FwrfHead", "FwrfModel", "load_fwrf", "phi"]

# Upper bound on the head's (batch x voxels x 768) intermediate, in float32 elements (256 MiB).
HEAD_ELEMENTS = 64 * 1024 * 1024
# float32 values alive per image in one backbone + phi(features) pass (input, conv1 before pooling,
# the 27/25/13 px maps and their BatchNorm temporaries, the three concatenated feature maps twice).
ACTIVATIONS_PER_IMAGE = 2_000_000


def phi(z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The fwrf nonlinearity, log(1 + |z|) * tanh(z), as NED computes it (log of 1 + |z|, not log1p).

    With ``out=z`` it overwrites ``z``: these elementwise passes over (B x 768 x voxels) values are
    most of an fwrf model's time on CPU, and fresh buffers of that size cost page faults.
    """
    magnitude = z.abs().add_(1).log_()
    return torch.tanh(z, out=out).mul_(magnitude)


class _PreFilter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.conv2 = nn.Sequential(nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True))


class _Block(nn.Module):
    """T(z) = ReLU(Conv3x3(BN(z))); the training-time Dropout2d is the identity in eval mode."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv1(self.bn1(z)))


class _Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(192)
        self.conv3 = nn.Conv2d(192, 128, 3)
        for name in ("conv4a", "conv4b", "conv5a", "conv5b", "conv6a"):
            setattr(self, name, _Block(128, 128))
        self.conv6b = _Block(128, 64)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)


class FwrfEncoder(nn.Module):
    """The backbone. Input float32 in [0,1], (B,3,227,227); output the three feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(1, 3, 1, 1))
        self.pre = _PreFilter()
        self.enc = _Trunk()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x - self.mu
        c1 = self.pre.conv1(x)  # (B,64,27,27)
        y = self.pre.conv2(c1)  # (B,192,27,27)
        t = self.enc
        c3 = torch.relu(t.conv3(t.bn1(y)))  # (B,128,25,25)
        c4a = t.conv4a(c3)
        c4b = t.conv4b(c4a)
        c5a = t.conv5a(t.pool(c4b))  # 13x13
        c5b = t.conv5b(c5a)
        c6a = t.conv6a(c5b)
        c6b = t.conv6b(c6a)  # (B,64,13,13)
        f0 = torch.cat([c1, y], 1)
        f1 = torch.cat([c3, c4a[:, :64], c4b[:, :64]], 1)
        f2 = torch.cat([c5a[:, :64], c5b[:, :64], c6a[:, :64], c6b], 1)
        return f0, f1, f2


class FwrfHead(nn.Module):
    """Per-voxel head: softmax pooling fields over phi(features), phi again, then a linear readout.

    r[b,v] = sum_c phi(P[b,v,c]) w[v,c] + b[v],  P_k[b,v,:] = sum_s softmax(rf_k[v])[s] phi(F_k[b,:,s]).
    Computed in voxel chunks so the (B, V, 768) intermediate stays under ``HEAD_ELEMENTS``.
    """

    def __init__(self, n_voxels: int, sizes: tuple[int, int, int] = (27, 25, 13), n_features: int = 768) -> None:
        super().__init__()
        self.rf0 = nn.Parameter(torch.zeros(n_voxels, sizes[0], sizes[0]), requires_grad=False)
        self.rf1 = nn.Parameter(torch.zeros(n_voxels, sizes[1], sizes[1]), requires_grad=False)
        self.rf2 = nn.Parameter(torch.zeros(n_voxels, sizes[2], sizes[2]), requires_grad=False)
        self.w = nn.Parameter(torch.zeros(n_voxels, n_features), requires_grad=False)
        self.b = nn.Parameter(torch.zeros(n_voxels), requires_grad=False)

    @property
    def n_voxels(self) -> int:
        return self.b.shape[0]

    def forward(self, fmaps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        batch = fmaps[0].shape[0]
        # phi(F_k) as (B*C, S): one matmul per map pools every channel for a chunk of voxels.
        feats = [phi(f).flatten(2) for f in fmaps]  # (B, C_k, S_k)
        fields = [torch.softmax(rf.flatten(1), dim=1) for rf in (self.rf0, self.rf1, self.rf2)]  # (V, S_k)
        chunk = max(1, HEAD_ELEMENTS // max(1, batch * self.w.shape[1]))
        out = []
        for start in range(0, self.n_voxels, chunk):
            sl = slice(start, start + chunk)
            # (B, 768, v), float32 (FwrfModel runs the head outside autocast): the readout sums 768 terms
            pooled = torch.cat([f @ g[sl].T for f, g in zip(feats, fields)], dim=1)
            weighted = phi(pooled, out=pooled).mul_(self.w[sl].T)  # in place, no copies
            out.append(weighted.sum(dim=1) + self.b[sl])
        return torch.cat(out, dim=1)


class FwrfModel(nn.Module):
    """One (subject, ROI) fwrf model: one part, or two for split ROIs. uint8 227px in, (B,V) out."""

    def __init__(self, parts: list[tuple[FwrfEncoder, FwrfHead]]) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(e for e, _ in parts)
        self.heads = nn.ModuleList(h for _, h in parts)

    @property
    def n_voxels(self) -> int:
        return sum(h.n_voxels for h in self.heads)

    def bytes_per_image(self) -> int:
        """Working memory of one image in a forward pass (float32 activations, features, output)."""
        return 4 * (len(self.encoders) * ACTIVATIONS_PER_IMAGE + self.n_voxels)

    @torch.inference_mode()
    def forward(self, u8: torch.Tensor) -> torch.Tensor:
        x = fwrf_normalise(u8)
        out = []
        for enc, head in zip(self.encoders, self.heads):
            maps = enc(x)  # under bf16 autocast, the backbone runs in bf16
            with torch.autocast(x.device.type, enabled=False):  # the pooling and readout: always float32
                out.append(head(tuple(m.float() for m in maps)))
        return torch.cat(out, dim=1)


def _load_part(ned: NedDir, relative: str, subject: int) -> tuple[FwrfEncoder, FwrfHead]:
    checkpoint = ned.load_checkpoint(relative)
    where = ned.uri(relative)
    try:
        params = checkpoint["best_params"]
        enc_state = dict(params["enc"])
        fwrfs = params["fwrfs"]
        head_state = fwrfs[subject] if subject in fwrfs else fwrfs[next(iter(fwrfs))]
    except (KeyError, TypeError, StopIteration) as exc:
        raise ValueError(f"{where}: not an fwrf checkpoint (missing {exc}); expected best_params/enc and best_params/fwrfs") from None
    # NED subtracts the checkpoint's stim_mean (the state dict's own 'mu' is not what it uses).
    if "stim_mean" in checkpoint:
        enc_state["mu"] = torch.as_tensor(checkpoint["stim_mean"], dtype=torch.float32).reshape(1, 3, 1, 1)
    elif "mu" not in enc_state:
        raise ValueError(f"{where}: checkpoint has neither 'stim_mean' nor best_params/enc/mu")
    encoder = FwrfEncoder()
    head = FwrfHead(int(head_state["b"].shape[0]))
    try:
        encoder.load_state_dict({k: torch.as_tensor(v) for k, v in enc_state.items()}, strict=True)
        head.load_state_dict({k: torch.as_tensor(v) for k, v in head_state.items()}, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{where}: weights do not fit NED's fwrf architecture: {str(exc).splitlines()[0]}") from None
    return encoder.eval(), head.eval()


def load_fwrf(ned: NedDir, model_id: ModelId, device: str | torch.device = "cpu") -> FwrfModel:
    """Load one fwrf model (both halves of a split ROI) onto ``device``, in eval mode."""
    entry = ned.entry(model_id)
    parts = [_load_part(ned, rel, model_id.subject) for rel in entry.weights]
    if len(parts) == 2:
        # NED quirk, reproduced for parity (checked against NED's own outputs in the fixtures): for
        # split ROIs both halves subtract the stimulus mean of the *second* checkpoint.
        parts[0][0].mu.copy_(parts[1][0].mu)
    return FwrfModel(parts).to(device).eval()
