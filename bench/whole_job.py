"""Whole processes, side by side: the `ned-ray encode` job vs the same models in one Python process
vs NED's API once per model (run by hand; issue 13).

Each mode is a fresh process started by this script, timed from its start to its exit (imports, Ray's
start, model loading, decoding the files and writing the responses included), while a sampler reads
the memory of the process and of everything it started (Ray's GCS, raylet, workers) every 0.5 s:

* PSS (proportional set size): each page divided among the processes that map it, so Ray's object
  store (shared memory) and shared libraries count once. This is the job's real footprint.
* RSS summed over the processes: counts a shared page once per process that maps it (an upper bound).

Modes (alternating within each repeat; medians of --repeats):

* ``job``: ``ned-ray encode --ned-dir D --images F --models M --output O`` (a fresh output each run),
  as a user runs it (``--executor auto``: in this process for small jobs on one machine).
* ``job-ray``: the same with ``--executor ray`` (Ray Data on a local Ray instance it starts);
  ``job-local``: with ``--executor local`` (in this process whatever the size).
* ``in-process``: one Python process: ``ModelGroup`` over the models, the files decoded and resized by
  ned-ray's own functions in batches of 100, each batch's responses saved as .npy (streamed, never all
  held): what a user would write by hand with the library.
* ``api`` (``--api``): NED's API: decode the files once, then per model ``get_encoding_model`` +
  ``encode`` + ``np.save`` (NED's batches of 100), as NED's tutorials loop over subjects.

    python bench/whole_job.py --suite eeg --images 200 --repeats 3 --api
    python bench/whole_job.py --suite fmri --images 100 --repeats 3
    python bench/whole_job.py --suite fmri-v1 --images 5000 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = {"eeg": ("eeg", "eeg/*"), "fmri": ("fmri", "fmri/nsd/fwrf/sub-01/*"),
          "fmri-v1": ("fmri", "fmri/nsd/fwrf/sub-01/V1")}  # suite: (model folder, --models)


# -- memory of a process tree (Linux /proc; no psutil needed) ---------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree(root: int) -> list[int]:
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in bytes of one process."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


class TreeMemory(threading.Thread):
    """Peak PSS and summed RSS of a process and all its descendants, sampled every 0.5 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.pss, self.rss, self.processes, self.running = pid, 0, 0, 0, True

    def run(self) -> None:
        while self.running:
            pids = _tree(self.pid)
            sizes = [_rollup(p) for p in pids]
            self.pss = max(self.pss, sum(s[0] for s in sizes))
            self.rss = max(self.rss, sum(s[1] for s in sizes))
            self.processes = max(self.processes, len(pids))
            time.sleep(0.5)  # reading smaps of GB-sized processes costs CPU: keep it rare


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int, int]:
    """(seconds, peak PSS, peak summed RSS, most processes) of one command run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeMemory(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    elapsed = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return elapsed, sampler.pss, sampler.rss, sampler.processes


# -- the two hand-written references (run as children of this script) ---------------------------------
def _decoded(files: list[str]):
    import numpy as np

    from ned_ray.job.decode import decode_image

    return np.stack([decode_image(Path(f).read_bytes())[0] for f in files]).transpose(0, 3, 1, 2)


def in_process(ned_dir: str, models: str, folder: str, out: str) -> None:
    """ModelGroup over all models; files decoded in batches of 100; responses saved per batch."""
    import numpy as np

    from ned_ray import ModelGroup
    from ned_ray.ids import select
    from ned_ray.modeldir import NedDir

    ned = NedDir(ned_dir)
    group = ModelGroup(ned, select(list(ned.catalogue), models), "cpu")
    files = sorted(str(p) for p in Path(folder).iterdir())
    for start in range(0, len(files), 100):
        responses = group.encode(_decoded(files[start:start + 100]))
        for mid, values in responses.items():
            path = Path(out) / str(mid) / f"{start:08d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, values)


def api(ned_dir: str, models: str, folder: str, out: str) -> None:
    """NED's API, one model at a time, on the files decoded once."""
    import numpy as np

    from ned_ray import NED
    from ned_ray.ids import select

    ned = NED(ned_dir)
    images = _decoded(sorted(str(p) for p in Path(folder).iterdir()))
    for mid in select(list(ned.directory.catalogue), models):
        model = ned.get_encoding_model(mid.modality, mid.train_dataset, mid.model, mid.subject, mid.roi, device="cpu")
        path = Path(out) / f"{str(mid).replace('/', '_')}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, ned.encode(model, images, return_metadata=False))
        del model


# -- the comparison -----------------------------------------------------------------------------------
def build(root: Path, suite: str, images: int) -> tuple[Path, Path]:
    """Real-size models (random weights) and ``images`` photographs of 425 px, reused when present."""
    ned, folder = root / SUITES[suite][0], root / f"images{images}"
    sys.path.insert(0, str(HERE))
    if not (ned / ".complete").exists():
        from realsize import build_eeg, build_fmri  # imports torch: only when building


        shutil.rmtree(ned, ignore_errors=True)
        build_eeg(ned, 10) if SUITES[suite][0] == "eeg" else build_fmri(ned, 1)
        (ned / ".complete").touch()
    if not folder.is_dir() or len(list(folder.iterdir())) != images:
        from compare import make_images

        shutil.rmtree(folder, ignore_errors=True)
        make_images(folder, images)
    return ned, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="eeg")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["job", "job-ray", "in-process"],
                        choices=["job", "job-ray", "job-local", "in-process", "api"])
    parser.add_argument("--api", action="store_true", help="also run NED's API once per model")
    parser.add_argument("--root", default="/tmp/ned-ray-bench", help="where models and images are built (kept)")
    parser.add_argument("--job-args", default="", help="extra arguments for ned-ray encode")
    parser.add_argument("--child", choices=["in-process", "api"], help=argparse.SUPPRESS)
    parser.add_argument("--child-args", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (in_process if args.child == "in-process" else api)(*args.child_args)
        return
    root = Path(args.root)
    ned, folder = build(root, args.suite, args.images)
    modes = args.modes + (["api"] if args.api and "api" not in args.modes else [])
    python, cli = sys.executable, str(Path(sys.executable).parent / "ned-ray")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    results: dict[str, list[tuple[float, int, int, int]]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes:
            out = root / "out" / f"{mode}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            if mode.startswith("job"):
                cmd = [cli, "encode", "--ned-dir", str(ned), "--images", str(folder), "--models", SUITES[args.suite][1],
                       "--output", str(out), "--quiet", *args.job_args.split()] + (["--executor", mode[4:]] if mode != "job" else [])
            else:
                cmd = [python, __file__, "--child", mode, "--child-args", str(ned), SUITES[args.suite][1], str(folder), str(out)]
            results[mode].append(measure(cmd, env))
            shutil.rmtree(out, ignore_errors=True)
            t, pss, rss, n = results[mode][-1]
            print(f"repeat {r} {mode:10s} {t:7.1f}s  peak PSS {pss / 2**30:5.2f} GiB  summed RSS {rss / 2**30:5.2f} GiB  "
                  f"{n} processes", flush=True)
    print(f"\nsuite {args.suite}, {args.images} images of 425 px, {os.cpu_count()} CPUs; medians of {args.repeats}:")
    med = {m: [statistics.median(x[i] for x in v) for i in range(4)] for m, v in results.items()}
    for mode, (t, pss, rss, n) in med.items():
        runs = ", ".join(f"{x[0]:.1f}" for x in results[mode])
        print(f"  {mode:10s} {t:7.1f}s ({args.images / t:6.2f} images/s)  runs {runs}  peak PSS {pss / 2**30:.2f} GiB  "
              f"summed RSS {rss / 2**30:.2f} GiB  processes {n:.0f}")
    for job in ("job", "job-ray", "job-local"):
        if job in med and "in-process" in med:
            print(f"  {job} / in-process: time {med[job][0] / med['in-process'][0]:.2f}x, peak PSS "
                  f"{med[job][1] / med['in-process'][1]:.2f}x, summed RSS {med[job][2] / med['in-process'][2]:.2f}x")
        if job in med and "api" in med:
            print(f"  api / {job}: {med['api'][0] / med[job][0]:.2f}x")


if __name__ == "__main__":
    main()
