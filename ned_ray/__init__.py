"""ned-ray: in-silico brain responses from NED's and BERG's encoding models, on one machine or a Ray cluster.

``import ned_ray`` is light: the names below are imported on first use (the models import torch,
outputs pyarrow), so that the driver, the command line and torch-free modules stay fast.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ned-ray")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

_LAZY = {"NED": ".api", "BERG": ".berg", "ModelGroup": ".models.group", "ModelId": ".ids", "NedDir": ".modeldir",
         "open_output": ".output", "EncodeConfig": ".job.options", "run_encode": ".job.run", "plan_encode": ".job.run"}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ned_ray' has no attribute '{name}'")
