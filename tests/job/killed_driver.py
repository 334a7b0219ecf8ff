"""A ``ned-ray encode`` process that is SIGKILLed at a chosen point (test fault injection, not the product):

    python -m tests.job.killed_driver POINT EXECUTOR -- ARGS...     (ARGS: ned-ray encode's, after "encode")

POINT
  committing   as the commit marker of piece ``part-00002`` is about to be written: its data files are
               there, its marker is not (in process: this process; on Ray Data: the actor or task that
               commits kills this driver, then waits to die with it)
  finalizing   as ``_manifest.json`` is about to be written (``images.parquet`` is written)
  none         not at all (the test kills it from outside, while it encodes)
EXECUTOR
  local        the in-process executor
  ray          Ray Data on a Ray instance this process starts (as the job would), with a worker hook
               for ``committing``
"""

from __future__ import annotations

import os
import signal
import sys

DRIVER = "NED_RAY_TEST_DRIVER_PID"
PIECE = "part-00002"


def kill_driver_before_marker(piece: str = PIECE):
    """A Ray worker setup hook: the first marker of ``piece`` kills the driver (pickled by value)."""

    def hook() -> None:
        import os
        import signal
        import time

        from ned_ray.job import sink

        write = sink.write_marker

        def write_marker(fs, root, key, name, record):
            if name == piece:
                os.kill(int(os.environ[DRIVER]), signal.SIGKILL)
                time.sleep(600)  # this worker dies with the driver's raylet
            return write(fs, root, key, name, record)

        sink.write_marker = write_marker

    return hook


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    point, executor, separator, *args = argv
    assert separator == "--" and point in ("committing", "finalizing", "none") and executor in ("local", "ray")
    from ned_ray.job import sink
    from ned_ray.job.commit import finish
    from ned_ray.output.layout import MANIFEST

    if point == "committing" and executor == "local":
        write = sink.write_marker
        sink.write_marker = lambda fs, root, key, name, record: _die() if name == PIECE else write(fs, root, key, name, record)
    if point == "finalizing":
        write_bytes = finish.write_bytes
        finish.write_bytes = lambda fs, path, data: _die() if path.endswith(MANIFEST) else write_bytes(fs, path, data)
    if executor == "ray":
        import ray

        os.environ[DRIVER] = str(os.getpid())
        hook = kill_driver_before_marker() if point == "committing" else None
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": hook} if hook else None)
    from ned_ray.cli import main as cli_main

    return cli_main(["encode", *args, "--executor", executor])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
