"""Loading NED's pickled files without executing arbitrary code.

NED stores weights in two pickled formats:

* ``.pt`` checkpoints (torch zip files) whose dict holds torch tensors *and* a numpy array
  (``stim_mean``). Plain ``torch.load(weights_only=True)`` rejects the numpy array, and
  ``weights_only=False`` runs any pickle. :func:`load_torch_checkpoint` keeps
  ``weights_only=True`` and allow-lists exactly the numpy reconstruction functions.
* ``.npy`` files holding a 0-d object array (a dict saved with ``np.save``). ``np.load(...,
  allow_pickle=True)`` runs any pickle. :func:`load_npy_dict` parses the ``.npy`` header itself and
  unpickles the payload with :class:`RestrictedUnpickler`, which admits only numpy arrays, numpy
  dtypes and scalars, and builtin containers, strings and numbers. BERG's newer files pickle
  scikit-learn ``PCA``/``StandardScaler``/``LinearRegression`` objects; those are rebuilt as inert
  :class:`Attributes` holders (their ``__dict__`` only), so scikit-learn is never imported or run.

Anything else raises :class:`UnsafePickleError` naming the file and the forbidden global, before a
single forbidden object is created.
"""

from __future__ import annotations

import codecs
import io
import pickle
import re
import struct
import threading
from typing import IO, Any

import numpy as np

from .errors import UnsafePickleError

__all__ = ["UnsafePickleError", "Attributes", "load_npy_dict", "load_torch_checkpoint", "read_npy_header"]


class Attributes:
    """Inert stand-in for a pickled scikit-learn estimator: holds its attributes, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pickle may call cls() with no args
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (dict, slots) form
            state = state[0] or {}
        if not isinstance(state, dict):
            raise UnsafePickleError(f"unexpected estimator state of type {type(state).__name__}")
        self.__dict__.update(state)

    def __getitem__(self, key: str) -> Any:  # lets code treat it like the dict NED saves
        return self.__dict__[key]

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def keys(self):
        return self.__dict__.keys()

    def __repr__(self) -> str:
        return f"Attributes({sorted(self.__dict__)})"


def _numpy_reconstruct():
    # numpy >= 2 names the module numpy._core; files written by numpy 1.x say numpy.core.
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    return _reconstruct, scalar


_RECONSTRUCT, _SCALAR = _numpy_reconstruct()

# (module, name) -> object. Nothing here can execute code chosen by the file.
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles encode bytes this way
}
# numpy >= 1.25 pickles dtypes as numpy.dtypes.Float64DType etc.
for _name in dir(np.dtypes):
    _obj = getattr(np.dtypes, _name)
    if isinstance(_obj, type) and issubclass(_obj, np.dtype):
        _NUMPY_GLOBALS[("numpy.dtypes", _name)] = _obj

_BUILTINS = {
    "dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset,
    "int": int, "float": float, "complex": complex, "bool": bool, "str": str,
    "bytes": bytes, "bytearray": bytearray, "slice": slice,
}
_COLLECTIONS = {"OrderedDict"}

# scikit-learn estimators that BERG pickles whole; rebuilt as Attributes.
_SKLEARN_ESTIMATORS = {"PCA", "StandardScaler", "LinearRegression"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (see module docstring)."""

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        if module == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "collections" and name in _COLLECTIONS:
            import collections

            return getattr(collections, name)
        if module.startswith("sklearn.") and name in _SKLEARN_ESTIMATORS:
            return Attributes
        raise UnsafePickleError(
            f"{self._source}: refusing to load '{module}.{name}' from a pickle. NED model files "
            "contain only numpy arrays, dicts, lists, strings and numbers; this file is corrupt or "
            "was crafted to run code. Re-download it from the official NED/BERG release."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed in a .npy dict")


# numpy parses .npy headers with ast.literal_eval, which is not thread-safe in CPython 3.11 before
# 3.11.9 ("AST constructor recursion depth mismatch" when threads parse at once, as the commit
# verification's reader threads do): headers are read concurrently, parsed one at a time.
_HEADER_PARSE = threading.Lock()
_HEADER_LENGTH = {(1, 0): "<H", (2, 0): "<I"}


def read_npy_header(file: IO[bytes], source: str = "<npy>") -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a ``.npy`` file; leaves ``file`` at the start of the data."""
    try:
        version = np.lib.format.read_magic(file)
        if version not in _HEADER_LENGTH:
            raise ValueError(f"unsupported .npy format version {version}")
        prefix = file.read(struct.calcsize(_HEADER_LENGTH[version]))
        header = file.read(struct.unpack(_HEADER_LENGTH[version], prefix)[0]) if len(prefix) == len(
            struct.pack(_HEADER_LENGTH[version], 0)) else b""
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        with _HEADER_PARSE:
            return read(io.BytesIO(prefix + header))
    except (ValueError, struct.error) as exc:
        raise ValueError(f"{source}: not a valid .npy file ({exc})") from None


def load_npy_dict(file: IO[bytes] | bytes, source: str = "<npy>") -> Any:
    """Load a ``.npy`` file the way ``np.load(f, allow_pickle=True).item()`` would, safely.

    Plain (non-object) arrays are returned as arrays; a 0-d object array returns its item
    (normally NED's dict). ``source`` names the file in error messages.
    """
    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(file)
    shape, fortran, dtype = read_npy_header(file, source)
    if not dtype.hasobject:
        data = np.frombuffer(file.read(), dtype=dtype)
        order = "F" if fortran else "C"
        return data.reshape(shape, order=order).copy()
    try:
        array = RestrictedUnpickler(file, source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or corrupt payload
        raise ValueError(f"{source}: corrupt pickled .npy payload ({type(exc).__name__}: {exc})") from None
    if isinstance(array, np.ndarray) and array.dtype.hasobject and array.shape == ():
        return array.item()
    return array


# torch's weights_only unpickler already admits tensors, storages and OrderedDict; these are the
# numpy globals NED's checkpoints add (stim_mean is a numpy array).
_TORCH_SAFE_GLOBALS = [
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
    (_SCALAR, "numpy.core.multiarray.scalar"),
    (_SCALAR, "numpy._core.multiarray.scalar"),
    np.ndarray,
    np.dtype,
    codecs.encode,
    *[obj for (mod, _), obj in _NUMPY_GLOBALS.items() if mod == "numpy.dtypes"],
]


def load_torch_checkpoint(file: IO[bytes] | str, source: str = "<pt>") -> Any:
    """``torch.load(file, weights_only=True)`` with NED's numpy globals allow-listed, on CPU."""
    import torch  # here, not above: listing inputs and reading outputs (which use this module's .npy reader) need no torch

    try:
        with torch.serialization.safe_globals(_TORCH_SAFE_GLOBALS):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"'{found.group(1)}'" if found else "globals"
        raise UnsafePickleError(
            f"{source}: refusing to unpickle this checkpoint: it needs {what}, outside the allow-list for NED "
            "weights. The file is corrupt or was crafted to run code; re-download it from the official NED/BERG release."
        ) from None
    except RuntimeError as exc:
        raise ValueError(f"{source}: not a readable torch checkpoint ({str(exc).splitlines()[0]})") from None
    except EOFError:  # pickle's end of data: a 0-byte file, or one cut before its first record ended
        raise ValueError(f"{source}: not a readable torch checkpoint (the file is empty or ends early); "
                         "re-download it from the official NED/BERG release") from None
