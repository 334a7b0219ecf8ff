"""Memory of a group hosting N real-size BERG EEG subjects (4 x 250 x 460,800 float32 PCAs each).

Each subject's file is BERG's 1.9 GB ``weights_subject-SS.npy`` (the fixtures' rebuilt file linked
N times). Reports the process's peak RSS while the group loads, its RSS once loaded, the bytes the
group's tensors hold, and the time per subject; run by hand, one N per process:

    python bench/berg_eeg_memory.py --eeg-file /tmp/berg_dir/.../weights_subject-01.npy \
        --metadata /tmp/berg_dir/.../metadata_subject-01.npy --torch-home /tmp/th --subjects 3
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def rss() -> int:
    """This process's resident set size, in bytes (Linux)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


EEG = "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eeg-file", required=True)
    parser.add_argument("--metadata", required=True)
    parser.add_argument("--torch-home", required=True)
    parser.add_argument("--subjects", type=int, default=2)
    args = parser.parse_args()
    os.environ["TORCH_HOME"] = args.torch_home
    import numpy as np

    from ned_ray.models.group import ModelGroup

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("encoding_models_weights", "metadata"):
            (root / EEG / sub).mkdir(parents=True)
        for s in range(1, args.subjects + 1):
            (root / EEG / "encoding_models_weights" / f"weights_subject-{s:02d}.npy").symlink_to(args.eeg_file)
            (root / EEG / "metadata" / f"metadata_subject-{s:02d}.npy").symlink_to(args.metadata)
        before = rss()
        start = time.perf_counter()
        group = ModelGroup(str(root), [f"eeg/things_eeg_2/vit_b_32/sub-{s:02d}" for s in range(1, args.subjects + 1)], "cpu")
        seconds = time.perf_counter() - start
        held = sum(t.numel() * t.element_size() for t in [*group.shared.parameters(), *group.shared.buffers()])
        loaded = rss()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = group.encode(np.zeros((8, 3, 224, 224), np.uint8))
        assert len(out) == args.subjects
        print(f"{args.subjects} EEG subjects: tensors {held / 2**30:.2f} GB, RSS loaded {loaded / 2**30:.2f} GB "
              f"(process before: {before / 2**30:.2f} GB), peak while loading {peak / 2**30:.2f} GB, "
              f"load {seconds:.1f} s ({seconds / args.subjects:.1f} s per subject)")


if __name__ == "__main__":
    main()
