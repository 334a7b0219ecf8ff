"""Entry point for `ray job submit`: the same flags as `ned-ray encode`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/encode.py --ned-dir s3://bucket/neural_encoding_dataset --images s3://bucket/stimuli/ \
        --models all --output s3://bucket/responses/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when ned-ray is not installed

from ned_ray.cli import run_command  # noqa: E402
from ned_ray.job.options import add_encode_arguments, config_from_args  # noqa: E402
from ned_ray.job.run import plan_encode, run_encode  # noqa: E402
from ned_ray.summaries import format_plan, format_summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ned-ray encode job (for ray job submit)")
    add_encode_arguments(parser)
    parser.add_argument("--summary-json", action="store_true", help="print the full summary as JSON")
    parser.add_argument("--dry-run", action="store_true", help="print the plan for this cluster and exit")
    parser.add_argument("--progress-every", type=float, default=30.0,
                        help="seconds between progress lines in the job's log (0: none)")
    args = parser.parse_args(argv)
    return run_command("encode", _run, args)


def _run(args: argparse.Namespace) -> int:
    if args.dry_run:
        print(format_plan(plan_encode(config_from_args(args))))
        return 0
    summary = run_encode(config_from_args(args), progress=args.progress_every or None)
    print(json.dumps(summary, indent=2, default=str) if args.summary_json else format_summary(summary, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
