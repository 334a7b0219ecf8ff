"""Slurm's ``srun`` and ``scontrol`` for one machine, to run deploy/slurm/ned-ray.sbatch as Slurm
would on an allocation (tests/deploy/test_slurm.py): ``scontrol show hostnames node[1-2]`` expands
the node list; ``srun [-w NODE] [options] CMD...`` runs CMD here with ``SLURMD_NODENAME`` set, as a
step on NODE would (in a session of its own). Installed as two executables on PATH by the test."""

from __future__ import annotations

import os
import re
import sys


def hostnames(nodelist: str) -> list[str]:
    """Slurm's compressed node list (``node[1-2],gpu7``) expanded."""
    out = []
    for prefix, ranges, single in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,]+)", nodelist):
        if single:
            out.append(single)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            out += [f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def srun(argv: list[str]) -> None:
    node, i = os.environ.get("SLURMD_NODENAME", "node1"), 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == "-w":
            node, i = argv[i + 1], i + 2
        elif argv[i].startswith("--nodelist="):
            node, i = argv[i].split("=", 1)[1], i + 1
        else:
            i += 1 if "=" in argv[i] or argv[i] in ("--exclusive",) else 1
    os.environ["SLURMD_NODENAME"] = node
    os.setsid()  # a step runs in its own session on its node: a signal to its group stays there
    os.execvp(argv[i], argv[i:])


if __name__ == "__main__":
    tool, args = sys.argv[1], sys.argv[2:]
    if tool == "scontrol" and args[:2] == ["show", "hostnames"]:
        print("\n".join(hostnames(args[2] if len(args) > 2 else os.environ["SLURM_JOB_NODELIST"])))
    elif tool == "srun":
        srun(args)
    else:
        sys.exit(f"fake Slurm: {tool} {' '.join(args)} is not emulated")
