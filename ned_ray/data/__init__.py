"""ned-ray inside your own Ray Data pipelines (this package imports Ray).

* :func:`encode`: a Dataset of images (bytes, uint8 arrays or paths, in any column) -> the same rows
  with one response column per model, computed by planned actor pools as ``ned-ray encode`` does;
* :class:`Encoder`: the same as one callable class for a ``map_batches`` of your own;
* :func:`read_output`: a finished output as a Dataset, read in parallel for distributed analyses.
"""

from .encode import STATUS_COLUMNS, Encoder, code_column, encode
from .read import read_output

__all__ = ["encode", "Encoder", "read_output", "code_column", "STATUS_COLUMNS"]
