"""The ``ned-ray`` command line.

    ned-ray make-demo-models DIR          write small NED-format demo models (random, untrained)
    ned-ray models NED_DIR [--json]       list the models a NED directory holds
    ned-ray encode --ned-dir D --images I --models SPEC --output O    the Ray Data encode job
    ned-ray demo [--workdir .demo]        demo models + built-in photos -> the encode job

Expected failures (a missing file, an unknown model id, bad input) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence


from .ids import UnknownModelError
from .models.group import ModelLoadError
from .job.config import add_encode_arguments
from .nedfmt import MissingFileError, NedDir
from .safeload import UnsafePickleError

EXPECTED_ERRORS = (MissingFileError, UnknownModelError, UnsafePickleError, ValueError, TypeError, OSError, ModelLoadError)


def _cmd_make_demo_models(args: argparse.Namespace) -> int:
    from .demo import make_demo_models

    ned = make_demo_models(args.dir, seed=args.seed)
    print(f"wrote {len(ned.catalogue)} demo models (random, NOT trained) to {args.dir}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    ned = NedDir(args.ned_dir)
    rows = []
    for mid, entry in ned.catalogue.items():
        rows.append({"id": str(mid), "modality": mid.modality, "subject": mid.subject, "roi": mid.roi,
                     "format": entry.format, "files": list(entry.weights)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(row["id"])
        print(f"{len(rows)} models in {args.ned_dir}", file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The README's demo: demo models + built-in photographs as files -> the Ray encode job."""
    from .demo import make_demo_models, write_demo_images
    from .job.config import EncodeConfig
    from .job.pipeline import run_encode
    from .output import open_output

    work = Path(args.workdir)
    ned_dir, images, out = work / "ned_dir", work / "images", work / "out"
    if not (ned_dir / "encoding_models").is_dir():
        make_demo_models(str(ned_dir))
    if not images.is_dir():
        write_demo_images(images)
    config = EncodeConfig(ned_dir=str(ned_dir), images=str(images), models="all", output=str(out),
                          device=args.device, formats=("parquet", "npy"), overwrite=True)
    summary = run_encode(config)
    print(format_summary(summary, str(out)))
    result = open_output(str(out))
    for model in result.models:
        index, values = result.responses(model)
        print(f"  {model:40s} {str(values.shape):20s} mean {values.mean():+.3f}  sd {values.std():.3f}")
    print("demo models are random and untrained: the numbers show the pipeline, not a brain.")
    print(f"read them back: python -c \"import ned_ray; print(ned_ray.open_output('{out}').models)\"")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from .job.config import config_from_args
    from .job.pipeline import run_encode

    summary = run_encode(config_from_args(args))
    print(format_summary(summary, args.output))
    return 0


def format_summary(summary: dict, output: str) -> str:
    """A few lines a person reads after a job."""
    run, images = summary["run"], summary["images"]
    lines = [f"wrote {output}: {images['total']} images ({images['ok']} ok, {images['error']} errors) x "
             f"{len(summary['models'])} models",
             f"this run encoded {run['encoded_images']} images (skipped {run['skipped_images']} already committed) in "
             f"{run['seconds']:.1f}s = {run['images_per_second']:.2f} images/s"]
    if images["error"]:
        lines.append(f"errors are listed in {output}/images.parquet (status='error')")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ned-ray", description="In-silico brain responses from NED encoding models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-demo-models", help="write small NED-format demo models (random weights)",
                       epilog="example: ned-ray make-demo-models .demo/ned_dir")
    p.add_argument("dir", help="output directory (local path or fsspec URL)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_demo_models)

    p = sub.add_parser("models", help="list the models a NED directory holds",
                       epilog="example: ned-ray models /data/neural_encoding_dataset --json")
    p.add_argument("ned_dir", help="the neural_encoding_dataset folder (local path or s3://, gs://, ...)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("encode", help="encode an image set with many models (a Ray Data job)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  ned-ray encode --ned-dir .demo/ned_dir --images .demo/images --models all --output out/\n"
                              "  ned-ray encode --ned-dir s3://bucket/neural_encoding_dataset --images gs://bucket/stimuli/ \\\n"
                              "      --models 'fmri/nsd/fwrf/sub-0*/V1,eeg/*' --output s3://bucket/responses/ --format parquet,npy")
    add_encode_arguments(p)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("demo", help="run the encode job on demo models and built-in photos (no downloads)",
                       epilog="example: ned-ray demo --workdir .demo")
    p.add_argument("--workdir", default=".demo")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED_ERRORS as exc:
        print(f"ned-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
