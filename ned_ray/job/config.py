"""One dataclass for every option of the encode job; the CLI, ``jobs/encode.py`` and Python build it."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..selection import Selection, parse_channels, parse_times

__all__ = ["EncodeConfig", "add_encode_arguments", "config_from_args"]

FORMATS = ("parquet", "npy")
NON_SQUARE = ("center-crop", "error", "shorter-side")
PRECISIONS = ("fp32", "tf32", "bf16")
EXECUTORS = ("auto", "ray", "local")


@dataclass
class EncodeConfig:
    """Options of one encode job. Only ``ned_dir``, ``images``, ``models`` and ``output`` are required."""

    ned_dir: str
    images: str
    models: str
    output: str
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 0  # images per forward pass; 0: chosen per model from the device's free memory
    precision: str = "fp32"  # fp32 | tf32 | bf16 (reduced precision is checked against fp32 and recorded)
    shard_size: int = 256  # images per output part (the unit of commit and resume)
    formats: tuple[str, ...] = ("parquet",)
    non_square: str = "center-crop"  # center-crop | error | shorter-side (ViT models: BERG's transform)
    actors_per_group: int = 0  # 0: each pool autoscales from 1 actor to its share of the cluster; N: fixed N
    gpus_per_actor: float = 0.0  # 0: 1, or a fraction when model groups outnumber GPUs; fractions share a GPU
    fmri_models_per_actor: int = 0  # 0: automatic (by subject when GPUs outnumber groups, and to fit memory)
    max_pixels: int = 100_000_000  # larger images are refused (decompression bombs)
    cpu_threads: int = 0  # torch threads per CPU actor; 0: the node's CPUs / number of model groups
    vit_weights: str | None = None
    channels: str | None = None  # EEG: comma-separated channel names to keep (default: all 63)
    times: str | None = None  # EEG: START:END in seconds to keep (default: all 140 time points)
    min_ncsnr: float | None = None  # fMRI: keep voxels whose ncsnr > this (default: all voxels)
    # BERG's selections, per model id or glob: {"meg/*": {"region": ["Occipital"]}, ...} (berg-spec §4-§8)
    berg_selection: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_cache: str | None = None  # local folder on each node for remote NED files (read once per node)
    overwrite: bool = False
    force: bool = False  # take over the output's lease from a job that looks alive (when it is not)
    lease_ttl: float = 120.0  # seconds without renewal after which an output's lease is stale
    create_output_bucket: bool = False  # create a missing s3:// / gs:// output bucket (default: an error)
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a new local cluster
    executor: str = "auto"  # auto | ray | local (this process, no Ray: small jobs on one machine; job/executors/)
    cluster: str | None = None  # plan for this described cluster instead of asking Ray (see job/cluster.py)
    gpu_wait: float = 600.0  # seconds to wait for GPUs to join the cluster (--device cuda, or auto + autoscaler)
    image_column: str | None = None  # a Parquet input's image column (bytes or paths); None: found by name
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.storage_options, dict):
            raise ConfigError("--storage-options must be a JSON object, e.g. '{\"s3\": {\"anon\": true}}' or "
                             f"'{{\"key\": \"...\"}}', got {type(self.storage_options).__name__}")
        if float(self.lease_ttl) <= 0:
            raise ConfigError(f"--lease-ttl must be positive, got {self.lease_ttl}")
        if isinstance(self.formats, str):
            self.formats = tuple(f.strip() for f in self.formats.split(",") if f.strip())
        self.formats = tuple(self.formats)
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ConfigError(f"--format must be a comma-separated subset of {','.join(FORMATS)}, "
                              f"got {','.join(self.formats) or 'nothing'}")
        if self.non_square not in NON_SQUARE:
            raise ConfigError(f"--non-square must be one of {', '.join(NON_SQUARE)}, got '{self.non_square}'")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{self.executor}'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got '{self.device}'")
        self.selection()  # malformed --channels/--times fail here, before any work
        if not isinstance(self.berg_selection, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in self.berg_selection.items()):
            raise ConfigError("--selection must be a JSON object mapping model ids or globs to BERG selection dicts, "
                             "e.g. '{\"meg/*\": {\"region\": [\"Occipital\"]}, \"utah_array/*\": {\"roi\": [\"V4\"]}}'")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if int(self.batch_size) < 0:
            raise ConfigError(f"--batch-size must be 0 (automatic) or more, got {self.batch_size}")
        for name in ("shard_size", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("actors_per_group", "fmri_models_per_actor", "cpu_threads"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 (automatic) or more, got {getattr(self, name)}")
        if not 0 <= float(self.gpus_per_actor) <= 8:
            raise ConfigError(f"--gpus-per-actor must be 0 (automatic) or in (0, 8], got {self.gpus_per_actor}")
        if float(self.gpu_wait) < 0:
            raise ConfigError(f"--gpu-wait must be 0 or more seconds, got {self.gpu_wait}")

    def to_json(self) -> dict[str, Any]:
        """The options as recorded in outputs (storage options are left out: they may hold secrets)."""
        data = asdict(self)
        data.pop("storage_options")
        data["formats"] = list(self.formats)
        return data

    def selection(self) -> Selection:
        """The response selection (channels, times, voxels) this job keeps."""
        return Selection(parse_channels(self.channels), parse_times(self.times),
                         None if self.min_ncsnr is None else float(self.min_ncsnr))

    def berg_selections(self, models: list) -> dict:
        """The BERG selection of each model (``{ModelId: dict}``), from the ``berg_selection``
        patterns (ids or globs, as ``--models``): each pattern must match a requested model, and two
        patterns may not set one key of one model differently."""
        from ..ids import select

        out: dict = {}
        for pattern, chosen in self.berg_selection.items():
            for mid in select(models, pattern):
                merged = out.setdefault(mid, {})
                for key, value in chosen.items():
                    if key in merged and merged[key] != value:
                        raise ConfigError(f"--selection sets '{key}' of {mid} twice, differently ('{pattern}' and an "
                                         "earlier pattern); give each model's selection once")
                    merged[key] = value
        return out

    def open_ned(self, cache: bool = True):
        """The NED directory, with this job's storage options and (for actors) the per-node model cache;
        the driver reads listings and metadata directly (``cache=False``) and never fills the cache."""
        from ..nedfmt import NedDir
        from ..storage import options_for

        return NedDir(self.ned_dir, options_for(self.ned_dir, self.storage_options), self.model_cache if cache else None)

    def identity(self) -> dict[str, Any]:
        """What defines the output's content: a rerun must match it to resume."""
        keys = ("ned_dir", "images", "models", "non_square", "shard_size", "formats", "max_pixels", "vit_weights",
                "precision", "channels", "times", "min_ncsnr", "berg_selection")
        return {k: v for k, v in self.to_json().items() if k in keys}


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    """The encode flags, shared by ``ned-ray encode`` and ``jobs/encode.py``."""
    parser.add_argument("--ned-dir", required=True, help="NED's neural_encoding_dataset folder (path or s3://, gs://, ...)")
    parser.add_argument("--images", required=True,
                        help="a folder, a glob, a .txt list of image URIs, a (N,3,H,W) uint8 .npy, or a Parquet file with image bytes")
    parser.add_argument("--image-column", default=None,
                        help="a Parquet input's image column: image bytes, or image paths/URIs read like a .txt list "
                             "(default: found by name; needed when several columns could hold paths)")
    parser.add_argument("--models", required=True,
                        help="comma-separated model ids or globs, e.g. 'fmri/nsd/fwrf/sub-0*/V1,eeg/*', or 'all'")
    parser.add_argument("--output", required=True, help="output folder (path or s3://, gs://, ...)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=0,
                        help="images per forward pass (default 0: chosen per model from free GPU/host memory)")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="fp32 (NED's numbers, default), tf32 or bf16 on GPU; the deviation from fp32 is "
                             "measured on one image per block and recorded in _manifest.json")
    parser.add_argument("--shard-size", type=int, default=256, help="images per output part and commit (default 256)")
    parser.add_argument("--format", dest="formats", default="parquet", help="parquet, npy or parquet,npy")
    parser.add_argument("--non-square", default="center-crop", choices=list(NON_SQUARE),
                        help="center-crop (default, as NED's tutorials), error, or shorter-side: the ViT models "
                             "resize the whole image's shorter side to 256 and crop 224 (BERG's transform); fwrf "
                             "models still read the centre square")
    parser.add_argument("--actors-per-group", type=int, default=0,
                        help="actors per model group (default 0: each pool autoscales from 1 to its share of the cluster)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0,
                        help="GPUs per actor (default 0: 1, or a fraction when model groups outnumber GPUs)")
    parser.add_argument("--fmri-models-per-actor", type=int, default=0,
                        help="fMRI models per group (default 0: by subject when GPUs outnumber groups, and to fit memory)")
    parser.add_argument("--channels", default=None,
                        help="EEG: keep these channels (comma-separated names, e.g. 'O1,Oz,O2'); default all 63")
    parser.add_argument("--times", default=None, help="EEG: keep time points in START:END seconds (e.g. 0.1:0.3)")
    parser.add_argument("--min-ncsnr", type=float, default=None,
                        help="fMRI: keep voxels whose noise-ceiling SNR (NED metadata fmri.ncsnr) is above this")
    parser.add_argument("--selection", dest="berg_selection", default=None,
                        help="BERG selections: a JSON object (or a .json file) mapping model ids or globs to BERG's "
                             "selection dicts, e.g. '{\"meg/*\": {\"region\": [\"Occipital\"]}, "
                             "\"fmri/nsd_fsaverage/*\": {\"roi\": \"V1v\"}}' (keys per family: see docs/berg.md)")
    parser.add_argument("--max-pixels", type=int, default=100_000_000)
    parser.add_argument("--cpu-threads", type=int, default=0, help="torch threads per CPU actor (0: auto)")
    parser.add_argument("--vit-weights", default=None, help="path or URL of torchvision's vit_b_32-d86f8d99.pth")
    parser.add_argument("--model-cache", default=None,
                        help="local folder where each node keeps remote NED model files after the first read")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output made with other options or from another input")
    parser.add_argument("--force", action="store_true",
                        help="take over the output's lease from another job that looks alive (only if it is dead)")
    parser.add_argument("--lease-ttl", type=float, default=120.0,
                        help="seconds without renewal after which an output's lease is stale (default 120)")
    parser.add_argument("--create-output-bucket", action="store_true",
                        help="create the output's bucket if it does not exist (default: a missing bucket is an error)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS or a new local one)")
    parser.add_argument("--executor", default="auto", choices=EXECUTORS,
                        help="ray: Ray Data (a new local Ray instance, or the cluster of --ray-address/$RAY_ADDRESS); "
                             "local: this process, no Ray; auto (default): local for jobs of at most 2,000 images on "
                             "one machine with at most one GPU and no Ray cluster given, else ray")
    parser.add_argument("--cluster", default=None,
                        help="plan for a described cluster instead of asking Ray: e.g. '16cpu,0-8x8cpu+1gpu:24GB' "
                             "(a head and 0-8 workers of one 24 GB GPU), '2x16cpu+4gpu', or a cluster launcher YAML")
    parser.add_argument("--gpu-wait", type=float, default=600.0,
                        help="seconds to wait for GPUs to join the cluster (--device cuda, or auto with an autoscaler)")
    parser.add_argument("--storage-options", default="{}", help="JSON dict passed to fsspec (e.g. endpoint settings)")


def config_from_args(args: argparse.Namespace) -> EncodeConfig:
    """Build the config from parsed ``add_encode_arguments`` flags."""
    names = {f.name for f in fields(EncodeConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if isinstance(args.storage_options, str):
        try:
            values["storage_options"] = json.loads(args.storage_options)
        except ValueError as exc:
            raise ConfigError(f"--storage-options is not valid JSON ({exc}): give a JSON object, e.g. "
                             "'{\"s3\": {\"anon\": true}}'") from None
    if values.get("berg_selection") is None:
        values["berg_selection"] = {}
    elif isinstance(values["berg_selection"], str):
        values["berg_selection"] = _json_option("--selection", values["berg_selection"])
    return EncodeConfig(**values)


def _json_option(flag: str, text: str) -> Any:
    """A JSON value given inline or as the path/URL of a JSON file."""
    if not text.lstrip().startswith(("{", "[")):
        import fsspec

        try:
            with fsspec.open(text, "rt") as fh:
                text = fh.read()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{flag}: '{text}' is neither inline JSON nor a readable JSON file ({exc})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag} is not valid JSON ({exc})") from None
