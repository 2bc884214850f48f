"""strainkit: calibrated strain mapping from 4D-STEM data.

Examples
--------
>>> import strainkit as sk
>>> sk.DataCube(np.zeros((2, 2, 8, 8))).scan_shape
(2, 2)
"""

from strainkit._files import FileFormatError
from strainkit._version import __version__
from strainkit.containers import BraggPeaks, DataCube, LatticeMap, StrainMap
from strainkit.disks import BraggDiskFinder, bragg_vector_map
from strainkit.io import read, read_image, read_raw
from strainkit.persist import load_model, save
from strainkit.probe import ProbeTemplate

__all__ = [
    "BraggDiskFinder",
    "BraggPeaks",
    "DataCube",
    "FileFormatError",
    "LatticeMap",
    "ProbeTemplate",
    "StrainMap",
    "__version__",
    "bragg_vector_map",
    "load_model",
    "read",
    "read_image",
    "read_raw",
    "save",
]
