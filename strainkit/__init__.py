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
from strainkit.lattice import LatticeFitter
from strainkit.origin import OriginCalibrator
from strainkit.persist import load_model, save
from strainkit.pipeline import make_strain_pipeline, map_scans
from strainkit.pixel import PixelCalibrator
from strainkit.plot import plot_strain
from strainkit.probe import ProbeTemplate
from strainkit.rotation import RotationCalibrator
from strainkit.strain import StrainCalculator

__all__ = [
    "BraggDiskFinder",
    "BraggPeaks",
    "DataCube",
    "EllipticalCalibrator",
    "FileFormatError",
    "LatticeFitter",
    "LatticeMap",
    "OriginCalibrator",
    "PixelCalibrator",
    "ProbeTemplate",
    "RotationCalibrator",
    "StrainCalculator",
    "StrainMap",
    "__version__",
    "bragg_vector_map",
    "crystal",
    "load_model",
    "make_strain_pipeline",
    "map_scans",
    "plot_strain",
    "read",
    "read_image",
    "read_raw",
    "save",
]
