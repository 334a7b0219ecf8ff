"""ned-ray: in-silico brain responses from NED's and BERG's encoding models, on one machine or a Ray cluster."""

from importlib.metadata import PackageNotFoundError, version

from .api import NED
from .berg import BERG
from .ids import ModelId
from .models.group import ModelGroup
from .nedfmt import NedDir

try:
    __version__ = version("ned-ray")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["NED", "BERG", "ModelGroup", "ModelId", "NedDir", "open_output", "__version__"]


def __getattr__(name: str):
    # open_output imports pyarrow; keep `import ned_ray` light until it is used
    if name == "open_output":
        from .output import open_output

        return open_output
    raise AttributeError(name)
