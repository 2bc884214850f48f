"""strainkit: calibrated strain mapping from 4D-STEM data."""

from strainkit._version import __version__

__all__ = ["__version__"]
