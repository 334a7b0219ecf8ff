"""Are two finished outputs the same? Every model's responses bit for bit, and images.parquet.

For refactors that must not change results: run the same job with two versions of ned-ray (or two
executors) and compare their outputs.

    PYTHONPATH=/path/to/other/checkout python -m ned_ray.cli encode ... --output out-a
    python -m ned_ray.cli encode ... --output out-b
    python bench/same_outputs.py out-a out-b
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq

from ned_ray.output import open_output


def main(a_uri: str, b_uri: str) -> int:
    a, b = open_output(a_uri), open_output(b_uri)
    if a.models != b.models:
        print(f"different models: {a.models} vs {b.models}")
        return 1
    for model in a.models:
        (ia, va), (ib, vb) = a.responses(model), b.responses(model)
        if not (np.array_equal(ia, ib) and va.dtype == vb.dtype == np.float32 and np.array_equal(va, vb)):
            print(f"{model}: responses differ")
            return 1
    ta, tb = pq.read_table(f"{a_uri}/images.parquet"), pq.read_table(f"{b_uri}/images.parquet")
    if not ta.equals(tb):
        print("images.parquet differs")
        return 1
    print(f"identical: {len(a.models)} models x {ta.num_rows} images (responses bit for bit, images.parquet equal)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
