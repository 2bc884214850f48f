"""strainkit: calibrated strain mapping from 4D-STEM data.

Examples
--------
>>> import strainkit as sk
>>> sk.DataCube(np.zeros((2, 2, 8, 8))).scan_shape
(2, 2)
"""

from strainkit import crystal
from strainkit._files import FileFormatError
from strainkit._version import __version__
from strainkit.containers import BraggPeaks, DataCube, LatticeMap, StrainMap
from strainkit.disks import BraggDiskFinder, bragg_vector_map
from strainkit.ellipse import EllipticalCalibrator
from strainkit.io import read, read_image, read_raw
from strainkit.origin import OriginCalibrator
from strainkit.persist import load_model, save
from strainkit.pixel import PixelCalibrator
from strainkit.probe import ProbeTemplate
from strainkit.rotation import RotationCalibrator

__all__ = [
    "BraggDiskFinder",
    "BraggPeaks",
    "DataCube",
    "EllipticalCalibrator",
    "FileFormatError",
    "LatticeMap",
    "OriginCalibrator",
    "PixelCalibrator",
    "ProbeTemplate",
    "RotationCalibrator",
    "StrainMap",
    "__version__",
    "bragg_vector_map",
    "crystal",
    "load_model",
    "read",
    "read_image",
    "read_raw",
    "save",
]
