"""ned-ray's encoders as steps of a user's own Ray Data pipeline.

    ds (the user's rows: image bytes, uint8 arrays or paths, and their own columns)
       ──decode_images (CPU tasks)──> + status, error, width, height, the models' uint8 inputs
       ──PoolColumns per planned pool (actor pools; models loaded once per actor)──> + one column per model

:func:`encode` plans the pools as ``ned-ray encode`` does (:mod:`ned_ray.job.plan`: models per actor,
GPU shares, actors, rows per call) for the connected cluster; :class:`Encoder` is one callable class
doing both steps, for a ``map_batches`` of the user's own. Both run the job's code
(:func:`~ned_ray.job.decode.decode_image`, :class:`~ned_ray.job.stages.PoolModels`): the same
decoding, preprocessing and numbers. A row whose image cannot be read or decoded is kept with
``status="error"`` (or ``"skipped"``) and its reason, its responses NaN; no row is dropped.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import ray
import ray.data

from ..errors import ConfigError, DeviceError
from ..families import BY_INPUT
from ..ids import ModelId
from ..job.cluster import ClusterShape
from ..job.decode import decode_image
from ..job.executors.ray import pool_arguments
from ..job.options import EncodeConfig
from ..job.plan import DECODE_CPUS, PoolPlan, make_plan
from ..job.run import resolve_selections
from ..job.stages import PoolModels, model_inputs, node_address
from ..modeldir import open_ned
from ..models.group import weights_bytes
from ..storage import filesystem

__all__ = ["encode", "Encoder", "decode_images", "PoolColumns", "STATUS_COLUMNS", "code_column"]

STATUS_COLUMNS = ("status", "error", "width", "height")  # added to every row
# the image column when none is named: read_images, Hugging Face datasets; read_binary_files; WebDataset
IMAGE_COLUMN_NAMES = ("image", "bytes", "jpg", "jpeg", "png", "webp")
_INPUT = "__ned_ray_input_"  # the models' uint8 inputs between the two steps (dropped by the last pool)


def code_column(model: ModelId | str) -> str:
    """The column of a model's codes (``store="codes"`` or ``"both"``): ``<model id>:codes``."""
    return f"{model}:codes"


def _config(ned_dir: str, models: str | Sequence[str], **options: Any) -> EncodeConfig:
    """The job's options for these arguments (``output`` and ``images`` have no meaning here)."""
    names = models if isinstance(models, str) else ",".join(map(str, models))
    return EncodeConfig(ned_dir=str(ned_dir), images="<a Ray Dataset>", models=names, output="",
                        **{k: v for k, v in options.items() if v is not None})


def _read_uri(uri: str, storage_options: dict[str, Any]) -> bytes | Exception:
    try:
        fs, path = filesystem(uri, storage_options)
        return fs.cat_file(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable image is that row's error
        return exc


def _array(value: np.ndarray) -> np.ndarray | Exception:
    """A decoded image as the (3, H, W) uint8 array :func:`decode_image` reads: (H, W), (H, W, 1|3|4)
    as Ray Data's ``read_images`` gives (alpha dropped), or already (3, H, W)."""
    if value.dtype != np.uint8:
        return ValueError(f"image array of dtype {value.dtype}: give uint8 pixel values (0-255)")
    if value.ndim == 2:
        return np.repeat(value[None], 3, axis=0)
    if value.ndim == 3 and value.shape[2] in (1, 3, 4):
        hwc = np.repeat(value, 3, axis=2) if value.shape[2] == 1 else value[:, :, :3]
        return hwc.transpose(2, 0, 1)
    if value.ndim == 3 and value.shape[0] == 3:
        return value
    return ValueError(f"image array of shape {value.shape}: give (H, W), (H, W, 3) or (3, H, W) uint8")


def _raw(value: Any, storage_options: dict[str, Any]) -> bytes | np.ndarray | Exception:
    """One value of the image column as a raw item for :func:`decode_image`: encoded bytes, a uint8
    array, a path/URL (read with fsspec), or a Hugging Face image struct ({"bytes", "path"})."""
    if isinstance(value, dict):  # Hugging Face's Image feature: bytes, else the file at its path
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        value = value.get("path")
    if value is None or (isinstance(value, float) and np.isnan(value)):  # null (NaN where Ray or pandas fill one)
        return ValueError("the image column is empty (null) in this row")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype != object:
        return _array(value)
    if isinstance(value, str):
        return _read_uri(value, storage_options)
    raise ConfigError(f"the image column holds {type(value).__name__} values; give encoded image bytes, uint8 "
                      "arrays (as ray.data.read_images gives) or paths/URLs")


def decode_images(batch: dict[str, np.ndarray], *, image_column: str | None, kinds: Sequence[str], non_square: str,
                  max_pixels: int, storage_options: dict[str, Any] | None = None, id_column: str | None = None,
                  keep_images: bool = False) -> dict[str, np.ndarray]:
    """A batch of the user's rows (numpy format) with its images decoded: ``status``, ``error``,
    ``width``, ``height`` and the uint8 inputs of the models ``kinds`` added; ``image_id`` from
    ``id_column`` if given; the image column itself left out unless ``keep_images``."""
    image_column = image_column or next((c for c in IMAGE_COLUMN_NAMES if c in batch), None)
    if image_column not in batch:
        named = f"image_column '{image_column}' is not" if image_column else \
            f"no image_column was given and none of {', '.join(IMAGE_COLUMN_NAMES)} is"
        raise ConfigError(f"{named} a column of the dataset; its columns: {', '.join(map(str, batch))}")
    if id_column is not None and id_column not in batch:
        raise ConfigError(f"id_column '{id_column}' is not a column of the dataset; its columns: {', '.join(map(str, batch))}")
    clash = [c for c in (*STATUS_COLUMNS, *(["image_id"] if id_column else [])) if c in batch and c != id_column]
    if clash:
        raise ConfigError(f"the dataset already has column(s) {', '.join(clash)}, which encode adds; rename them "
                          "first (Dataset.rename_columns)")
    values = batch[image_column]
    n = len(values)
    status, errors = np.empty(n, object), np.empty(n, object)
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    inputs = {k: np.zeros((n, 3, BY_INPUT[k].side, BY_INPUT[k].side), np.uint8) for k in kinds}
    for i in range(n):
        rgb, error, width[i], height[i] = decode_image(_raw(values[i], storage_options or {}), non_square, max_pixels)
        status[i], errors[i] = ("ok" if rgb is not None else "error"), error
        if rgb is not None:
            for kind, value in model_inputs(rgb, tuple(kinds)).items():
                inputs[kind][i] = value
    out = {k: v for k, v in batch.items() if keep_images or k != image_column}
    if id_column is not None:
        out["image_id"] = np.asarray([str(x) for x in batch[id_column]], object)
    out.update(status=status, error=errors, width=width, height=height)
    out.update({_INPUT + k: v for k, v in inputs.items()})
    return out


def _columns(models: PoolModels, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch`` with each model's responses (NaN on rows that are not ok) and codes added."""
    n = len(batch["status"])
    ok = np.flatnonzero(batch["status"] == "ok")
    inputs = {k: batch[_INPUT + k] for k in models.group.inputs}
    results, codes, _ = models.compute(inputs, ok)
    for found, name in ((results, str), (codes, code_column)):
        for mid, values in found.items():
            column = np.full((n, *values.shape[1:]), np.nan, np.float32)
            column[ok] = values
            batch[name(mid)] = column
    return batch


class PoolColumns:
    """One planned pool's actor in :func:`encode`: its models loaded once; each call adds their columns."""

    def __init__(self, config: EncodeConfig, pool: PoolPlan, selections: dict[str, dict[str, Any]]) -> None:
        self.models = PoolModels(config, pool, selections, node_address())
        self.drop = [_INPUT + k for k in pool.drop]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = _columns(self.models, batch)
        for column in self.drop:
            batch.pop(column, None)
        return batch


def _selections(config: EncodeConfig) -> tuple[list[ModelId], dict[str, dict[str, Any]], Any]:
    """The models ``config`` names and their selections, checked (a bad id or selection fails here)."""
    ned = open_ned(config.ned_dir, config.storage_options)
    models = ned.select(config.models)
    metadata = {m: ned.metadata(m) for m in models}
    return models, resolve_selections(config, ned, models, metadata), ned


class Encoder:
    """ned-ray's models as one callable class for a ``map_batches`` of your own: decodes the image
    column and adds one column per model (and ``status``, ``error``, ``width``, ``height``).

        ds.map_batches(Encoder, fn_constructor_kwargs={"ned_dir": NED, "models": ["eeg/*"]},
                       concurrency=4, num_gpus=1, batch_size=256)

    Keyword arguments as :func:`encode`'s. The models load once per actor, on its GPU when Ray gave
    it one (``device="auto"``). :func:`encode` plans the pools and decodes on CPU tasks instead."""

    def __init__(self, ned_dir: str, models: str | Sequence[str], *, image_column: str | None = None,
                 id_column: str | None = None, keep_images: bool = False, device: str = "auto", **options: Any) -> None:
        import torch

        config = _config(ned_dir, models, device=device, **options)
        ids, selections, _ = _selections(config)
        planned = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
        pool = PoolPlan(name="encoder", models=[str(m) for m in ids], inputs=[], drop=[], device=planned, min_actors=1,
                        max_actors=1, initial_actors=1, gpus_per_actor=0.0, cpus_per_actor=0.0,
                        cpu_threads=int(config.cpu_threads), batch_rows=0, max_tasks_in_flight=1, concurrent_calls=1,
                        memory_share=1.0, weights_bytes=0, cost=0.0)
        self.models = PoolModels(config, pool, selections, node_address())
        self.decode = {"image_column": image_column, "kinds": self.models.group.inputs, "non_square": config.non_square,
                       "max_pixels": config.max_pixels, "storage_options": config.storage_options,
                       "id_column": id_column, "keep_images": keep_images}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = _columns(self.models, decode_images(batch, **self.decode))
        for kind in self.models.group.inputs:
            batch.pop(_INPUT + kind)
        return batch


def encode(ds: ray.data.Dataset, *, ned_dir: str, models: str | Sequence[str], image_column: str | None = None,
           id_column: str | None = None, keep_images: bool = False, store: str = "responses", device: str = "auto",
           precision: str = "fp32", rows_per_call: int = 256, storage_options: dict[str, Any] | None = None,
           **options: Any) -> ray.data.Dataset:
    """``ds`` with ned-ray's responses added: one float32 tensor column per model, named by its id
    (``store="codes"``/``"both"``: the ViT-B/32 models' codes in ``<id>:codes``), and ``status``,
    ``error``, ``width``, ``height`` per row; ``image_id`` when ``id_column`` names one.

    ``image_column`` (default: the first of ``image``, ``bytes``, ``jpg``, ``jpeg``, ``png``, ``webp``
    the rows have) holds encoded image bytes (``read_binary_files``, Parquet, WebDataset), uint8
    arrays (``read_images``), Hugging Face image structs, or paths/URLs read with fsspec
    (``storage_options`` as ``ned-ray encode --storage-options``). The image column is left out of the
    result unless ``keep_images``. Other keyword arguments are ``ned-ray encode``'s options of the same
    names (``batch_size``, ``non_square``, ``max_pixels``, ``channels``, ``times``, ``min_ncsnr``,
    ``berg_selection``, ``vit_weights``, ``alexnet_weights``, ``model_cache``, ``actors_per_group``,
    ``gpus_per_actor``, ``fmri_models_per_actor``, ``cpu_threads``). The pools are planned as the
    encode job plans them for the connected Ray cluster (started here if none is); ``rows_per_call``:
    rows per decode task and per actor call. Lazy, like every Dataset transform: nothing runs until
    the result is consumed or written.
    """
    config = _config(ned_dir, models, store=store, device=device, precision=precision, shard_size=rows_per_call,
                     storage_options=dict(storage_options or {}), **options)
    ids, selections, ned = _selections(config)
    if not ray.is_initialized():
        ray.init()
    sizes, shared = weights_bytes(ned, ids, config.vit_weights, config.alexnet_weights)
    plan = make_plan(config, ids, ClusterShape.from_ray(), sizes, shared, n_shards=1)
    if plan.wait_for_gpus and not plan.cluster.gpus_max:
        raise DeviceError(f"device='cuda': the Ray cluster has no GPU and cannot get one: {plan.cluster.describe()}; "
                          "join a cluster with GPUs, or use device='auto' or 'cpu'")
    kinds = tuple(k for k in BY_INPUT if any(k in p.inputs for p in plan.pools))
    ds = ds.map_batches(decode_images, batch_size=rows_per_call, batch_format="numpy", num_cpus=DECODE_CPUS,
                        fn_kwargs={"image_column": image_column, "kinds": kinds, "non_square": config.non_square,
                                   "max_pixels": config.max_pixels, "storage_options": config.storage_options,
                                   "id_column": id_column, "keep_images": keep_images})
    for pool in plan.pools:
        ds = ds.map_batches(PoolColumns, fn_constructor_args=(config, pool, {m: selections[m] for m in pool.models}),
                            batch_format="numpy", **pool_arguments(pool))
    return ds
