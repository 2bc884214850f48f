"""The simulated instrument: detector, probe, distortions, dose and descan."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from strainkit._geometry import distortion_matrix, flip_matrix, rotation_matrix
from strainkit.simulate._validate import _finite, _integer, _jsonable, _pair, _shape2

_DTYPES = ("uint16", "uint32", "float32")


@dataclass(frozen=True)
class Microscope:
    """The instrument: detector, probe, distortions, dose and descan. All knobs validated.

    Parameters
    ----------
    detector_shape : (int, int)
        Detector pixels (Qx, Qy), each >= 8.
    probe_radius : float
        Disk radius in px (> 0).
    edge_width : float
        Gaussian width of the disk edge in px (> 0).
    oversample : int
        Sub-pixel grid per axis for pixel integration (>= 1).
    pixel_size : float
        Å⁻¹ per px along the ellipse minor axis, i.e. in the corrected frame (> 0).
    ellipse : (float, float)
        (ratio a/b >= 1, angle of the major axis in degrees in [0, 180)).
    rotation_deg : float
        Rotation φ between real space and the corrected detector, degrees.
    flip : bool
        Whether the x↔y swap P precedes the rotation.
    dose : float or None
        Expected electrons per pattern; None gives noise-free float32 patterns in relative
        units (disk flat top = amplitude).
    psf_sigma : float
        Gaussian detector point-spread function in px (>= 0), applied before the noise.
        The default, 1 px, is a realistic detector; 0 gives an ideal, blur-free one.
    background_fraction : float
        Fraction of each pattern in a diffuse background centred on the origin, in [0, 1).
    background_width : float
        q0 (px) of the background profile 1 / (1 + (q/q0)²) (> 0).
    descan_offset : (float, float)
        Origin at scan position (0, 0) minus the detector centre, px.
    descan_matrix : 2 x 2
        Origin shift in px per scan step: origin = centre + offset + S @ (rx, ry).
    descan_jitter : float
        Standard deviation (px) of an extra random origin shift per position (>= 0).
    dtype : {"uint16", "uint32", "float32"}
        Storage of noisy counts; uint16 raises if a pixel would overflow.

    Examples
    --------
    >>> m = Microscope(dose=None, ellipse=(1.0, 0.0))
    >>> m.center
    (63.5, 63.5)
    >>> Microscope(probe_radius=-1)
    Traceback (most recent call last):
    ...
    ValueError: probe_radius=-1.0: must be > 0
    """

    detector_shape: tuple[int, int] = (128, 128)
    probe_radius: float = 6.0
    edge_width: float = 0.5
    oversample: int = 2
    pixel_size: float = 0.014
    ellipse: tuple[float, float] = (1.025, 35.0)
    rotation_deg: float = -23.0
    flip: bool = True
    dose: float | None = 2e5
    psf_sigma: float = 1.0
    background_fraction: float = 0.04
    background_width: float = 20.0
    descan_offset: tuple[float, float] = (0.3, -0.2)
    descan_matrix: tuple[tuple[float, float], tuple[float, float]] = (
        (0.03, -0.01),
        (0.015, 0.02),
    )
    descan_jitter: float = 0.0
    dtype: str = "uint16"

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "detector_shape", _shape2("detector_shape", self.detector_shape, 8))
        put(self, "probe_radius", _finite("probe_radius", self.probe_radius, low=0, low_open=True))
        put(self, "edge_width", _finite("edge_width", self.edge_width, low=0, low_open=True))
        put(self, "oversample", _integer("oversample", self.oversample, 1))
        put(self, "pixel_size", _finite("pixel_size", self.pixel_size, low=0, low_open=True))
        ratio, angle = _pair("ellipse", self.ellipse)
        if ratio < 1.0:
            raise ValueError(
                f"ellipse ratio={ratio!r}: must be >= 1 (a/b with a the major semi-axis); "
                "swap the axes and add 90° to the angle"
            )
        if not 0.0 <= angle < 180.0:
            raise ValueError(f"ellipse angle={angle!r}: must lie in [0, 180) degrees")
        put(self, "ellipse", (ratio, angle))
        put(self, "rotation_deg", _finite("rotation_deg", self.rotation_deg))
        if not isinstance(self.flip, bool | np.bool_):
            raise ValueError(f"flip={self.flip!r}: give True or False")
        put(self, "flip", bool(self.flip))
        if self.dose is not None:
            put(self, "dose", _finite("dose", self.dose, low=0, low_open=True))
        put(self, "psf_sigma", _finite("psf_sigma", self.psf_sigma, low=0))
        fraction = _finite("background_fraction", self.background_fraction, low=0, high=1)
        if fraction >= 1:
            raise ValueError(f"background_fraction={fraction!r}: must be < 1")
        put(self, "background_fraction", fraction)
        width = _finite("background_width", self.background_width, low=0, low_open=True)
        put(self, "background_width", width)
        put(self, "descan_offset", _pair("descan_offset", self.descan_offset))
        try:
            rows = tuple(_pair("descan_matrix", row) for row in self.descan_matrix)
        except TypeError:
            rows = ()
        if len(rows) != 2:
            raise ValueError(f"descan_matrix={self.descan_matrix!r}: give a 2 x 2 matrix")
        put(self, "descan_matrix", rows)
        put(self, "descan_jitter", _finite("descan_jitter", self.descan_jitter, low=0))
        try:
            dtype = np.dtype(self.dtype).name
        except TypeError:
            dtype = None
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {', '.join(_DTYPES)}")
        put(self, "dtype", dtype)

    @property
    def center(self) -> tuple[float, float]:
        """Detector centre in px, ((Qx - 1)/2, (Qy - 1)/2).

        Examples
        --------
        >>> Microscope(detector_shape=(64, 96)).center
        (31.5, 47.5)
        """
        return ((self.detector_shape[0] - 1) / 2.0, (self.detector_shape[1] - 1) / 2.0)

    @property
    def distortion(self) -> np.ndarray:
        """D, mapping corrected-frame offsets to raw detector offsets (minor axis kept).

        Examples
        --------
        >>> Microscope(ellipse=(1.1, 0.0)).distortion
        array([[1.1, 0. ],
               [0. , 1. ]])
        """
        return distortion_matrix(self.ellipse[0], 1.0, self.ellipse[1])

    @property
    def real_to_detector(self) -> np.ndarray:
        """R(φ) P: a real-space vector's direction on the corrected detector.

        Examples
        --------
        >>> Microscope(rotation_deg=90.0, flip=False).real_to_detector @ [1.0, 0.0]
        array([6.12...e-17, 1.00...e+00])
        """
        return rotation_matrix(np.deg2rad(self.rotation_deg)) @ flip_matrix(self.flip)

    @property
    def disk_area(self) -> float:
        """Integral of a unit-amplitude disk, π (R² + w²), px².

        Examples
        --------
        >>> round(Microscope().disk_area, 4)
        113.8827
        """
        return math.pi * (self.probe_radius**2 + self.edge_width**2)

    def origins(self, scan_shape, jitter: float = 0.0, rng=None) -> np.ndarray:
        """Pattern origins (Rx, Ry, 2) in raw px: centre + offset + S @ (rx, ry) + jitter.

        Examples
        --------
        >>> Microscope().origins((2, 2))[1, 1]
        array([63.82 , 63.335])
        """
        scan_shape = _shape2("scan_shape", scan_shape)
        jitter = _finite("jitter", jitter, low=0)
        index = np.stack(np.meshgrid(*map(np.arange, scan_shape), indexing="ij"), -1)
        shift = index @ np.asarray(self.descan_matrix).T
        origins = np.asarray(self.center) + np.asarray(self.descan_offset) + shift
        if jitter > 0:
            if rng is None:
                raise ValueError("origins: jitter > 0 needs a random generator, rng=")
            origins = origins + jitter * rng.standard_normal(origins.shape)
        return origins

    def render_kwargs(self, *, background: bool = True) -> dict:
        """The knobs of :func:`render_pattern` and :func:`disk_center_crb`, as keywords.

        Examples
        --------
        >>> sorted(Microscope().render_kwargs())
        ['background_fraction', 'background_width', 'dose', 'edge_width', 'oversample',
         'psf_sigma', 'radius']
        """
        return {
            "radius": self.probe_radius,
            "edge_width": self.edge_width,
            "oversample": self.oversample,
            "background_fraction": self.background_fraction if background else 0.0,
            "background_width": self.background_width,
            "psf_sigma": self.psf_sigma,
            "dose": self.dose,
        }

    def to_dict(self) -> dict:
        """The knobs as a JSON-serialisable dict; ``Microscope(**d)`` rebuilds it.

        Examples
        --------
        >>> Microscope(**Microscope(dose=None).to_dict()) == Microscope(dose=None)
        True
        """
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}
