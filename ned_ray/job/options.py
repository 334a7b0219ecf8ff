"""The encode job's options, each defined once: its default, its flag's help, and which half it is.

``JOB`` options are what a job computes: its identity, recorded in ``_job.json`` (a rerun must match
it to resume; other values are refused unless ``--overwrite``). ``RUN`` options are how it runs:
devices, actors, executor, cluster, lease, storage, where the output goes. ``ned-ray encode``'s and
``jobs/encode.py``'s flags are generated from these definitions (:func:`add_encode_arguments`), so
every default is written once, here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..selection import Selection

__all__ = ["EncodeConfig", "add_encode_arguments", "config_from_args", "JOB", "RUN"]

JOB, RUN = "job", "run"
FORMATS = ("parquet", "npy")
STORES = ("responses", "codes", "both")  # what an output keeps of each linear model (ned_ray.output.codes)
NON_SQUARE = ("center-crop", "error", "shorter-side")
PRECISIONS = ("fp32", "tf32", "bf16")
EXECUTORS = ("auto", "ray", "local")
DEVICES = ("auto", "cpu", "cuda")


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


def _storage_options(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--storage-options is not valid JSON ({exc}): give a JSON object, e.g. "
                          "'{\"s3\": {\"anon\": true}}'") from None


def _option(part: str, help: str | None = None, default: Any = MISSING, *, flag: str | None = None,
            type: Callable[[str], Any] | None = None, choices: tuple[str, ...] | None = None,
            parse: Callable[[str], Any] | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A field of :class:`EncodeConfig` and the definition of its flag. ``parse``: how the flag's text
    becomes the value (JSON options); ``flag``: the flag's name when it is not the field's."""
    meta = {"part": part, "help": help, "flag": flag, "type": type, "choices": choices, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class EncodeConfig:
    """Options of one encode job. Only ``ned_dir``, ``images``, ``models`` and ``output`` are required."""

    ned_dir: str = _option(JOB, "NED's neural_encoding_dataset folder (path or s3://, gs://, ...)")
    images: str = _option(JOB, "a folder, a glob, a .txt list of image URIs, a (N,3,H,W) uint8 .npy, a Parquet "
                               "file with image bytes, or WebDataset tar shards (a folder, glob or brace pattern "
                               "such as 'shards/{0000..0099}.tar')")
    models: str = _option(JOB, "comma-separated model ids or globs, e.g. 'fmri/nsd/fwrf/sub-0*/V1,eeg/*', or 'all'")
    output: str = _option(RUN, "output folder (path or s3://, gs://, ...)")
    device: str = _option(RUN, None, "auto", choices=DEVICES)
    batch_size: int = _option(RUN, "images per forward pass (default 0: chosen per model from free GPU/host memory)", 0)
    precision: str = _option(JOB, "fp32 (NED's numbers, default), tf32 or bf16 on GPU; the deviation from fp32 is "
                                  "measured on one image per block and recorded in _manifest.json", "fp32",
                             choices=PRECISIONS)
    shard_size: int = _option(JOB, "images per output part and commit (default 256)", 256)
    formats: tuple[str, ...] = _option(JOB, "parquet, npy or parquet,npy", ("parquet",), flag="format", type=str)
    store: str = _option(JOB, "responses (default); codes: the ViT-B/32 models' small code per image and their heads "
                              "once (responses rebuilt when read: a small fraction of the bytes); both. fwrf models "
                              "have no small code: their responses are stored", "responses", choices=STORES)
    non_square: str = _option(JOB, "center-crop (default, as NED's tutorials), error, or shorter-side: the ViT models "
                                   "resize the whole image's shorter side to 256 and crop 224 (BERG's transform); "
                                   "fwrf models still read the centre square", "center-crop", choices=NON_SQUARE)
    actors_per_group: int = _option(RUN, "actors per model group (default 0: each pool autoscales from 1 to its share "
                                         "of the cluster)", 0)
    gpus_per_actor: float = _option(RUN, "GPUs per actor (default 0: 1, or a fraction when model groups outnumber "
                                         "GPUs)", 0.0)
    fmri_models_per_actor: int = _option(RUN, "fMRI models per group (default 0: by subject when GPUs outnumber "
                                              "groups, and to fit memory)", 0)
    max_pixels: int = _option(JOB, "larger images are refused, from their header (decompression bombs)", 100_000_000)
    cpu_threads: int = _option(RUN, "torch threads per CPU actor (0: auto)", 0)
    vit_weights: str | None = _option(JOB, "path or URL of torchvision's vit_b_32-d86f8d99.pth", None)
    alexnet_weights: str | None = _option(JOB, "path or URL of torchvision's alexnet-owt-7be5be79.pth (BERG's trained "
                                               "AlexNet models)", None)
    channels: str | None = _option(JOB, "EEG: keep these channels (comma-separated names, e.g. 'O1,Oz,O2'); "
                                        "default all 63", None)
    times: str | None = _option(JOB, "EEG: keep time points in START:END seconds (e.g. 0.1:0.3)", None)
    min_ncsnr: float | None = _option(JOB, "fMRI: keep voxels whose noise-ceiling SNR (NED metadata fmri.ncsnr) is "
                                           "above this", None, type=float)
    # BERG's selections, per model id or glob: {"meg/*": {"region": ["Occipital"]}, ...} (berg-spec §4-§8)
    berg_selection: dict[str, dict[str, Any]] = _option(
        JOB, "BERG selections: a JSON object (or a .json file) mapping model ids or globs to BERG's selection dicts, "
             "e.g. '{\"meg/*\": {\"region\": [\"Occipital\"]}, \"fmri/nsd_fsaverage/*\": {\"roi\": \"V1v\"}}' "
             "(keys per family: see docs/berg.md)",
        flag="selection", factory=dict, parse=lambda text: _json_option("--selection", text))
    model_cache: str | None = _option(RUN, "local folder where each node keeps remote NED model files after the "
                                           "first read", None)
    overwrite: bool = _option(RUN, "replace an existing output made with other options or from another input", False)
    force: bool = _option(RUN, "take over the output's lease from another job that looks alive (only if it is dead)",
                          False)
    lease_ttl: float = _option(RUN, "seconds without renewal after which an output's lease is stale (default 120)",
                               120.0)
    create_output_bucket: bool = _option(RUN, "create the output's bucket if it does not exist (default: a missing "
                                              "bucket is an error)", False)
    ray_address: str | None = _option(RUN, "Ray cluster to join (default: $RAY_ADDRESS or a new local one)", None)
    verbose: bool = _option(RUN, "show Ray's and Ray Data's own log lines and progress bars (default: ned-ray's "
                                 "progress only)", False)
    executor: str = _option(RUN, "ray: Ray Data (a new local Ray instance, or the cluster of --ray-address/"
                                 "$RAY_ADDRESS); local: this process, no Ray; auto (default): local for jobs of at "
                                 "most 2,000 images on one machine with at most one GPU and no Ray cluster given, "
                                 "else ray", "auto", choices=EXECUTORS)
    cluster: str | None = _option(RUN, "plan for a described cluster instead of asking Ray: e.g. "
                                       "'16cpu,0-8x8cpu+1gpu:24GB' (a head and 0-8 workers of one 24 GB GPU), "
                                       "'2x16cpu+4gpu', or a cluster launcher YAML", None)
    gpu_wait: float = _option(RUN, "seconds to wait for GPUs to join the cluster (--device cuda, or auto with an "
                                   "autoscaler)", 600.0)
    image_column: str | None = _option(RUN, "a Parquet input's image column: image bytes, or image paths/URIs read "
                                            "like a .txt list (default: found by name; needed when several columns "
                                            "could hold paths)", None)
    id_column: str | None = _option(RUN, "a Parquet input's image id column ('image.path': the path field of a Hugging "
                                         "Face image struct; default: image_id/id/path/filename, else the struct's "
                                         "path where every row has its own, else row numbers)", None)
    storage_options: dict[str, Any] = _option(RUN, "JSON dict passed to fsspec (e.g. endpoint settings)",
                                              factory=dict, parse=_storage_options)

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
        for name, valid in (("non_square", NON_SQUARE), ("executor", EXECUTORS), ("precision", PRECISIONS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(valid)}, "
                                  f"got '{getattr(self, name)}'")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be auto, cpu or cuda, got '{self.device}'")
        self.selection()  # malformed --channels/--times fail here, before any work
        if not isinstance(self.berg_selection, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in self.berg_selection.items()):
            raise ConfigError("--selection must be a JSON object mapping model ids or globs to BERG selection dicts, "
                              "e.g. '{\"meg/*\": {\"region\": [\"Occipital\"]}, \"utah_array/*\": {\"roi\": [\"V4\"]}}'")
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

    def identity(self) -> dict[str, Any]:
        """What defines the output's content (the ``JOB`` options): a rerun must match it to resume."""
        job = {f.name for f in fields(self) if f.metadata["part"] == JOB}
        return {k: v for k, v in self.to_json().items() if k in job}

    @staticmethod
    def recorded_identity(job: Mapping[str, Any]) -> dict[str, Any]:
        """The identity a ``_job.json`` recorded, with the options an earlier ned-ray did not have
        (``store``, ``alexnet_weights``) at their defaults: such an output still resumes."""
        recorded = dict(job.get("identity") or {})
        if not recorded:
            return {}
        defaults = {f.name: f.default for f in fields(EncodeConfig) if f.metadata["part"] == JOB and f.default is not MISSING}
        return {**defaults, **recorded}

    def selection(self) -> Selection:
        """The response selection of NED's models (channels, times, voxels) this job keeps."""
        return Selection.parse(self.channels, self.times, self.min_ncsnr)


def _flag(f: Field) -> str:
    return "--" + (f.metadata["flag"] or f.name).replace("_", "-")


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    """The encode flags, one per :class:`EncodeConfig` field, shared by ``ned-ray encode`` and ``jobs/encode.py``."""
    for f in fields(EncodeConfig):
        meta, kwargs = f.metadata, {"dest": f.name, "help": f.metadata["help"]}
        if f.default is MISSING and f.default_factory is MISSING:
            kwargs["required"] = True
        elif isinstance(f.default, bool):
            kwargs["action"] = "store_true"
        else:
            kwargs["default"] = None if f.default is MISSING else f.default  # a factory's default: made later
            kwargs["type"] = meta["type"] or (type(f.default) if f.default not in (None, MISSING) and not meta["parse"]
                                              else str)
            if meta["choices"]:
                kwargs["choices"] = list(meta["choices"])
        parser.add_argument(_flag(f), **kwargs)


def config_from_args(args: argparse.Namespace) -> EncodeConfig:
    """Build the config from parsed :func:`add_encode_arguments` flags (flags not given keep the defaults)."""
    values = {}
    for f in fields(EncodeConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = f.metadata["parse"](value) if f.metadata["parse"] and isinstance(value, str) else value
    return EncodeConfig(**values)
