"""Synthetic 4D-STEM data with exact ground truth, for tests, benchmarks and the demo.

Everything follows the conventions of :mod:`strainkit._geometry` (see DESIGN.md):

* Detector pixel (i, j) has its centre at coordinate (i, j), in pixel-index units; x is
  array axis 0. The detector centre of a 128 x 128 detector is (63.5, 63.5).
* The *corrected* detector frame is the raw detector with the elliptical distortion
  removed (the minor axis is kept). A corrected offset ``v`` from the pattern origin
  appears on the raw detector at ``origin + D @ v``, ``D = distortion_matrix(ratio, 1, angle)``.
  The pixel size (Å⁻¹ per px) applies in the corrected frame.
* A real-space vector ``v_R`` (Å or Å⁻¹) appears in the corrected frame as ``R(φ) P v_R``
  (rotation, then the x↔y swap ``P`` when ``flip``).
* Strain: ``G = F⁻ᵀ G0``, ε = (F + Fᵀ)/2 − I, θ = (F₁₀ − F₀₁)/2.

A disk is the soft-edged profile ``0.5 erfc((ρ − R) / (√2 w))`` averaged over an
``oversample`` x ``oversample`` grid inside each pixel (pixel integration). Its flat top
equals its amplitude and its integral is ``amplitude · π (R² + w²)``.

Every random draw comes from ``np.random.default_rng`` on a child of
``SeedSequence(seed)`` that is specific to the scan kind and to the purpose (descan
jitter, intensities, noise), so one scan's size or knobs never change another scan.

Examples
--------
>>> from strainkit import simulate
>>> sim = simulate.simulate_crystal(scan_shape=(2, 3))
>>> sim.data.shape, sim.data.dtype
((2, 3, 128, 128), dtype('uint16'))
>>> sim.truth.hk.shape
(49, 2)
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import numba
import numpy as np
from scipy import ndimage, special

from strainkit._files import FileFormatError, atomic_path, open_hdf5
from strainkit._geometry import (
    deformation_from_strain,
    distortion_matrix,
    flip_matrix,
    reciprocal_from_real,
    rotation_matrix,
)
from strainkit._version import __version__
from strainkit.crystal import Crystal, fcc

__all__ = [
    "CrystalTruth",
    "DiskCenterBound",
    "ImageTruth",
    "Lattice",
    "Microscope",
    "PolycrystalTruth",
    "SimulatedImages",
    "SimulatedScan",
    "StrainField",
    "VacuumTruth",
    "Workflow",
    "crystal_disk_crb",
    "disk_center_crb",
    "read_truth",
    "render_background",
    "render_disks",
    "render_pattern",
    "simulate_crystal",
    "simulate_images",
    "simulate_polycrystal",
    "simulate_vacuum",
    "simulate_workflow",
    "write_demo",
]

# The disk profile is cut at ±6 edge widths, where 0.5·erfc(6/√2) < 1e-9 of the amplitude.
_CUT = 6.0
# The profile is tabulated in units of the edge width and interpolated linearly; with
# this step the interpolation error is below 3e-8 of the amplitude, and a table lookup
# is several times cheaper than erfc in the innermost loop.
_INV_STEP = 1024.0
_TABLE = 0.5 * special.erfc(
    np.arange(-_CUT, _CUT + 3.0 / _INV_STEP, 1.0 / _INV_STEP) / math.sqrt(2)
)
# Each scan kind draws from its own child of SeedSequence(seed).
_KIND_KEYS = {"vacuum": 0, "crystal": 1, "polycrystal": 2, "images": 3}
# Frames are rendered in blocks of whole scan rows of about this many bytes (float64).
_BLOCK_BYTES = 1 << 25
_DTYPES = ("uint16", "uint32", "float32")


# --------------------------------------------------------------------------- validation


def _finite(name: str, value, *, low=None, high=None, low_open=False, high_open=False):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a number") from None
    bad = not math.isfinite(value)
    bad |= low is not None and (value <= low if low_open else value < low)
    bad |= high is not None and (value >= high if high_open else value > high)
    if bad:
        lo = "" if low is None else ("> " if low_open else ">= ") + f"{low}"
        hi = "" if high is None else ("< " if high_open else "<= ") + f"{high}"
        allowed = " and ".join(s for s in (lo, hi) if s) or "finite"
        raise ValueError(f"{name}={value!r}: must be {allowed}")
    return value


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}={value!r}: give an integer >= {minimum}")
    return int(value)


def _shape2(name: str, value, minimum: int = 1) -> tuple[int, int]:
    try:
        shape = tuple(int(v) for v in value)
        exact = all(int(v) == v for v in value)
    except (TypeError, ValueError):
        shape, exact = (), False
    if len(shape) != 2 or not exact or min(shape) < minimum:
        raise ValueError(f"{name}={value!r}: give two integers, each >= {minimum}, e.g. (64, 64)")
    return shape


def _pair(name: str, value) -> tuple[float, float]:
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
        raise ValueError(f"{name}={value!r}: give two finite numbers")
    return pair


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r}: give a non-negative integer")
    return int(seed)


def _streams(seed, kind: str, n: int) -> list[np.random.SeedSequence]:
    """Independent seed sequences for the ``n`` purposes of one scan kind."""
    return np.random.SeedSequence(_seed(seed), spawn_key=(_KIND_KEYS[kind],)).spawn(n)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- microscope


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
    psf_sigma: float = 0.0
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


# --------------------------------------------------------------------------- rendering


@numba.njit(cache=True)
def _profile(t, table):
    """0.5·erfc(t/√2) from the table, t in edge widths; 1 and 0 beyond the cut."""
    if t >= _CUT:
        return 0.0
    if t <= -_CUT:
        return 1.0
    x = (t + _CUT) * _INV_STEP
    i = int(x)
    return table[i] + (x - i) * (table[i + 1] - table[i])


@numba.njit(cache=True)
def _window(c, reach, n):
    """First and last pixel index within ``reach`` of ``c``, clipped to [0, n - 1]."""
    return max(math.floor(c - reach), 0), min(math.ceil(c + reach), n - 1)


@numba.njit(cache=True)
def _add_disk(frame, cx, cy, amp, radius, edge, oversample, table):
    nx, ny = frame.shape
    reach = radius + _CUT * edge + 1.0
    step = 1.0 / oversample
    start = -0.5 + 0.5 * step
    # Pixels whose every sub-sample lies beyond the cut need no sub-sampling.
    spread = (0.5 - 0.5 * step) * math.sqrt(2.0) + 1e-9
    outer = radius + _CUT * edge + spread
    inner = radius - _CUT * edge - spread
    inv_edge = 1.0 / edge
    norm = amp / (oversample * oversample)
    i0, i1 = _window(cx, reach, nx)
    j0, j1 = _window(cy, reach, ny)
    for i in range(i0, i1 + 1):
        dx = i - cx
        for j in range(j0, j1 + 1):
            dy = j - cy
            rho = math.sqrt(dx * dx + dy * dy)
            if rho >= outer:
                continue
            if rho <= inner:
                frame[i, j] += amp
                continue
            total = 0.0
            for u in range(oversample):
                x = dx + start + u * step
                for v in range(oversample):
                    y = dy + start + v * step
                    total += _profile((math.sqrt(x * x + y * y) - radius) * inv_edge, table)
            frame[i, j] += total * norm


@numba.njit(cache=True)
def _lorentzian_frame(frame, ox, oy, inv_w2):
    for i in range(frame.shape[0]):
        dx2 = (i - ox) * (i - ox)
        for j in range(frame.shape[1]):
            frame[i, j] = 1.0 / (1.0 + (dx2 + (j - oy) * (j - oy)) * inv_w2)


# Blocks of frames run in parallel threads; single frames run serially, because waking
# the thread pool costs more than rendering one frame. (Separate functions, not one
# function jitted twice: numba's cache index does not tell parallel from serial.)
@numba.njit(cache=True, parallel=True)
def _render_csr(out, centers, amps, offsets, radius, edge, oversample, table):
    """Add the disks offsets[f]:offsets[f+1] to frame f, frames in parallel."""
    for f in numba.prange(out.shape[0]):
        for k in range(offsets[f], offsets[f + 1]):
            _add_disk(
                out[f], centers[k, 0], centers[k, 1], amps[k], radius, edge, oversample, table
            )


@numba.njit(cache=True)
def _render_serial(frame, centers, amps, radius, edge, oversample, table):
    for k in range(len(amps)):
        _add_disk(frame, centers[k, 0], centers[k, 1], amps[k], radius, edge, oversample, table)


@numba.njit(cache=True, parallel=True)
def _lorentzian_block(out, origins, width):
    for f in numba.prange(out.shape[0]):
        _lorentzian_frame(out[f], origins[f, 0], origins[f, 1], 1.0 / (width * width))


@numba.njit(cache=True, parallel=True)
def _disk_jacobian(out, centers, radius, edge, oversample, table):
    """out[k] = (profile, d/dcx, d/dcy) of unit disk k; the derivative of 0.5·erfc is −φ."""
    nx, ny = out.shape[2], out.shape[3]
    reach = radius + _CUT * edge + 1.0
    step = 1.0 / oversample
    start = -0.5 + 0.5 * step
    norm = 1.0 / (oversample * oversample)
    gauss = norm / (math.sqrt(2.0 * math.pi) * edge)
    for k in numba.prange(centers.shape[0]):
        cx, cy = centers[k, 0], centers[k, 1]
        i0, i1 = _window(cx, reach, nx)
        j0, j1 = _window(cy, reach, ny)
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                value, gx, gy = 0.0, 0.0, 0.0
                for u in range(oversample):
                    x = i - cx + start + u * step
                    for v in range(oversample):
                        y = j - cy + start + v * step
                        r = math.sqrt(x * x + y * y)
                        t = (r - radius) / edge
                        value += _profile(t, table)
                        if abs(t) < _CUT and r > 0:
                            g = math.exp(-0.5 * t * t) / r
                            gx += g * x
                            gy += g * y
                out[k, 0, i, j] = value * norm
                out[k, 1, i, j] = gx * gauss
                out[k, 2, i, j] = gy * gauss


def _disk_arrays(centers, amplitudes) -> tuple[np.ndarray, np.ndarray]:
    centers = np.ascontiguousarray(centers, dtype=float)
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers has shape {centers.shape}; give (n_disks, 2) px coordinates")
    amplitudes = np.ascontiguousarray(np.broadcast_to(amplitudes, len(centers)), dtype=float)
    if not (np.isfinite(centers).all() and np.isfinite(amplitudes).all()):
        raise ValueError("centers and amplitudes must be finite")
    return centers, amplitudes


def _disk_knobs(radius, edge_width, oversample) -> tuple[float, float, int]:
    radius = _finite("radius", radius, low=0, low_open=True)
    edge_width = _finite("edge_width", edge_width, low=0, low_open=True)
    return radius, edge_width, _integer("oversample", oversample, 1)


def render_disks(
    shape,
    centers,
    amplitudes,
    radius: float,
    edge_width: float,
    oversample: int = 2,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of soft-edged disks on a detector of ``shape``; amplitude = flat-top value.

    Each disk is ``a · 0.5 erfc((ρ − R)/(√2 w))`` averaged over ``oversample``² sub-pixel
    points per pixel, computed only within ``R + 6w + 1`` px of its centre and clipped at
    the detector edge.

    Parameters
    ----------
    shape : (int, int)
        Detector shape.
    centers : array_like, shape (n, 2)
        Disk centres in px (pixel (i, j) is centred at (i, j)).
    amplitudes : array_like, shape (n,) or scalar
        Flat-top values.
    radius, edge_width : float
        Disk radius and edge width in px.
    oversample : int
        Sub-pixel grid per axis.
    out : ndarray, optional
        C-contiguous float64 frame of ``shape``; the disks are added to it.

    Returns
    -------
    ndarray
        The frame (``out`` when given).

    Examples
    --------
    >>> frame = render_disks((32, 32), [[15.5, 15.5]], [2.0], radius=6.0, edge_width=0.5)
    >>> float(frame.max()), round(float(frame.sum()), 3)
    (2.0, 227.765)
    """
    shape = _shape2("shape", shape)
    centers, amplitudes = _disk_arrays(centers, amplitudes)
    radius, edge_width, oversample = _disk_knobs(radius, edge_width, oversample)
    if out is None:
        out = np.zeros(shape)
    elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {shape}")
    _render_serial(out, centers, amplitudes, radius, edge_width, oversample, _TABLE)
    return out


def render_background(shape, origin, width: float = 20.0) -> np.ndarray:
    """Diffuse background 1 / (1 + (q/q0)²) around ``origin``, normalised to sum 1.

    Evaluated at pixel centres (the profile is smooth on the pixel scale).

    Examples
    --------
    >>> bg = render_background((64, 64), (31.5, 31.5), width=10.0)
    >>> round(float(bg.sum()), 12), bool(bg[31, 31] == bg.max())
    (1.0, True)
    """
    shape = _shape2("shape", shape)
    origin = np.array([_pair("origin", origin)])
    width = _finite("width", width, low=0, low_open=True)
    out = np.empty(shape)
    _lorentzian_frame(out, origin[0, 0], origin[0, 1], 1.0 / width**2)
    return out / out.sum()


def _expected_frames(disks, origins, *, fraction, width, psf_sigma, dose, disk_area):
    """Rendered disks (relative units) -> expected frames; also counts per unit amplitude.

    The disks and the background are blurred separately (blur is linear) so that, after
    normalisation, the background is exactly ``fraction`` of each frame and the frame
    sums to ``dose``. Without a dose the disks keep their relative units. ``disks`` is a
    scratch buffer: it is scaled in place and returned.
    """
    blur = (0.0, psf_sigma, psf_sigma)
    if psf_sigma > 0:
        disks = ndimage.gaussian_filter(disks, blur, mode="constant")
    disk_sum = disks.sum(axis=(1, 2))
    if dose is None:
        scale = np.ones_like(disk_sum)
    else:
        scale = np.divide(
            dose * (1.0 - fraction), disk_sum, np.zeros_like(disk_sum), where=disk_sum > 0
        )
    frames = disks
    frames *= scale[:, None, None]
    if fraction > 0:
        background = np.empty_like(disks)
        if len(disks) > 1:
            _lorentzian_block(background, np.ascontiguousarray(origins, dtype=float), width)
        else:
            _lorentzian_frame(background[0], origins[0][0], origins[0][1], 1.0 / width**2)
        if psf_sigma > 0:
            background = ndimage.gaussian_filter(background, blur, mode="constant")
        wanted = (
            fraction / (1 - fraction) * disk_sum
            if dose is None
            else np.full_like(disk_sum, dose * fraction)
        )
        background *= (wanted / background.sum(axis=(1, 2)))[:, None, None]
        frames += background
    return frames, scale * disk_area


def render_pattern(
    shape,
    centers,
    amplitudes,
    *,
    radius: float = 6.0,
    edge_width: float = 0.5,
    oversample: int = 2,
    origin=None,
    background_fraction: float = 0.0,
    background_width: float = 20.0,
    psf_sigma: float = 0.0,
    dose: float | None = None,
) -> np.ndarray:
    """The noise-free expected pattern: disks, diffuse background and detector blur.

    Normalisation: disk amplitudes are relative. With a ``dose`` the whole frame is scaled
    to sum to ``dose`` (expected electrons), of which the background is exactly
    ``background_fraction``. Without a dose the disks keep their amplitudes (flat top =
    amplitude) and the background is added so that it is ``background_fraction`` of the
    total. Disks and background are blurred by the PSF (``mode='constant'``) before the
    normalisation. ``Microscope.render_kwargs()`` gives all keywords for one instrument.

    Examples
    --------
    >>> mu = render_pattern((64, 64), [[31.5, 31.5], [31.5, 47.5]], [1.0, 0.5],
    ...                     origin=(31.5, 31.5), background_fraction=0.1, dose=1e4)
    >>> round(float(mu.sum()), 6)
    10000.0
    """
    shape = _shape2("shape", shape)
    centers, amplitudes = _disk_arrays(centers, amplitudes)
    radius, edge_width, oversample = _disk_knobs(radius, edge_width, oversample)
    fraction = _finite("background_fraction", background_fraction, low=0, high=1, high_open=True)
    psf_sigma = _finite("psf_sigma", psf_sigma, low=0)
    if dose is not None:
        dose = _finite("dose", dose, low=0, low_open=True)
    if origin is None:
        if fraction > 0:
            raise ValueError("render_pattern: a background needs its origin=(x, y) in px")
        origin = (0.0, 0.0)
    disks = render_disks(shape, centers, amplitudes, radius, edge_width, oversample)[None]
    frames, _ = _expected_frames(
        disks,
        np.array([_pair("origin", origin)]),
        fraction=fraction,
        width=_finite("background_width", background_width, low=0, low_open=True),
        psf_sigma=psf_sigma,
        dose=dose,
        disk_area=math.pi * (radius**2 + edge_width**2),
    )
    return frames[0]


# --------------------------------------------------------------------------- scans


def _render_scan(m: Microscope, scan_shape, centers, amps, offsets, origins, fraction, noise):
    """Render, normalise and (with a dose) add noise to every frame, a block of rows at a time.

    Returns the (Rx, Ry, Qx, Qy) data and the expected counts per unit disk amplitude.
    """
    rx, ry = scan_shape
    nx, ny = m.detector_shape
    dtype = np.float32 if m.dose is None else np.dtype(m.dtype)
    data = np.empty((rx, ry, nx, ny), dtype=dtype)
    per_amp = np.empty(rx * ry)
    flat_origins = np.ascontiguousarray(origins.reshape(-1, 2))
    # Noise of row r always comes from child r of the noise stream, whatever the blocks.
    row_seeds = noise.spawn(rx)
    rows_per_block = max(1, _BLOCK_BYTES // (ry * nx * ny * 8))
    for r0 in range(0, rx, rows_per_block):
        r1 = min(rx, r0 + rows_per_block)
        f0, f1 = r0 * ry, r1 * ry
        disks = np.zeros((f1 - f0, nx, ny))
        _render_csr(
            disks,
            centers,
            amps,
            offsets[f0 : f1 + 1],
            m.probe_radius,
            m.edge_width,
            m.oversample,
            _TABLE,
        )
        frames, per_amp[f0:f1] = _expected_frames(
            disks,
            flat_origins[f0:f1],
            fraction=fraction,
            width=m.background_width,
            psf_sigma=m.psf_sigma,
            dose=m.dose,
            disk_area=m.disk_area,
        )
        frames = frames.reshape(r1 - r0, ry, nx, ny)
        if m.dose is None:
            data[r0:r1] = frames
        else:
            data[r0:r1] = _noisy_rows(frames, row_seeds[r0:r1], dtype)
    return data, per_amp.reshape(rx, ry)


def _noisy_rows(expected, seeds, dtype):
    limit = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else np.inf
    peak = float(expected.max(initial=0.0))
    if peak + 10 * math.sqrt(peak) + 10 > limit:
        raise ValueError(
            f"expected counts reach {peak:.0f} per pixel, more than {np.dtype(dtype).name} "
            f"holds ({limit}); lower Microscope.dose or choose Microscope(dtype='float32')"
        )
    out = np.empty(expected.shape, dtype=dtype)

    def row(r):
        out[r] = np.random.default_rng(seeds[r]).poisson(expected[r])

    # numpy's Poisson sampler releases the GIL, so rows in threads run concurrently.
    with ThreadPoolExecutor(max_workers=min(len(seeds), os.cpu_count() or 1)) as pool:
        list(pool.map(row, range(len(seeds))))
    return out


def _readonly(value):
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value


class _Truth:
    """Shared behaviour of the truth records: read-only arrays, compact repr, to_dict."""

    def __post_init__(self) -> None:
        for f in fields(self):
            _readonly(getattr(self, f.name))

    def to_dict(self) -> dict:
        """Every field by name (arrays are read-only views).

        Examples
        --------
        >>> sorted(simulate_vacuum(scan_shape=(1, 1)).truth.to_dict())
        ['edge_width', 'jitter', 'origins', 'probe_radius']
        """
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __repr__(self) -> str:
        parts = []
        for name, value in self.to_dict().items():
            if isinstance(value, np.ndarray):
                parts.append(f"{name}={value.dtype}{list(value.shape)}")
            else:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False, eq=False)
class VacuumTruth(_Truth):
    """Ground truth of a vacuum scan.

    Attributes
    ----------
    origins : ndarray (Rx, Ry, 2)
        Raw-detector centre of the probe at each position, px.
    probe_radius, edge_width : float
        Disk radius and edge width, px.
    jitter : float
        Standard deviation of the random origin shift, px.

    Examples
    --------
    >>> simulate_vacuum(scan_shape=(2, 2)).truth.origins.shape
    (2, 2, 2)
    """

    origins: np.ndarray
    probe_radius: float
    edge_width: float
    jitter: float


@dataclass(frozen=True, repr=False, eq=False)
class SimulatedScan:
    """A simulated 4D-STEM scan: ``data`` (Rx, Ry, Qx, Qy), its ``truth`` and the instrument.

    ``data`` holds counts (``Microscope.dtype``) or, without a dose, float32 expected
    values in relative units. It is read-only.

    Examples
    --------
    >>> sim = simulate_vacuum(scan_shape=(2, 2))
    >>> sim
    SimulatedScan(data=uint16[2, 2, 128, 128], truth=VacuumTruth)
    """

    data: np.ndarray
    truth: VacuumTruth | CrystalTruth | PolycrystalTruth
    microscope: Microscope

    def __post_init__(self) -> None:
        _readonly(self.data)

    def __repr__(self) -> str:
        shape = list(self.data.shape)
        return f"SimulatedScan(data={self.data.dtype}{shape}, truth={type(self.truth).__name__})"


def simulate_vacuum(
    microscope: Microscope = Microscope(),
    scan_shape=(10, 10),
    jitter: float = 0.3,
    seed: int = 0,
) -> SimulatedScan:
    """A vacuum scan: the central disk only, no diffuse background, at jittered origins.

    Parameters
    ----------
    microscope : Microscope
        The instrument; its ``descan_jitter`` is replaced by ``jitter`` here.
    scan_shape : (int, int)
        Scan positions (Rx, Ry).
    jitter : float
        Standard deviation (px) of the random origin shift per position.
    seed : int
        Random seed.

    Returns
    -------
    SimulatedScan
        With :class:`VacuumTruth`. Each frame sums to ``microscope.dose`` on average.

    Examples
    --------
    >>> sim = simulate_vacuum(Microscope(dose=None), scan_shape=(1, 2), jitter=0.0)
    >>> float(sim.data.max())
    1.0
    """
    scan_shape = _shape2("scan_shape", scan_shape)
    jitter = _finite("jitter", jitter, low=0)
    seed_jitter, seed_noise = _streams(seed, "vacuum", 2)
    origins = microscope.origins(scan_shape, jitter, np.random.default_rng(seed_jitter))
    n = scan_shape[0] * scan_shape[1]
    data, _ = _render_scan(
        microscope,
        scan_shape,
        origins.reshape(-1, 2).copy(),
        np.ones(n),
        np.arange(n + 1, dtype=np.int64),
        origins,
        0.0,
        seed_noise,
    )
    truth = VacuumTruth(origins, microscope.probe_radius, microscope.edge_width, jitter)
    return SimulatedScan(data, truth, microscope)


# --------------------------------------------------------------------------- single crystal

_DEFAULT_SPACING = 1.0 / (16 * 0.014)


@dataclass(frozen=True)
class Lattice:
    """A 2D real-space lattice: |a1| = a, |a2| = b (Å), angle gamma between them.

    ``orientation_deg`` is the angle of a1 from real-space +x toward +y. The defaults give
    a square lattice whose first-order reflections are 16 px from the origin at the
    default pixel size (0.014 Å⁻¹/px).

    Examples
    --------
    >>> lat = Lattice(a=4.0, b=4.0, orientation_deg=0.0)
    >>> lat.real
    array([[4.0...e+00, 2.4...e-16],
           [0.0...e+00, 4.0...e+00]])
    >>> lat.reciprocal @ [1, 0]
    array([ 2.5...e-01, -1.5...e-17])
    """

    a: float = _DEFAULT_SPACING
    b: float = _DEFAULT_SPACING
    gamma: float = 90.0
    orientation_deg: float = 10.0

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "a", _finite("Lattice a", self.a, low=0, low_open=True))
        put(self, "b", _finite("Lattice b", self.b, low=0, low_open=True))
        gamma = _finite(
            "Lattice gamma", self.gamma, low=0, high=180, low_open=True, high_open=True
        )
        put(self, "gamma", gamma)
        put(self, "orientation_deg", _finite("Lattice orientation_deg", self.orientation_deg))

    @property
    def real(self) -> np.ndarray:
        """A0: columns a1, a2 in the real-space frame, Å.

        Examples
        --------
        >>> Lattice(a=2.0, b=3.0, orientation_deg=0.0).real.round(12)
        array([[2., 0.],
               [0., 3.]])
        """
        o, g = np.deg2rad(self.orientation_deg), np.deg2rad(self.gamma)
        a1 = self.a * np.array([math.cos(o), math.sin(o)])
        a2 = self.b * np.array([math.cos(o + g), math.sin(o + g)])
        return np.stack([a1, a2], axis=1)

    @property
    def reciprocal(self) -> np.ndarray:
        """G0: columns g1, g2 in the real-space frame, Å⁻¹ (no factor 2π).

        Examples
        --------
        >>> Lattice(a=2.0, b=4.0, orientation_deg=0.0).reciprocal.round(12) + 0.0
        array([[0.5 , 0.  ],
               [0.  , 0.25]])
        """
        return reciprocal_from_real(self.real)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class StrainField:
    """A smooth strain and rotation map, exactly zero in a reference band of rows.

    The reference region is the rows ``rx < reference_fraction * Rx``. Outside it each
    component rises smoothly from 0 to its maximum (the value given here), with a
    different spatial pattern per component, so the components are not proportional:

    * exx: a smoothstep ramp along x, reaching its maximum on the last row;
    * eyy: the same ramp times (0.25 + 0.75 · smoothstep along y), maximum at (Rx-1, Ry-1);
    * exy: a C¹ bump (1 − r²/ρ²)² centred in the strained region, scaled so its largest
      value on the scan grid is the maximum;
    * theta: the ramp times (1 − 0.75 · smoothstep along y), maximum at (Rx-1, 0).

    The maxima are reached exactly when the scan has at least two columns. A scan with no
    row beyond the reference band (e.g. a single row) is all reference, with zero strain.

    Parameters
    ----------
    exx, eyy, exy : float
        Extreme strain components (``exy`` is the tensor component; tension positive).
    theta_deg : float
        Extreme lattice rotation, degrees.
    reference_fraction : float
        Fraction of the rows, from the first, that are unstrained; in (0, 1).

    Examples
    --------
    >>> exx, eyy, exy, theta, ref = StrainField().evaluate((8, 4))
    >>> ref[:, 0]
    array([ True,  True, False, False, False, False, False, False])
    >>> float(exx.max()), float(eyy.min()), float(exx[ref].max())
    (0.02, -0.01, 0.0)
    """

    exx: float = 0.02
    eyy: float = -0.01
    exy: float = 0.005
    theta_deg: float = 0.3
    reference_fraction: float = 0.25

    def __post_init__(self) -> None:
        for name in ("exx", "eyy", "exy", "theta_deg"):
            bound = 90.0 if name == "theta_deg" else 0.5
            value = _finite(f"StrainField {name}", getattr(self, name), low=-bound, high=bound)
            object.__setattr__(self, name, value)
        fraction = _finite(
            "StrainField reference_fraction",
            self.reference_fraction,
            low=0,
            high=1,
            low_open=True,
            high_open=True,
        )
        object.__setattr__(self, "reference_fraction", fraction)

    def evaluate(self, scan_shape) -> tuple[np.ndarray, ...]:
        """(exx, eyy, exy, theta_rad, reference_mask), each of shape ``scan_shape``.

        Examples
        --------
        >>> fields = StrainField(theta_deg=1.0).evaluate((6, 3))
        >>> [f.shape for f in fields][0], round(float(np.rad2deg(fields[3].max())), 12)
        ((6, 3), 1.0)
        """
        rx, ry = _shape2("scan_shape", scan_shape)
        n_ref = math.ceil(self.reference_fraction * rx)
        if n_ref >= rx:
            # Too few rows for a strained region (e.g. a single row): all reference.
            zero = np.zeros((rx, ry))
            return zero, zero.copy(), zero.copy(), zero.copy(), np.ones((rx, ry), dtype=bool)
        x, y = np.meshgrid(np.arange(rx), np.arange(ry), indexing="ij")
        # u is 0 on every reference row and 1 on the last row; v runs 0..1 along y.
        u = np.clip((x - (n_ref - 1)) / (rx - n_ref), 0.0, 1.0)
        v = y / (ry - 1) if ry > 1 else np.zeros_like(u)
        ramp = _smoothstep(u)
        r2 = ((u - 0.65) ** 2 + (v - 0.35) ** 2) / 0.6**2
        bump = np.where(r2 < 1.0, (1.0 - r2) ** 2, 0.0)
        return (
            self.exx * ramp,
            self.eyy * ramp * (0.25 + 0.75 * _smoothstep(v)),
            self.exy * bump / bump.max(),
            np.deg2rad(self.theta_deg) * ramp * (1.0 - 0.75 * _smoothstep(v)),
            x < n_ref,
        )


@dataclass(frozen=True, repr=False, eq=False)
class CrystalTruth(_Truth):
    """Ground truth of a single-crystal scan. Raw px unless stated; n = number of disks.

    Attributes
    ----------
    origins : (Rx, Ry, 2)
        Raw-detector position of the (0, 0) beam.
    hk : (n, 2) int
        Reflection indices; row 0 is the central beam (0, 0).
    centers : (Rx, Ry, n, 2)
        Raw-detector disk centres, ``origin + D @ (h g1_px + k g2_px)``.
    amplitudes : (Rx, Ry, n)
        Flat-top amplitudes, relative units (the envelope times the modulation).
    envelope : (n,)
        Mean amplitude of each reflection (no modulation).
    inside : (Rx, Ry, n) bool
        Whether the disk lies wholly on the detector.
    F : (Rx, Ry, 2, 2)
        Deformation gradient.
    exx, eyy, exy, theta : (Rx, Ry)
        Strain components and rotation (radians); see :attr:`theta_deg`.
    reference_mask : (Rx, Ry) bool
        The unstrained reference region.
    A0, G0 : (2, 2)
        Reference real lattice (Å) and reciprocal lattice (Å⁻¹), columns, real-space frame.
    g1, g2 : (Rx, Ry, 2)
        Local reciprocal lattice vectors in the real-space frame, Å⁻¹.
    g1_px, g2_px : (Rx, Ry, 2)
        The same on the corrected detector, px: ``R(φ) P g / pixel_size``.
    counts_per_amplitude : (Rx, Ry)
        Expected counts of a whole disk of unit amplitude (before noise).
    pixel_size, ellipse, rotation_deg, flip
        The microscope's calibration knobs.

    Examples
    --------
    >>> t = simulate_crystal(scan_shape=(2, 2)).truth
    >>> t.centers.shape, t.F.shape
    ((2, 2, 49, 2), (2, 2, 2, 2))
    """

    origins: np.ndarray
    hk: np.ndarray
    centers: np.ndarray
    amplitudes: np.ndarray
    envelope: np.ndarray
    inside: np.ndarray
    F: np.ndarray
    exx: np.ndarray
    eyy: np.ndarray
    exy: np.ndarray
    theta: np.ndarray
    reference_mask: np.ndarray
    A0: np.ndarray
    G0: np.ndarray
    g1: np.ndarray
    g2: np.ndarray
    g1_px: np.ndarray
    g2_px: np.ndarray
    counts_per_amplitude: np.ndarray
    pixel_size: float
    ellipse: tuple[float, float]
    rotation_deg: float
    flip: bool

    @property
    def theta_deg(self) -> np.ndarray:
        """Lattice rotation in degrees.

        Examples
        --------
        >>> float(simulate_crystal(scan_shape=(4, 2)).truth.theta_deg.max())
        0.3
        """
        return np.rad2deg(self.theta)

    @property
    def order(self) -> np.ndarray:
        """Order max(|h|, |k|) of each reflection, shape (n,).

        Examples
        --------
        >>> np.bincount(simulate_crystal(scan_shape=(2, 2)).truth.order)
        array([ 1,  8, 16, 24])
        """
        return np.abs(self.hk).max(axis=1)

    @property
    def disk_counts(self) -> np.ndarray:
        """Expected counts of each disk if wholly on the detector, (Rx, Ry, n).

        Examples
        --------
        >>> t = simulate_crystal(scan_shape=(2, 2), modulation=0.0).truth
        >>> bool(9000 < t.disk_counts[0, 0, 1] < 15000)
        True
        """
        return self.amplitudes * self.counts_per_amplitude[..., None]


def _reflections(max_order: int) -> np.ndarray:
    """All (h, k) with max(|h|, |k|) <= max_order, central beam first, by order then h, k."""
    n = np.arange(-max_order, max_order + 1)
    hk = np.stack(np.meshgrid(n, n, indexing="ij"), -1).reshape(-1, 2)
    order = np.abs(hk).max(axis=1)
    return hk[np.lexsort((hk[:, 1], hk[:, 0], order))]


def _inside(m: Microscope, centers: np.ndarray) -> np.ndarray:
    margin = m.probe_radius + _CUT * m.edge_width
    shape = np.asarray(m.detector_shape)
    return np.all((centers - margin >= -0.5) & (centers + margin <= shape - 0.5), axis=-1)


def simulate_crystal(
    microscope: Microscope = Microscope(),
    scan_shape=(64, 64),
    lattice: Lattice = Lattice(),
    strain: StrainField = StrainField(),
    max_order: int = 3,
    intensity_sigma: float = 21.0,
    central_beam: float = 1.0,
    modulation: float = 0.2,
    seed: int = 0,
) -> SimulatedScan:
    """A strained single-crystal scan: a square grid of Bragg disks that follows F(r).

    At each position the local reciprocal lattice is ``G = F⁻ᵀ G0`` (real-space frame),
    on the corrected detector ``g_px = R(φ) P G / pixel_size`` and the raw centre of
    reflection (h, k) is ``origin + D @ (h g1_px + k g2_px)``. The origin follows the
    descan (plus ``microscope.descan_jitter``).

    Parameters
    ----------
    microscope : Microscope
        The instrument.
    scan_shape : (int, int)
        Scan positions (Rx, Ry).
    lattice : Lattice
        The unstrained real-space lattice.
    strain : StrainField
        The strain and rotation map.
    max_order : int
        Reflections with max(|h|, |k|) <= max_order, (2 max_order + 1)² disks.
    intensity_sigma : float
        Gaussian envelope (px, corrected frame) of the amplitudes,
        ``exp(-|g_px|² / (2 sigma²))`` with the reference |g|.
    central_beam : float
        Amplitude of the (0, 0) disk.
    modulation : float
        Random amplitude factor ``1 + modulation · U(-1, 1)`` per position and reflection
        (not on the central beam); in [0, 1].
    seed : int
        Random seed.

    Returns
    -------
    SimulatedScan
        With :class:`CrystalTruth`.

    Examples
    --------
    >>> sim = simulate_crystal(Microscope(dose=None), scan_shape=(4, 2), modulation=0.0)
    >>> t = sim.truth
    >>> float(t.exx[t.reference_mask].max()), float(t.exx.max())
    (0.0, 0.02)
    """
    scan_shape = _shape2("scan_shape", scan_shape)
    max_order = _integer("max_order", max_order, 1)
    sigma = _finite("intensity_sigma", intensity_sigma, low=0, low_open=True)
    central_beam = _finite("central_beam", central_beam, low=0)
    modulation = _finite("modulation", modulation, low=0, high=1)
    seed_jitter, seed_amp, seed_noise = _streams(seed, "crystal", 3)
    m = microscope
    origins = m.origins(scan_shape, m.descan_jitter, np.random.default_rng(seed_jitter))

    exx, eyy, exy, theta, reference = strain.evaluate(scan_shape)
    f = deformation_from_strain(exx, eyy, exy, theta)
    g0 = lattice.reciprocal
    g = np.swapaxes(np.linalg.inv(f), -1, -2) @ g0  # G = F⁻ᵀ G0
    to_px = m.real_to_detector / m.pixel_size
    g_px = to_px @ g
    hk = _reflections(max_order)
    centers = origins[..., None, :] + np.einsum("xyij,nj->xyni", m.distortion @ g_px, hk)
    envelope = np.exp(-np.sum((hk @ (to_px @ g0).T) ** 2, axis=1) / (2 * sigma**2))
    envelope[0] = central_beam
    factor = 1.0 + modulation * np.random.default_rng(seed_amp).uniform(-1, 1, centers.shape[:3])
    factor[..., 0] = 1.0
    amplitudes = envelope * factor

    n_pos, n = scan_shape[0] * scan_shape[1], len(hk)
    data, per_amp = _render_scan(
        m,
        scan_shape,
        np.ascontiguousarray(centers.reshape(-1, 2)),
        np.ascontiguousarray(amplitudes.reshape(-1)),
        np.arange(n_pos + 1, dtype=np.int64) * n,
        origins,
        m.background_fraction,
        seed_noise,
    )
    truth = CrystalTruth(
        origins=origins,
        hk=hk,
        centers=centers,
        amplitudes=amplitudes,
        envelope=envelope,
        inside=_inside(m, centers),
        F=f,
        exx=exx,
        eyy=eyy,
        exy=exy,
        theta=theta,
        reference_mask=reference,
        A0=lattice.real,
        G0=g0,
        g1=g[..., 0],
        g2=g[..., 1],
        g1_px=g_px[..., 0],
        g2_px=g_px[..., 1],
        counts_per_amplitude=per_amp,
        pixel_size=m.pixel_size,
        ellipse=m.ellipse,
        rotation_deg=m.rotation_deg,
        flip=m.flip,
    )
    return SimulatedScan(data, truth, m)


# --------------------------------------------------------------------------- polycrystal

_GOLD = fcc(4.078)


@dataclass(frozen=True, repr=False, eq=False)
class PolycrystalTruth(_Truth):
    """Ground truth of a polycrystal (calibration) scan; spots in CSR layout.

    The spots of position ``p = rx * Ry + ry`` are ``offsets[p]:offsets[p + 1]``. The
    central beam is not among the spots; it sits at ``origins``.

    Attributes
    ----------
    origins : (Rx, Ry, 2)
        Raw-detector position of the central beam, px.
    offsets : (Rx·Ry + 1,) int
        CSR offsets into the spot arrays.
    centers : (m, 2)
        Raw-detector spot centres, px.
    centers_corrected : (m, 2)
        Spot offsets from the origin in the corrected frame, px (on a circle of the ring's
        radius).
    ring : (m,) int
        Index of each spot's ring.
    amplitudes : (m,)
        Flat-top amplitudes, relative units (central beam: ``central_beam``).
    ring_d : (r,)
        d-spacing of each ring, Å.
    ring_radii : (r,)
        Ring radius in the corrected frame, px: ``1 / (d · pixel_size)``.
    ring_hkl : (r, 3) int
        A representative reflection of each ring.
    counts_per_amplitude : (Rx, Ry)
        Expected counts of a whole disk of unit amplitude.
    central_beam, pixel_size, ellipse
        Knobs used.

    Examples
    --------
    >>> t = simulate_polycrystal(scan_shape=(2, 2)).truth
    >>> t.ring_hkl
    array([[1, 1, 1],
           [2, 0, 0],
           [2, 2, 0]])
    """

    origins: np.ndarray
    offsets: np.ndarray
    centers: np.ndarray
    centers_corrected: np.ndarray
    ring: np.ndarray
    amplitudes: np.ndarray
    ring_d: np.ndarray
    ring_radii: np.ndarray
    ring_hkl: np.ndarray
    counts_per_amplitude: np.ndarray
    central_beam: float
    pixel_size: float
    ellipse: tuple[float, float]


def _fitting_rings(m: Microscope, crystal: Crystal, origins: np.ndarray, min_separation: float):
    """Rings whose disks stay on the detector at every origin, after the distortion."""
    margin = m.probe_radius + 3 * m.edge_width + 2
    shape = np.asarray(m.detector_shape) - 1.0
    room = np.minimum(origins.reshape(-1, 2), shape - origins.reshape(-1, 2)).min(axis=0) - margin
    # A circle of radius r becomes an ellipse reaching r·sqrt((D Dᵀ)_ii) along axis i.
    stretch = np.sqrt(np.diag(m.distortion @ m.distortion.T))
    r_max = float(np.min(room / stretch))
    if r_max <= min_separation:
        raise ValueError(
            "no diffraction ring fits on the detector with these knobs; use a larger "
            "detector_shape, a larger pixel_size or a smaller probe_radius"
        )
    refl = crystal.reflections(d_min=1.0 / (r_max * m.pixel_size))
    radii = 1.0 / (refl.d * m.pixel_size)
    # Spots closer to the central beam than the minimum separation could never be placed.
    keep = (radii <= r_max) & (radii >= min_separation)
    if not keep.any():
        raise ValueError(
            f"no ring of {crystal.name or 'the crystal'} fits between {min_separation:.1f} and "
            f"{r_max:.1f} px; change pixel_size or the crystal"
        )
    return refl.d[keep], radii[keep], refl.hkl[keep], refl.structure_factor[keep]


def _place_pairs(rng, n_pairs, radii, base, min_separation, max_tries):
    """Friedel pairs at random azimuths, no two disks (nor the centre) closer than allowed."""
    placed = [(0.0, 0.0)]
    spots, rings, amps = [], [], []
    for ring in np.repeat(np.arange(len(radii)), n_pairs):
        r = radii[ring]
        for _ in range(max_tries):
            phi = rng.uniform(0.0, 2.0 * math.pi)
            x, y = r * math.cos(phi), r * math.sin(phi)
            if all(
                min(math.hypot(x - a, y - b), math.hypot(x + a, y + b)) >= min_separation
                for a, b in placed
            ):
                amp = base[ring] * rng.uniform(0.5, 1.5)
                placed += [(x, y), (-x, -y)]
                spots += [(x, y), (-x, -y)]
                rings += [ring, ring]
                amps += [amp, amp]
                break
    return spots, rings, amps


def _polycrystal_spots(rng, n_pos, pairs_per_ring, radii, base, min_separation, max_tries):
    """CSR offsets, corrected-frame offsets, ring index and amplitude of every spot."""
    n_pairs = rng.poisson(pairs_per_ring, size=(n_pos, len(radii)))
    placed = [
        _place_pairs(rng, n_pairs[p], radii, base, min_separation, max_tries) for p in range(n_pos)
    ]
    counts = [len(spots) for spots, _, _ in placed]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    corrected = np.array([s for spots, _, _ in placed for s in spots], dtype=float).reshape(-1, 2)
    ring = np.array([r for _, rings, _ in placed for r in rings], dtype=np.int64)
    amps = np.array([a for _, _, amp in placed for a in amp], dtype=float)
    return offsets, corrected, ring, amps


def _with_central_beam(origins, central_beam, centers, amps, offsets):
    """Render lists in CSR layout with the central beam first in each frame."""
    n_pos = len(origins)
    render_offsets = offsets + np.arange(n_pos + 1)
    render_centers = np.empty((len(centers) + n_pos, 2))
    render_amps = np.empty(len(centers) + n_pos)
    is_spot = np.ones(len(render_amps), dtype=bool)
    is_spot[render_offsets[:-1]] = False
    render_centers[~is_spot], render_amps[~is_spot] = origins, central_beam
    render_centers[is_spot], render_amps[is_spot] = centers, amps
    return render_centers, render_amps, render_offsets


def simulate_polycrystal(
    microscope: Microscope = Microscope(),
    scan_shape=(20, 20),
    crystal: Crystal = _GOLD,
    pairs_per_ring: float = 1.5,
    seed: int = 0,
    *,
    central_beam: float = 1.0,
    spot_amplitude: float = 0.6,
    intensity_sigma: float = 60.0,
    max_tries: int = 50,
) -> SimulatedScan:
    """A polycrystal calibration scan: Friedel pairs of spots on the crystal's rings.

    Rings: every allowed d-spacing of ``crystal`` whose ring (radius ``1/(d·pixel_size)``
    px in the corrected frame) keeps its disks on the detector at every scan position
    after distortion and descan, with a margin of ``probe_radius + 3 edge_width + 2`` px.
    Per position and ring, Poisson(``pairs_per_ring``) pairs (+g, −g) at uniform random
    azimuths. A spot's amplitude is ``spot_amplitude · |F|²/max|F|² ·
    exp(−r²/(2 intensity_sigma²)) · U(0.5, 1.5)`` (a random grain factor, equal for the
    pair). Azimuths are rejection-sampled so that no two disks (central beam included)
    are closer than ``2 probe_radius + 4 edge_width + 1`` px in the corrected frame; a
    pair that does not fit after ``max_tries`` draws is dropped.

    Examples
    --------
    >>> sim = simulate_polycrystal(scan_shape=(3, 3), seed=1)
    >>> t = sim.truth
    >>> np.allclose(np.hypot(*t.centers_corrected.T), t.ring_radii[t.ring])
    True
    """
    m = microscope
    scan_shape = _shape2("scan_shape", scan_shape)
    if not isinstance(crystal, Crystal):
        raise ValueError(f"crystal={crystal!r}: give a strainkit.crystal.Crystal, e.g. fcc(4.078)")
    pairs_per_ring = _finite("pairs_per_ring", pairs_per_ring, low=0)
    central_beam = _finite("central_beam", central_beam, low=0)
    spot_amplitude = _finite("spot_amplitude", spot_amplitude, low=0)
    sigma = _finite("intensity_sigma", intensity_sigma, low=0, low_open=True)
    max_tries = _integer("max_tries", max_tries, 1)
    seed_jitter, seed_spots, seed_noise = _streams(seed, "polycrystal", 3)
    origins = m.origins(scan_shape, m.descan_jitter, np.random.default_rng(seed_jitter))
    min_sep = 2 * m.probe_radius + 4 * m.edge_width + 1
    ring_d, radii, ring_hkl, f2 = _fitting_rings(m, crystal, origins, min_sep)
    base = spot_amplitude * f2 / f2.max() * np.exp(-(radii**2) / (2 * sigma**2))

    n_pos = scan_shape[0] * scan_shape[1]
    offsets, corrected, ring, amps = _polycrystal_spots(
        np.random.default_rng(seed_spots), n_pos, pairs_per_ring, radii, base, min_sep, max_tries
    )
    flat_origins = origins.reshape(-1, 2)
    centers = np.repeat(flat_origins, np.diff(offsets), axis=0) + corrected @ m.distortion.T
    render_centers, render_amps, render_offsets = _with_central_beam(
        flat_origins, central_beam, centers, amps, offsets
    )
    data, per_amp = _render_scan(
        m,
        scan_shape,
        render_centers,
        render_amps,
        render_offsets,
        origins,
        m.background_fraction,
        seed_noise,
    )
    truth = PolycrystalTruth(
        origins=origins,
        offsets=offsets,
        centers=centers,
        centers_corrected=corrected,
        ring=ring,
        amplitudes=amps,
        ring_d=ring_d,
        ring_radii=radii,
        ring_hkl=ring_hkl,
        counts_per_amplitude=per_amp,
        central_beam=central_beam,
        pixel_size=m.pixel_size,
        ellipse=m.ellipse,
    )
    return SimulatedScan(data, truth, m)


# --------------------------------------------------------------------------- images


@dataclass(frozen=True, repr=False, eq=False)
class ImageTruth(_Truth):
    """Ground truth of a HAADF image and its defocused CBED shadow image.

    A HAADF pixel position ``r`` appears in the shadow image at
    ``q = c_Q + M (r − c_R)`` with ``M = D_s · scale · R(φ) · P`` (``D_s`` the detector
    distortion, or the identity when the shadow is undistorted); ``affine = [M | t]``
    with ``t = c_Q − M c_R``.

    Attributes
    ----------
    rotation_deg, flip, scale : float, bool, float
        φ, P and the shadow px per HAADF px.
    c_R, c_Q : (2,)
        Corresponding points in the HAADF and the shadow image, px.
    affine : (2, 3)
        The map HAADF px -> shadow px, see :meth:`real_to_shadow`.
    centers_haadf, centers_shadow : (n, 2)
        Feature centres in each image, px.
    sigmas : (n,)
        Gaussian widths of the features in the HAADF image, px.
    amplitudes : (n,)
        Peak heights of the features in the HAADF image (before the background).
    visible : (n,) bool
        Feature lies inside the bright shadow disk, clear of its edge.
    shadow_center, shadow_radius, shadow_edge : (2,), float, float
        The bright disk: centre (px), radius in the corrected frame and edge width (px).
    shadow_disk : (Qx, Qy) float32
        The noise-free shadow image without features (same units as the shadow).
    ellipse : (float, float)
        The distortion used in the shadow ((1, 0) when undistorted).

    Examples
    --------
    >>> t = simulate_images(n_features=5, image_shape=(64, 64), dose=None).truth
    >>> np.allclose(t.real_to_shadow(t.centers_haadf), t.centers_shadow)
    True
    """

    rotation_deg: float
    flip: bool
    scale: float
    c_R: np.ndarray
    c_Q: np.ndarray
    affine: np.ndarray
    centers_haadf: np.ndarray
    centers_shadow: np.ndarray
    sigmas: np.ndarray
    amplitudes: np.ndarray
    visible: np.ndarray
    shadow_center: np.ndarray
    shadow_radius: float
    shadow_edge: float
    shadow_disk: np.ndarray
    ellipse: tuple[float, float]

    def real_to_shadow(self, points) -> np.ndarray:
        """Map HAADF pixel positions (..., 2) to shadow-image positions (..., 2).

        Examples
        --------
        >>> t = simulate_images(n_features=3, image_shape=(48, 48), dose=None).truth
        >>> np.allclose(t.real_to_shadow(t.c_R), t.c_Q)
        True
        """
        points = np.asarray(points, dtype=float)
        return points @ self.affine[:, :2].T + self.affine[:, 2]


@dataclass(frozen=True, repr=False, eq=False)
class SimulatedImages:
    """A simulated HAADF image, its defocused shadow image and the truth linking them.

    Examples
    --------
    >>> simulate_images(image_shape=(48, 48), n_features=2, dose=None)
    SimulatedImages(haadf=float32[48, 48], shadow=float32[128, 128], truth=ImageTruth)
    """

    haadf: np.ndarray
    shadow: np.ndarray
    truth: ImageTruth
    microscope: Microscope

    def __post_init__(self) -> None:
        _readonly(self.haadf)
        _readonly(self.shadow)

    def __repr__(self) -> str:
        h, s = self.haadf, self.shadow
        return (
            f"SimulatedImages(haadf={h.dtype}{list(h.shape)}, shadow={s.dtype}{list(s.shape)}, "
            "truth=ImageTruth)"
        )


def _place_features(rng, shape, n, margin, min_separation, max_tries=2000):
    """Random sequential placement with a minimum separation, away from the edges."""
    low, high = margin, np.asarray(shape) - 1.0 - margin
    if np.any(high <= low):
        raise ValueError(
            f"image_shape={shape!r} is too small for features {margin:.1f} px from the edges"
        )
    placed = np.empty((0, 2))
    for _ in range(max_tries):
        if len(placed) == n:
            return placed
        p = rng.uniform(low, high)
        if not len(placed) or np.min(np.hypot(*(placed - p).T)) >= min_separation:
            placed = np.vstack([placed, p])
    raise ValueError(
        f"could not place n_features={n} features {min_separation:.1f} px apart in an image "
        f"of shape {tuple(shape)}; lower n_features or min_separation, or enlarge image_shape"
    )


def _gaussians(shape, centers, inverse_cov, amplitudes) -> np.ndarray:
    """Sum of (elliptical) Gaussians a·exp(−½ dᵀ C⁻¹ d), evaluated at pixel centres."""
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(float)
    image = np.zeros(shape)
    for c, inv, a in zip(centers, inverse_cov, amplitudes):  # a few dozen features at most
        d = grid - c
        image += a * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    return image


def _haadf_image(shape, centers, sigmas, amplitudes, phases) -> np.ndarray:
    """Round Gaussian blobs on a weak (~0.1) low-frequency background."""
    x, y = np.meshgrid(*map(np.arange, shape), indexing="ij")
    wave_x = np.sin(2 * math.pi * x / (1.7 * shape[0]) + phases[0])
    wave_y = np.sin(2 * math.pi * y / (1.3 * shape[1]) + phases[1])
    inverse_cov = np.eye(2)[None] / sigmas[:, None, None] ** 2
    return 0.1 * (1 + 0.5 * wave_x * wave_y) + _gaussians(shape, centers, inverse_cov, amplitudes)


def _shadow_disk(shape, center, radius, edge, distortion) -> np.ndarray:
    """Soft-edged bright disk, circular in the corrected frame (flat top 1)."""
    q = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1) - center
    rho = np.hypot(*np.moveaxis(q @ np.linalg.inv(distortion).T, -1, 0))
    return 0.5 * special.erfc((rho - radius) / (math.sqrt(2) * edge))


def simulate_images(
    microscope: Microscope = Microscope(),
    image_shape=(128, 128),
    shadow_shape=None,
    scale: float = 0.8,
    n_features: int = 40,
    shadow_radius: float | None = None,
    contrast: float = 0.5,
    dose: float | None = 1000.0,
    haadf_noise: float = 0.02,
    ellipse_in_shadow: bool = True,
    seed: int = 0,
    *,
    feature_sigma=(1.5, 3.0),
    min_separation: float | None = None,
    shadow_edge: float = 1.5,
) -> SimulatedImages:
    """A HAADF image of nanoparticles and the defocused CBED shadow image of the same area.

    HAADF: ``n_features`` Gaussian blobs (sigma uniform in ``feature_sigma`` px, peak
    U(0.5, 1)) at least ``min_separation`` px apart (default 4 · max sigma) and
    3 · max sigma + 2 px from the edges, on a weak low-frequency background (~0.1).
    Shadow: a bright soft-edged disk (radius ``shadow_radius`` in the corrected frame,
    default 0.42 · min(shadow_shape); distorted like the detector when
    ``ellipse_in_shadow``) times ``1 − contrast · Σ features``, each feature mapped by
    ``q = c_Q + M (r − c_R)``, ``M = D_s · scale · R(φ) P``, its covariance by
    ``M Σ Mᵀ`` (analytic elliptical Gaussians at exact positions; peaks normalised to
    the brightest feature). Rotation and flip come from ``microscope``.

    Noise: with a ``dose`` (counts per px of the bright disk) the shadow is Poisson and
    the HAADF gets Gaussian noise of ``haadf_noise`` (relative to a feature peak of 1);
    ``dose=None`` gives both noise-free. Both images are float32.

    Examples
    --------
    >>> sim = simulate_images(Microscope(rotation_deg=30.0, flip=False), n_features=4,
    ...                       image_shape=(64, 64), dose=None)
    >>> sim.truth.rotation_deg, sim.truth.flip
    (30.0, False)
    """
    m = microscope
    image_shape = _shape2("image_shape", image_shape, 8)
    shadow_shape = (
        m.detector_shape if shadow_shape is None else _shape2("shadow_shape", shadow_shape, 8)
    )
    scale = _finite("scale", scale, low=0, low_open=True)
    n_features = _integer("n_features", n_features, 1)
    if shadow_radius is None:
        shadow_radius = 0.42 * min(shadow_shape)
    shadow_radius = _finite("shadow_radius", shadow_radius, low=0, low_open=True)
    contrast = _finite("contrast", contrast, low=0, high=1)
    if dose is not None:
        dose = _finite("dose", dose, low=0, low_open=True)
    haadf_noise = _finite("haadf_noise", haadf_noise, low=0)
    sigma_lo, sigma_hi = _pair("feature_sigma", feature_sigma)
    if not 0 < sigma_lo <= sigma_hi:
        raise ValueError(f"feature_sigma={feature_sigma!r}: give (low, high) with 0 < low <= high")
    if min_separation is None:
        min_separation = 4.0 * sigma_hi
    min_separation = _finite("min_separation", min_separation, low=0)
    shadow_edge = _finite("shadow_edge", shadow_edge, low=0, low_open=True)
    seed_features, seed_noise = _streams(seed, "images", 2)
    rng = np.random.default_rng(seed_features)

    centers = _place_features(rng, image_shape, n_features, 3 * sigma_hi + 2, min_separation)
    sigmas = rng.uniform(sigma_lo, sigma_hi, n_features)
    amplitudes = rng.uniform(0.5, 1.0, n_features)
    phases = rng.uniform(0, 2 * math.pi, 2)
    c_r = (np.asarray(image_shape) - 1) / 2 + rng.uniform(-2, 2, 2)
    disk_center = (np.asarray(shadow_shape) - 1) / 2 + np.asarray(m.descan_offset)
    c_q = disk_center + rng.uniform(-2, 2, 2)
    haadf = _haadf_image(image_shape, centers, sigmas, amplitudes, phases)

    d_s = m.distortion if ellipse_in_shadow else np.eye(2)
    mapping = d_s @ (scale * m.real_to_detector)
    offset = c_q - mapping @ c_r
    centers_q = centers @ mapping.T + offset
    inverse_cov = np.linalg.inv(mapping @ mapping.T)[None] / sigmas[:, None, None] ** 2
    absorption = _gaussians(shadow_shape, centers_q, inverse_cov, amplitudes / amplitudes.max())
    disk = _shadow_disk(shadow_shape, disk_center, shadow_radius, shadow_edge, d_s)
    disk *= 1.0 if dose is None else dose
    shadow = disk * np.clip(1.0 - contrast * absorption, 0.0, None)

    # Visible: the feature (out to 4 sigma) lies on the flat top of the disk (4 edge widths in).
    distance = np.hypot(*((centers_q - disk_center) @ np.linalg.inv(d_s).T).T)
    visible = distance + 4 * scale * sigmas + 4 * shadow_edge <= shadow_radius
    if dose is not None:
        noise = np.random.default_rng(seed_noise)
        shadow = noise.poisson(shadow).astype(float)
        haadf = haadf + haadf_noise * noise.standard_normal(haadf.shape)
    truth = ImageTruth(
        rotation_deg=m.rotation_deg,
        flip=m.flip,
        scale=scale,
        c_R=c_r,
        c_Q=c_q,
        affine=np.hstack([mapping, offset[:, None]]),
        centers_haadf=centers,
        centers_shadow=centers_q,
        sigmas=sigmas,
        amplitudes=amplitudes,
        visible=visible,
        shadow_center=disk_center,
        shadow_radius=shadow_radius,
        shadow_edge=shadow_edge,
        shadow_disk=disk.astype(np.float32),
        ellipse=m.ellipse if ellipse_in_shadow else (1.0, 0.0),
    )
    return SimulatedImages(haadf.astype(np.float32), shadow.astype(np.float32), truth, m)


# --------------------------------------------------------------------------- workflow and files


@dataclass(frozen=True, repr=False, eq=False)
class Workflow:
    """The four data sets of a strain experiment, all taken with one microscope.

    Examples
    --------
    >>> wf = simulate_workflow(vacuum_shape=(2, 2), calibration_shape=(2, 2),
    ...                        experiment_shape=(4, 2), image_shape=(48, 48), n_features=3)
    >>> wf.experiment.data.shape
    (4, 2, 128, 128)
    """

    vacuum: SimulatedScan
    calibration: SimulatedScan
    images: SimulatedImages
    experiment: SimulatedScan
    microscope: Microscope
    seed: int

    def __repr__(self) -> str:
        return (
            f"Workflow(vacuum={self.vacuum!r}, calibration={self.calibration!r}, "
            f"images={self.images!r}, experiment={self.experiment!r}, seed={self.seed})"
        )


def simulate_workflow(
    microscope: Microscope = Microscope(),
    seed: int = 0,
    *,
    vacuum_shape=(10, 10),
    calibration_shape=(20, 20),
    experiment_shape=(64, 64),
    image_shape=(128, 128),
    n_features: int = 40,
) -> Workflow:
    """Vacuum, calibration (gold polycrystal), HAADF/shadow images and a strained crystal.

    Every scan uses its own random streams of ``seed``, so changing one size leaves the
    other data sets unchanged. All other knobs take their defaults.

    Examples
    --------
    >>> wf = simulate_workflow(vacuum_shape=(1, 1), calibration_shape=(1, 1),
    ...                        experiment_shape=(2, 1), image_shape=(48, 48), n_features=2)
    >>> wf.microscope is wf.experiment.microscope
    True
    """
    seed = _seed(seed)
    return Workflow(
        vacuum=simulate_vacuum(microscope, vacuum_shape, seed=seed),
        calibration=simulate_polycrystal(microscope, calibration_shape, seed=seed),
        images=simulate_images(microscope, image_shape, n_features=n_features, seed=seed),
        experiment=simulate_crystal(microscope, experiment_shape, seed=seed),
        microscope=microscope,
        seed=seed,
    )


_KIND_NAMES = {VacuumTruth: "vacuum", CrystalTruth: "crystal", PolycrystalTruth: "polycrystal"}


def _write_truth(group: h5py.Group, truth, microscope: Microscope, kind: str, seed: int) -> None:
    """Arrays as datasets; scalars, the microscope and provenance as JSON-text attributes."""
    for name, value in truth.to_dict().items():
        if isinstance(value, np.ndarray):
            group.create_dataset(name, data=value)
        else:
            group.attrs[name] = json.dumps(_jsonable(value))
    group.attrs["microscope"] = json.dumps(microscope.to_dict())
    group.attrs["kind"] = json.dumps(kind)
    group.attrs["seed"] = json.dumps(seed)
    group.attrs["strainkit_version"] = json.dumps(__version__)


def _write_scan(path: Path, sim: SimulatedScan, seed: int) -> Path:
    _, ry, qx, qy = sim.data.shape
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        # One scan row per chunk: readers stream the scan row by row.
        f.create_dataset("data", data=sim.data, chunks=(1, ry, qx, qy))
        _write_truth(
            f.create_group("truth"), sim.truth, sim.microscope, _KIND_NAMES[type(sim.truth)], seed
        )
    return path


def _write_images(path: Path, sim: SimulatedImages, seed: int) -> Path:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("haadf", data=sim.haadf)
        f.create_dataset("shadow", data=sim.shadow)
        _write_truth(f.create_group("truth"), sim.truth, sim.microscope, "images", seed)
    return path


def write_demo(
    directory: str | os.PathLike,
    seed: int = 0,
    microscope: Microscope = Microscope(),
    **sizes,
) -> dict[str, Path]:
    """Simulate a workflow and write it as four HDF5 files in ``directory`` (created).

    ``vacuum.h5``, ``calibration.h5`` and ``experiment.h5`` hold a 4D dataset ``data``
    (Rx, Ry, Qx, Qy), uncompressed, one scan row per chunk; ``images.h5`` holds 2D
    datasets ``haadf`` and ``shadow``. Each file has a group ``truth``: every truth array
    as a dataset, every scalar as a JSON-text attribute, plus the attributes
    ``microscope`` (all knobs), ``kind``, ``seed`` and ``strainkit_version``. Files are
    written atomically. ``sizes`` are passed to :func:`simulate_workflow`.

    Returns
    -------
    dict
        ``{"vacuum": path, "calibration": path, "images": path, "experiment": path}``.

    Examples
    --------
    >>> import tempfile
    >>> paths = write_demo(tempfile.mkdtemp(), vacuum_shape=(1, 1), calibration_shape=(1, 1),
    ...                    experiment_shape=(2, 1), image_shape=(48, 48), n_features=2)
    >>> sorted(paths)
    ['calibration', 'experiment', 'images', 'vacuum']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wf = simulate_workflow(microscope, seed, **sizes)
    return {
        "vacuum": _write_scan(directory / "vacuum.h5", wf.vacuum, wf.seed),
        "calibration": _write_scan(directory / "calibration.h5", wf.calibration, wf.seed),
        "images": _write_images(directory / "images.h5", wf.images, wf.seed),
        "experiment": _write_scan(directory / "experiment.h5", wf.experiment, wf.seed),
    }


def read_truth(path: str | os.PathLike) -> dict:
    """The ``truth`` group of a file written by :func:`write_demo`, as a dict.

    Arrays come back as numpy arrays, attributes decoded from JSON (tuples as lists);
    ``Microscope(**truth["microscope"])`` rebuilds the instrument.

    Examples
    --------
    >>> import tempfile
    >>> paths = write_demo(tempfile.mkdtemp(), vacuum_shape=(1, 1), calibration_shape=(1, 1),
    ...                    experiment_shape=(2, 1), image_shape=(48, 48), n_features=2)
    >>> truth = read_truth(paths["experiment"])
    >>> truth["kind"], truth["hk"].shape, truth["microscope"]["dose"]
    ('crystal', (49, 2), 200000.0)
    """
    with open_hdf5(path, "a file written by strainkit.simulate.write_demo") as f:
        if "truth" not in f:
            raise FileFormatError(
                f"{os.fspath(path)!r} has no 'truth' group; read_truth reads the files that "
                "write_demo writes"
            )
        group = f["truth"]
        truth = {name: group[name][()] for name in group}
        truth.update({name: json.loads(value) for name, value in group.attrs.items()})
    return truth


# --------------------------------------------------------------------------- Cramér–Rao bound


@dataclass(frozen=True, repr=False, eq=False)
class DiskCenterBound(_Truth):
    """Cramér–Rao bound on the centre of each disk of one pattern.

    Attributes
    ----------
    covariance : (n, 2, 2)
        Lower bound on the covariance of an unbiased centre estimate, px².
    rms : (n,)
        ``sqrt(trace(covariance))``: bound on the 2D RMS centre error, px.
    counts : (n,)
        Expected electrons in each disk (on the detector).
    hk, order : (n, 2), (n,) or None
        Reflection indices and max(|h|, |k|), for crystal patterns.

    Examples
    --------
    >>> b = disk_center_crb((32, 32), [[15.5, 15.5]], [1.0], dose=1e4)
    >>> b.rms.shape, b.covariance.shape
    ((1,), (1, 2, 2))
    """

    covariance: np.ndarray
    rms: np.ndarray
    counts: np.ndarray
    hk: np.ndarray | None = None
    order: np.ndarray | None = None


def _unit_disk_jacobians(shape, centers, radius, edge_width, oversample, psf_sigma):
    """(n, 3, pixels): each unit disk and its derivatives by its centre, through the PSF."""
    jac = np.zeros((len(centers), 3, *shape))
    _disk_jacobian(jac, centers, float(radius), float(edge_width), int(oversample), _TABLE)
    if psf_sigma > 0:
        jac = ndimage.gaussian_filter(jac, (0, 0, psf_sigma, psf_sigma), mode="constant")
    return jac.reshape(len(centers), 3, -1)


def disk_center_crb(
    shape,
    centers,
    amplitudes,
    *,
    radius: float = 6.0,
    edge_width: float = 0.5,
    oversample: int = 2,
    origin=None,
    background_fraction: float = 0.0,
    background_width: float = 20.0,
    psf_sigma: float = 0.0,
    dose: float,
) -> DiskCenterBound:
    """Cramér–Rao bound on each disk centre for the pattern :func:`render_pattern` models.

    The expected counts ``μ`` are those of :func:`render_pattern` with the same keywords
    (``Microscope.render_kwargs()`` supplies them). For Poisson counts the Fisher
    information of parameters a, b is ``Σ_pixels ∂μ/∂a ∂μ/∂b / μ``. Each disk has three
    parameters, its centre (x, y) and its amplitude (a nuisance); all other disks, the
    radius, edge width and background are taken as known. The derivatives are analytic
    (the radial derivative of 0.5·erfc is a Gaussian), averaged over the same sub-pixel
    grid as the rendering and blurred by the same PSF.

    Parameters
    ----------
    shape, centers, amplitudes
        Detector shape, disk centres (n, 2) px and relative amplitudes (n,).
    radius, edge_width, oversample, origin, background_fraction, background_width, psf_sigma
        As in :func:`render_pattern`.
    dose : float
        Expected electrons per pattern (required: the bound scales as 1/sqrt(dose)).

    Returns
    -------
    DiskCenterBound
        NaN for a disk with no counts on the detector.

    Examples
    --------
    >>> b1 = disk_center_crb((32, 32), [[15.5, 15.5]], [1.0], dose=1e4)
    >>> b4 = disk_center_crb((32, 32), [[15.5, 15.5]], [1.0], dose=4e4)
    >>> round(float(b1.rms[0] / b4.rms[0]), 9)
    2.0
    """
    if dose is None:
        raise ValueError(
            "disk_center_crb needs dose=<expected electrons per pattern>; the "
            "bound depends on the counts"
        )
    kwargs = dict(
        radius=radius,
        edge_width=edge_width,
        oversample=oversample,
        origin=origin,
        background_fraction=background_fraction,
        background_width=background_width,
        psf_sigma=psf_sigma,
        dose=dose,
    )
    mu = render_pattern(shape, centers, amplitudes, **kwargs).ravel()
    centers, amplitudes = _disk_arrays(centers, amplitudes)
    jac = _unit_disk_jacobians(
        _shape2("shape", shape), centers, radius, edge_width, oversample, psf_sigma
    )
    total = np.sum(amplitudes[:, None] * jac[:, 0])
    if not total > 0:
        raise ValueError("disk_center_crb: no disk light falls on the detector; check centers")
    # Same normalisation as render_pattern: relative units -> expected counts.
    per_unit = dose * (1.0 - background_fraction) / total
    jac[:, 1:] *= (per_unit * amplitudes)[:, None, None]
    weight = np.divide(1.0, mu, np.zeros_like(mu), where=mu > 0)
    fisher = np.einsum("kap,kbp->kab", jac * weight, jac)
    counts = per_unit * amplitudes * jac[:, 0].sum(axis=1)
    covariance = np.full((len(centers), 2, 2), np.nan)
    ok = (counts > 0) & (np.linalg.det(fisher) > 0)
    covariance[ok] = np.linalg.inv(fisher[ok])[:, 1:, 1:]  # parameters: amplitude, x, y
    rms = np.sqrt(np.trace(covariance, axis1=1, axis2=2))
    return DiskCenterBound(covariance=covariance, rms=rms, counts=counts)


def crystal_disk_crb(
    sim: SimulatedScan,
    position=(0, 0),
    *,
    mean_amplitudes: bool = False,
    dose: float | None = None,
) -> DiskCenterBound:
    """Cramér–Rao bounds on the disk centres of one position of :func:`simulate_crystal`.

    Parameters
    ----------
    sim : SimulatedScan
        A crystal scan.
    position : (int, int)
        Scan position (rx, ry).
    mean_amplitudes : bool
        Use the mean amplitudes (``truth.envelope``, no modulation) instead of the
        position's actual amplitudes.
    dose : float, optional
        Electrons per pattern; default ``sim.microscope.dose``.

    Returns
    -------
    DiskCenterBound
        With ``hk`` and ``order`` set.

    Examples
    --------
    >>> b = crystal_disk_crb(simulate_crystal(scan_shape=(1, 2)), mean_amplitudes=True)
    >>> bool(np.nanmean(b.rms[b.order == 1]) < np.nanmean(b.rms[b.order == 2]))
    True
    """
    if not isinstance(getattr(sim, "truth", None), CrystalTruth):
        raise ValueError("crystal_disk_crb needs a scan from simulate_crystal")
    t, m = sim.truth, sim.microscope
    try:
        i, j = (int(v) for v in position)
    except (TypeError, ValueError):
        raise ValueError(f"position={position!r}: give (rx, ry) scan indices") from None
    if not (0 <= i < t.exx.shape[0] and 0 <= j < t.exx.shape[1]):
        raise ValueError(f"position={position!r} lies outside the scan {t.exx.shape}")
    kwargs = m.render_kwargs()
    kwargs["dose"] = m.dose if dose is None else dose
    amplitudes = t.envelope if mean_amplitudes else t.amplitudes[i, j]
    bound = disk_center_crb(
        m.detector_shape, t.centers[i, j], amplitudes, origin=t.origins[i, j], **kwargs
    )
    return DiskCenterBound(bound.covariance, bound.rms, bound.counts, hk=t.hk, order=t.order)
