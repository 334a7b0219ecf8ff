"""A Hugging Face ``datasets`` table of stimuli, deduplicated and filtered, encoded on the cluster's
GPUs by ned-ray's models, written as Parquet beside its own columns (labels, hashes).

    python examples/encode_hf_dataset.py                   # demo models + the built-in photographs
    python examples/encode_hf_dataset.py --ned-dir /data/neural_encoding_dataset \\
        --models 'fmri/nsd/fwrf/sub-0*/V1' --dataset my_stimuli/ --out s3://lab/stimuli-responses

``--dataset``: a table saved by ``datasets``' ``save_to_disk`` with an ``image`` column (its Image
feature) and a ``label`` column. Default: the built-in photographs labelled "texture" or "object",
two of them twice. Ray: the cluster of ``$RAY_ADDRESS``, else a local one (``--num-gpus N`` gives
it N logical GPUs: the GPU plan on a laptop, computed on CPU).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

TEXTURES = {"brick", "grass", "gravel"}


def demo_table(work: Path):
    """The built-in photographs as a ``datasets`` table (image, file, label), astronaut and coffee twice."""
    import datasets

    from ned_ray.demo import write_demo_images

    files = sorted(write_demo_images(work / "photos"))
    files += [f for f in files if f.stem in ("astronaut", "coffee")]
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": f.read_bytes(), "path": f.name} for f in files], "file": [f.name for f in files],
         "label": ["texture" if f.stem in TEXTURES else "object" for f in files]},
        features=datasets.Features({"image": datasets.Image(), "file": datasets.Value("string"),
                                    "label": datasets.Value("string")}))


def deduplicate(table):
    """The table without repeated images (same bytes), first copies kept; a ``sha1`` column added."""
    import datasets

    raw = table.cast_column("image", datasets.Image(decode=False))  # bytes, not decoded pictures
    hashed = raw.map(lambda row: {"sha1": hashlib.sha1(row["image"]["bytes"]).hexdigest()})
    first: dict[str, int] = {}
    for i, digest in enumerate(hashed["sha1"]):
        first.setdefault(digest, i)
    return hashed.select(sorted(first.values()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ned-dir", default=None, help="NED/BERG model folder (default: demo models)")
    parser.add_argument("--models", default="fmri/nsd/fwrf/sub-01/*,eeg/things_eeg_2/vit_b_32/sub-01")
    parser.add_argument("--dataset", default=None, help="a datasets table saved with save_to_disk")
    parser.add_argument("--keep-label", default="object", help="encode the rows with this label only")
    parser.add_argument("--out", default=".hf_example/responses", help="Parquet folder or URL")
    parser.add_argument("--workdir", default=".hf_example")
    parser.add_argument("--num-gpus", type=int, default=None, help="logical GPUs of a local Ray (a demo of the plan)")
    parser.add_argument("--cpu-threads", type=int, default=0, help="torch threads per CPU actor (0: planned)")
    args = parser.parse_args(argv)

    import datasets
    import ray

    import ned_ray.data

    work = Path(args.workdir)
    ned_dir = args.ned_dir
    if ned_dir is None:
        from ned_ray.demo import make_demo_models

        ned_dir = str(work / "ned")
        if not Path(ned_dir, "encoding_models").is_dir():
            make_demo_models(ned_dir)
    table = datasets.load_from_disk(args.dataset) if args.dataset else demo_table(work)
    unique = deduplicate(table)
    print(f"{len(table)} stimuli, {len(unique)} after removing repeated images")
    if not ray.is_initialized():
        ray.init(num_gpus=args.num_gpus)
    ds = ray.data.from_huggingface(unique).filter(lambda row: row["label"] == args.keep_label)
    ds = ned_ray.data.encode(ds, ned_dir=ned_dir, models=args.models, cpu_threads=args.cpu_threads)
    ds.write_parquet(args.out)
    written = ray.data.read_parquet(args.out)
    columns = [c for c in written.columns() if "/" in c]
    rows = written.count()
    errors = written.filter(lambda row: row["status"] != "ok").count()
    print(f"wrote {args.out}: {rows} images with label '{args.keep_label}', {errors} errors; columns: its own, sha1, "
          f"status, error, width, height and {len(columns)} models ({', '.join(columns[:3])}{', ...' if len(columns) > 3 else ''})")
    return {"rows": rows, "errors": errors, "models": columns, "unique": len(unique), "stimuli": len(table)}


if __name__ == "__main__":
    main()
