"""The ``ned-ray`` command line.

    ned-ray make-demo-models DIR          write small NED- and BERG-format demo models (random, untrained)
    ned-ray models NED_DIR [--json]       list the models a NED directory holds
    ned-ray encode --ned-dir D --images I --models SPEC --output O    the Ray Data encode job
    ned-ray demo [--workdir .demo]        demo models + built-in photos -> the encode job
    ned-ray inspect OUT [--json]          models, rows, errors and options of an output
    ned-ray plot OUT [--to DIR]           PNG figures of an output

Expected failures (a missing file, an unknown model id, bad input) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from .errors import ConfigError, JobInterrupted, NedRayError, OutputError
from .families import BY_KEY
from .job.options import add_encode_arguments
from .modeldir import NedDir
from .summaries import format_plan, format_summary, model_summary, output_summary, plan_json
from .text import printable


def _cmd_make_demo_models(args: argparse.Namespace) -> int:
    from .demo import make_demo_models

    ned = make_demo_models(args.dir, seed=args.seed, berg=not args.ned_only)
    print(f"wrote {len(ned.catalogue)} demo models (random, NOT trained) to {args.dir}")
    return 0


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: columns are (key, header)."""
    return tabulate([[r[k] for k, _ in columns] for r in rows], headers=[h for _, h in columns], tablefmt="plain",
                    disable_numparse=True, missingval="-")


def _cmd_models(args: argparse.Namespace) -> int:
    ned = NedDir(args.ned_dir)
    rows = model_summary(ned)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        row["outputs"] = "x".join(map(str, row["response_shape"])) if row["response_shape"] else "-"
        row["acc"] = "-" if row["accuracy"] is None else (
            f"{row['accuracy']:.1f}%" if row["format"] == "ned" else f"r={row['accuracy']:.3f}")
        row["state"] = "ok" if row["status"] == "ok" else f"damaged: {Path(row['missing']).name} missing"
    print(_table(rows, [("id", "model"), ("berg_id", "BERG id"), ("subject", "subject"), ("variant", "roi/hemi/split"),
                        ("outputs", "outputs per image"), ("acc", "accuracy"), ("state", "files")]))
    meanings: dict[str, dict[str, None]] = {}  # what each accuracy is -> the families it is given for
    for row in rows:
        if row["accuracy_is"]:
            meanings.setdefault(row["accuracy_is"], {})[BY_KEY[row["family"]].title] = None
    if meanings:
        print("accuracy: " + "; ".join(f"{what} ({', '.join(titles)})" for what, titles in meanings.items()), file=sys.stderr)
    damaged = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - damaged} models in {args.ned_dir}" + (
        f", {damaged} damaged (a file missing: restore it from the release)" if damaged else ""), file=sys.stderr)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .output import open_output

    info = output_summary(open_output(args.output))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    images = info["images"]
    print(f"{info['output']}: complete, {images['total']} images ({images['ok']} ok, {images['error']} errors), "
          f"{len(info['models'])} models, ned-ray {info['ned_ray_version']}")
    rows = [{**m, "shape": "x".join(map(str, m["response_shape"]))} for m in info["models"]]
    print(_table(rows, [("id", "model"), ("rows", "rows"), ("shape", "response per image")]))
    for error in info["errors"][:args.max_errors]:
        print(f"error: {printable(error['image_id'])}: {printable(error['error'])}")
    if len(info["errors"]) > args.max_errors:
        print(f"... and {len(info['errors']) - args.max_errors} more errors (--max-errors, or --json for all)")
    options = info["options"]
    print("options: " + ", ".join(f"{k}={options[k]}" for k in ("ned_dir", "images", "models", "device", "precision",
                                                                   "channels", "times", "min_ncsnr") if k in options))
    for group in info["devices"]:
        ran = ", ".join(f"{n} images on {d}" for d, n in group["ran_on"].items())
        print(f"pool {group['pool'] or group['writer']} ({len(group['models'])} models): planned on {group['planned']}, "
              f"{ran}" + (f" (nodes {', '.join(group['nodes'])})" if group["nodes"] else ""))
    precision = info["precision"]
    if precision.get("models"):
        worst = max(precision["models"].items(), key=lambda kv: kv[1]["max_deviation_over_std"] or 0)
        print(f"precision {precision['mode']}: worst deviation from fp32 {worst[1]['max_abs_deviation']:.3g} "
              f"({worst[1]['max_deviation_over_std']:.2%} of the response sd) in {worst[0]}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .output import open_output
    from .plots import TOPO_TIMES, plot_output

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    times = _seconds(args.times, "--times") if args.times else TOPO_TIMES
    if args.to is None and "://" in args.output and not args.output.startswith("file://"):
        raise ConfigError(f"figures are written to a local folder: give --to DIR for the output '{args.output}'")
    paths = plot_output(open_output(args.output), args.to or Path(args.output) / "plots", models, times=times)
    for path in paths:
        print(path)
    return 0


def _seconds(text: str, flag: str) -> tuple[float, ...]:
    """``0.1,0.2``: seconds, comma-separated."""
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{flag} must be seconds separated by commas (e.g. 0.1,0.2,0.3), got '{printable(text)}'")
    return values


def _cmd_export(args: argparse.Namespace) -> int:
    from .output import open_output
    from .output.exports import parse_rows

    options = {"mean": True} if args.mean else {}
    if args.mean and args.to != "mne":
        raise OutputError("--mean applies to --to mne only")
    print(open_output(args.output).export(args.model, args.to, args.dest, parse_rows(args.images), **options))
    return 0


DEMO_EXPORTS = (  # one of each kind: (model, format, file, options)
    ("fmri/nsd_fsaverage/vit_b_32/sub-01/lh", "gifti", "fsaverage_sub-01_lh.func.gii", {}),
    ("fmri/nsd_fsaverage/alexnet_untrained/sub-01/rh", "mgh", "fsaverage_alexnet_untrained_sub-01_rh.mgz", {}),
    ("fmri/things_fmri_1/vit_b_32/sub-01", "nifti", "things_fmri_sub-01.nii.gz", {}),
    ("eeg/things_eeg_2/vit_b_32/sub-01", "mne", "eeg_sub-01-epo.fif", {}),
    ("meg/things_meg_1/vit_b_32/sub-01/full", "mne", "meg_sub-01-ave.fif", {"mean": True}),
    ("utah_array/tvsd/vit_b_32/sub-F", "netcdf", "tvsd_sub-F.nc", {}),
    ("eeg/things_eeg_2/vit_b_32/sub-04", "zarr", "eeg_sub-04.zarr", {"mode": "w"}),
)


def _demo_exports(result, folder: Path) -> list[str]:
    """The demo output in each export format (``ned-ray export``), into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [result.export(model, to, str(folder / name), **options) for model, to, name, options in DEMO_EXPORTS
            if model in result.models]


def _cmd_demo(args: argparse.Namespace) -> int:
    """The README's demo: demo models + built-in photographs as files -> the Ray encode job."""
    from .demo import make_demo_models, write_demo_images
    from .job.options import EncodeConfig
    from .job.run import run_encode
    from .output import open_output

    work = Path(args.workdir)
    ned_dir, images, out = work / "ned_dir", work / "images", work / "out"
    if not (ned_dir / "encoding_models" / "modality-fmri" / "train_dataset-nsd_fsaverage" /
            "model-alexnet_untrained").is_dir():  # also when made before the BERG or AlexNet demo models
        make_demo_models(str(ned_dir), berg=True)
    if not images.is_dir():
        write_demo_images(images)
    for derived in ("plots", "exports"):  # the demo's own figures and exports, made again below
        shutil.rmtree(out / derived, ignore_errors=True)
    config = EncodeConfig(ned_dir=str(ned_dir), images=str(images), models="all", output=str(out),
                          device=args.device, formats=("parquet", "npy"), overwrite=True, executor="ray")
    summary = run_encode(config)
    print(format_summary(summary, str(out)))
    result = open_output(str(out))
    for model in result.models:
        index, values = result.responses(model)
        print(f"  {model:40s} {str(values.shape):20s} mean {values.mean():+.3f}  sd {values.std():.3f}")
    print("demo models are random and untrained: the numbers show the pipeline, not a brain.")
    try:
        from .plots import plot_output

        print("figures: " + ", ".join(str(p) for p in plot_output(result, out / "plots")))
    except ImportError as exc:
        print(f"(no figures: {exc})")
    try:
        print("exports: " + ", ".join(_demo_exports(result, out / "exports")))
    except ImportError as exc:
        print(f"(no exports: {exc})")
    print(f"next: ned-ray inspect {out}   |   python examples/tutorial.py   |   "
          f"python -c \"import ned_ray; print(ned_ray.open_output('{out}').to_xarray('{result.models[-1]}'))\"")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from .job.options import config_from_args
    from .job.run import plan_encode, run_encode

    config = config_from_args(args)
    if args.dry_run:
        info = plan_encode(config)
        print(plan_json(info) if args.json else format_plan(info))
        return 0
    summary = run_encode(config, progress=None if args.quiet else args.progress_every)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary, args.output))
    return 0


def _command(sub, name: str, help: str, examples: list[str], func) -> argparse.ArgumentParser:
    """One subcommand, its examples shown at the end of ``--help``."""
    parser = sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="examples:\n" + "\n".join(f"  {line}" for line in examples))
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ned-ray", description="In-silico brain responses from NED encoding models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "make-demo-models", "write small NED-format demo models (random weights)",
                 ["ned-ray make-demo-models .demo/ned_dir"], _cmd_make_demo_models)
    p.add_argument("dir", help="output directory (local path or fsspec URL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ned-only", action="store_true", help="only NED's families (no BERG demo models)")

    p = _command(sub, "models", "list the models a NED directory holds, with voxel counts and accuracy",
                 ["ned-ray models .demo/ned_dir",
                  "ned-ray models s3://bucket/neural_encoding_dataset --json > models.json"], _cmd_models)
    p.add_argument("ned_dir", help="the neural_encoding_dataset folder (local path or s3://, gs://, ...)")
    p.add_argument("--json", action="store_true", help="machine-readable output (one object per model)")

    p = _command(sub, "encode", "encode an image set with many models (a Ray Data job)",
                 ["ned-ray encode --ned-dir .demo/ned_dir --images .demo/images --models all --output out/",
                  "ned-ray encode --ned-dir .demo/ned_dir --images my_photos/ --models 'eeg/*' \\",
                  "    --channels O1,Oz,O2 --times 0.05:0.3 --output eeg_out/",
                  "ned-ray encode --ned-dir s3://bucket/neural_encoding_dataset --images gs://bucket/stimuli/ \\",
                  "    --models 'fmri/nsd/fwrf/sub-0*/V1,eeg/*' --min-ncsnr 0.2 --output s3://bucket/responses/",
                  "ned-ray encode --ned-dir D --images I --models all --output O --dry-run --cluster '16cpu,0-8x8cpu+1gpu:24GB'"],
                 _cmd_encode)
    add_encode_arguments(p)
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (pools, actors, GPUs and CPUs per actor, batch rows) and exit; with "
                        "--cluster SPEC, for a described cluster")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON; else the summary as JSON")

    p = _command(sub, "inspect", "what an output holds: models, rows, errors, options",
                 ["ned-ray inspect .demo/out", "ned-ray inspect s3://bucket/responses --json"], _cmd_inspect)
    p.add_argument("output", help="an encode job's output folder (path or fsspec URL)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--max-errors", type=int, default=10, help="image errors to list (default 10)")

    p = _command(sub, "plot", "PNG figures of an output: EEG time courses, fMRI distributions, a heatmap",
                 ["ned-ray plot .demo/out            # writes .demo/out/plots/*.png",
                  "ned-ray plot out/ --to figures/ --models 'fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01'"],
                 _cmd_plot)
    p.add_argument("output", help="an encode job's output folder")
    p.add_argument("--to", default=None, help="folder for the PNGs (default OUTPUT/plots; local)")
    p.add_argument("--models", default=None, help="comma-separated model ids (default: all in the output)")
    p.add_argument("--times", default=None, help="EEG/MEG topographies at these times in seconds (default 0.1,0.2,0.3,0.4)")

    p = _command(sub, "export", "one model of an output as GIFTI, MGH, NIfTI, MNE (FIF), netCDF or Zarr",
                 ["ned-ray export out/ --model fmri/nsd_fsaverage/vit_b_32/sub-01/lh --to gifti --dest lh.func.gii",
                  "ned-ray export out/ --model eeg/things_eeg_2/vit_b_32/sub-01 --to mne --images 0:100 --dest eeg-epo.fif",
                  "ned-ray export out/ --model meg/things_meg_1/vit_b_32/sub-01/full --to mne --mean --dest meg-ave.fif",
                  "ned-ray export out/ --model fmri/things_fmri_1/vit_b_32/sub-01 --to nifti --dest sub-01.nii.gz",
                  "ned-ray export out/ --model utah_array/tvsd/vit_b_32/sub-F --to zarr --dest s3://bucket/tvsd.zarr"],
                 _cmd_export)
    p.add_argument("output", help="an encode job's output folder (local or fsspec URL)")
    p.add_argument("--model", required=True, help="the model id to export")
    p.add_argument("--to", required=True, choices=["gifti", "mgh", "nifti", "mne", "netcdf", "zarr"],
                   help="gifti/mgh: fsaverage; nifti: NSD fwrf, THINGS-fMRI; mne: EEG, MEG, Utah arrays; netcdf/zarr: any")
    p.add_argument("--dest", required=True, help="the file (or Zarr store) to write")
    p.add_argument("--images", default=None, help="rows to export, START:END or i,j,k in output order (default all)")
    p.add_argument("--mean", action="store_true", help="mne: one Evoked of the mean over the images")

    p = _command(sub, "demo", "run the encode job on demo models and built-in photos (no downloads)",
                 ["ned-ray demo --workdir .demo"], _cmd_demo)
    p.add_argument("--workdir", default=".demo")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def run_command(name: str, command, *args) -> int:
    """Run a command as the command line does: ned-ray's errors (:class:`~.errors.NedRayError`) are
    one line and exit 2, Ctrl-C and SIGTERM one line and 130/143 (a job says what it committed);
    anything else is a bug, and stays a traceback."""
    from .job.interrupts import sigterm_interrupts

    try:
        with sigterm_interrupts():
            return command(*args)
    except JobInterrupted as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except NedRayError as exc:  # one line, inert: a message may quote ids or paths from users' files
        print(f"{name}: error: {printable(exc)}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(f"ned-ray {args.command}", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
