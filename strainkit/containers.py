"""The data containers: ``DataCube``, ``BraggPeaks``, ``LatticeMap`` and ``StrainMap``.

Containers are small, immutable and validated on construction: a container that exists
holds consistent, finite data (missing positions are NaN with a False mask, never a
silent zero). Arrays they hold are read-only; operations return new containers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np

from strainkit._frozen import (
    FRAMES,
    UNITS,
    _check_choice,
    _check_finite,
    _check_shape2,
    _Frozen,
    _frozen_metadata,
    _readonly,
)
from strainkit._registry import register
from strainkit.datacube import DataCube

__all__ = ["BraggPeaks", "DataCube", "LatticeMap", "PositionPeaks", "StrainMap"]


# ---------------------------------------------------------------------------- BraggPeaks


class PositionPeaks(NamedTuple):
    """The peaks at one scan position (read-only views into a ``BraggPeaks``).

    Examples
    --------
    >>> peaks = BraggPeaks([1.0, 2.0, 3.0], [0.0] * 3, [5.0] * 3, [1.0] * 3, [0, 1, 3], (1, 2))
    >>> peaks[0, 1].qx
    array([2., 3.])
    """

    qx: np.ndarray
    qy: np.ndarray
    intensity: np.ndarray
    quality: np.ndarray


@register
class BraggPeaks(_Frozen):
    """All Bragg peaks of a scan as flat arrays with CSR offsets.

    The peaks of flat position ``p = i * Ry + j`` are ``offsets[p]:offsets[p + 1]``.

    Parameters
    ----------
    qx, qy : array of float, shape (n,)
        Peak positions along detector/real x (axis 0) and y (axis 1), in ``units``.
    intensity, quality : array of float, shape (n,)
        Correlation intensity and a quality figure (larger is better).
    offsets : array of int, shape (Rx * Ry + 1,)
        CSR offsets: starts at 0, non-decreasing, ends at n.
    scan_shape : (int, int)
    units : {'px', 'A^-1'}
    frame : {'detector', 'real'}
        'detector' until the rotation calibration maps peaks to the real-space frame.
    calibrations : tuple of str
        Names of the calibrations applied, in order (e.g. ``('origin', 'ellipse')``).
    detector_shape : (int, int) or None
        The (Qx, Qy) of the patterns the peaks came from.
    metadata : dict, optional
        JSON-serialisable facts (e.g. calibration values applied).

    Examples
    --------
    >>> peaks = BraggPeaks.from_positions(
    ...     [np.array([[10.0, 12.0, 5.0, 1.0]]), np.zeros((0, 4))], scan_shape=(1, 2)
    ... )
    >>> peaks
    BraggPeaks(scan_shape=(1, 2), n_peaks=1, units='px', frame='detector', calibrations=())
    >>> peaks.counts
    array([[1, 0]])
    >>> peaks[0, 0].qx
    array([10.])
    """

    _fields = (
        "qx",
        "qy",
        "intensity",
        "quality",
        "offsets",
        "scan_shape",
        "units",
        "frame",
        "calibrations",
        "detector_shape",
        "metadata",
    )

    def __init__(
        self,
        qx,
        qy,
        intensity,
        quality,
        offsets,
        scan_shape,
        *,
        units: str = "px",
        frame: str = "detector",
        calibrations: tuple[str, ...] = (),
        detector_shape: tuple[int, int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        owner = "BraggPeaks"
        scan_shape = _check_shape2(scan_shape, "scan_shape", owner)
        cols = {}
        for name, value in (
            ("qx", qx),
            ("qy", qy),
            ("intensity", intensity),
            ("quality", quality),
        ):
            arr = _readonly(value, np.float64, name, owner)
            if arr.ndim != 1:
                raise ValueError(f"{owner}: {name} must be 1D, got shape {arr.shape}")
            _check_finite(arr, name, owner)
            cols[name] = arr
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{owner}: qx, qy, intensity, quality differ in length: {lengths}")
        n = lengths["qx"]
        offsets = _readonly(offsets, np.int64, "offsets", owner)
        n_pos = scan_shape[0] * scan_shape[1]
        if offsets.shape != (n_pos + 1,):
            raise ValueError(
                f"{owner}: offsets must have Rx*Ry+1 = {n_pos + 1} entries for scan_shape "
                f"{scan_shape}, got shape {offsets.shape}"
            )
        if offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
            raise ValueError(
                f"{owner}: offsets must start at 0, never decrease and end at n_peaks={n}; "
                f"got start {offsets[0]}, end {offsets[-1]}"
            )
        if detector_shape is not None:
            detector_shape = _check_shape2(detector_shape, "detector_shape", owner)
        for name, value in cols.items():
            self._set(name, value)
        self._set("offsets", offsets)
        self._set("scan_shape", scan_shape)
        self._set("units", _check_choice(units, UNITS, "units", owner))
        self._set("frame", _check_choice(frame, FRAMES, "frame", owner))
        self._set("calibrations", tuple(str(c) for c in calibrations))
        self._set("detector_shape", detector_shape)
        self._set("metadata", _frozen_metadata(metadata, owner))

    @classmethod
    def from_positions(cls, per_position, scan_shape, **kwargs) -> BraggPeaks:
        """Build from a sequence of (k, 4) arrays [qx, qy, intensity, quality], C order.

        Examples
        --------
        >>> BraggPeaks.from_positions([np.ones((2, 4))], scan_shape=(1, 1)).n_peaks
        2
        """
        per_position = [np.asarray(p, dtype=np.float64).reshape(-1, 4) for p in per_position]
        counts = np.array([len(p) for p in per_position], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        table = np.concatenate(per_position) if per_position else np.zeros((0, 4))
        return cls(*table.T, offsets, scan_shape, **kwargs)

    @classmethod
    def empty(cls, scan_shape, **kwargs) -> BraggPeaks:
        """A table with no peaks at any position.

        Examples
        --------
        >>> BraggPeaks.empty((2, 2)).counts.sum()
        np.int64(0)
        """
        n_pos = _check_shape2(scan_shape, "scan_shape", "BraggPeaks")
        z = np.zeros(0)
        return cls(z, z, z, z, np.zeros(n_pos[0] * n_pos[1] + 1, np.int64), scan_shape, **kwargs)

    def __repr__(self) -> str:
        return (
            f"BraggPeaks(scan_shape={self.scan_shape}, n_peaks={self.n_peaks}, "
            f"units={self.units!r}, frame={self.frame!r}, calibrations={self.calibrations})"
        )

    @property
    def n_peaks(self) -> int:
        """Total number of peaks."""
        return len(self.qx)

    @property
    def n_positions(self) -> int:
        """Number of scan positions, Rx * Ry."""
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def centered(self) -> bool:
        """Whether the origin calibration has been applied (q measured from the origin)."""
        return "origin" in self.calibrations

    @property
    def counts(self) -> np.ndarray:
        """Number of peaks at each position, shape (Rx, Ry)."""
        return np.diff(self.offsets).reshape(self.scan_shape)

    @property
    def position_index(self) -> np.ndarray:
        """Flat scan index of each peak, shape (n,), for vectorised per-position work."""
        return np.repeat(np.arange(self.n_positions), np.diff(self.offsets))

    def __getitem__(self, key) -> PositionPeaks:
        i, j = (int(k) for k in key)
        rx_n, ry_n = self.scan_shape
        if not (0 <= i < rx_n and 0 <= j < ry_n):
            raise IndexError(f"scan position {(i, j)} is outside the scan {self.scan_shape}")
        p = i * ry_n + j
        s = slice(self.offsets[p], self.offsets[p + 1])
        return PositionPeaks(self.qx[s], self.qy[s], self.intensity[s], self.quality[s])

    def replace(self, **changes) -> BraggPeaks:
        """A copy with some fields replaced (validated again).

        Examples
        --------
        >>> BraggPeaks.empty((1, 1)).replace(units="A^-1").units
        'A^-1'
        """
        state = self._to_state()
        unknown = set(changes) - set(state)
        if unknown:
            raise ValueError(f"BraggPeaks.replace: unknown field(s) {sorted(unknown)}")
        state.update(changes)
        return type(self)(**state)

    def with_coords(self, qx, qy, *, calibration: str, **changes) -> BraggPeaks:
        """New peaks at (qx, qy) with ``calibration`` appended to ``calibrations``.

        Examples
        --------
        >>> p = BraggPeaks.from_positions([np.ones((1, 4))], scan_shape=(1, 1))
        >>> p.with_coords(p.qx - 1, p.qy - 1, calibration="origin").calibrations
        ('origin',)
        """
        return self.replace(
            qx=qx, qy=qy, calibrations=(*self.calibrations, calibration), **changes
        )

    def filter(self, keep) -> BraggPeaks:
        """Only the peaks where the boolean array ``keep`` (shape (n,)) is True.

        Examples
        --------
        >>> p = BraggPeaks.from_positions([np.ones((3, 4))], scan_shape=(1, 1))
        >>> p.filter(np.array([True, False, True])).n_peaks
        2
        """
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.n_peaks,):
            raise ValueError(f"BraggPeaks.filter: keep must have shape ({self.n_peaks},)")
        counts = np.bincount(self.position_index[keep], minlength=self.n_positions)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return self.replace(
            qx=self.qx[keep],
            qy=self.qy[keep],
            intensity=self.intensity[keep],
            quality=self.quality[keep],
            offsets=offsets,
        )


# ---------------------------------------------------------------------------- maps


class _ScanMap(_Frozen):
    """Per-position fields of shape (Rx, Ry, ...) with a validity mask.

    Valid positions must be finite; invalid positions must be NaN in every float field
    (missing data is explicit, never a silent zero).
    """

    _required: ClassVar[dict[str, tuple[int, ...]]] = {}
    _optional: ClassVar[dict[str, tuple[int, ...]]] = {}

    def _init_fields(self, values: dict[str, Any], mask) -> tuple[int, int]:
        owner = type(self).__name__
        mask = _readonly(mask, bool, "mask", owner)
        if mask.ndim != 2 or min(mask.shape, default=0) <= 0:
            raise ValueError(f"{owner}: mask must be a non-empty 2D (Rx, Ry) array")
        scan = mask.shape
        for name, tail in {**self._required, **self._optional}.items():
            value = values[name]
            if value is None:
                if name in self._required:
                    raise ValueError(f"{owner}: {name} is required")
                self._set(name, None)
                continue
            arr = _readonly(value, np.float64, name, owner)
            if arr.shape != scan + tail:
                raise ValueError(
                    f"{owner}: {name} must have shape {scan + tail} to match the mask, got "
                    f"{arr.shape}"
                )
            # bool arrays, not copies of the values: these maps can be large
            flat = arr.reshape(mask.size, -1)
            keep = mask.reshape(-1)
            finite = np.isfinite(flat)
            if not (finite.all() if keep.all() else finite[keep].all()):
                _check_finite(arr[mask], name, owner, where=" at valid positions")
            if not keep.all() and not np.isnan(flat[~keep]).all():
                raise ValueError(
                    f"{owner}: {name} holds numbers at positions the mask marks invalid; set "
                    "them to NaN (missing data is explicit, never a silent value)"
                )
            self._set(name, arr)
        self._set("mask", mask)
        return scan

    @property
    def scan_shape(self) -> tuple[int, int]:
        """(Rx, Ry)."""
        return self.mask.shape

    @property
    def n_valid(self) -> int:
        """Number of positions where the mask is True."""
        return int(self.mask.sum())


@register
class LatticeMap(_ScanMap):
    """Per-position lattice fit: origin, g1, g2, their covariance, residual and peak count.

    Parameters
    ----------
    origin, g1, g2 : array, shape (Rx, Ry, 2)
        Fitted origin and lattice vectors (x, y) in ``units`` and ``frame``.
    covariance : array, shape (Rx, Ry, 6, 6)
        Covariance of (origin_x, origin_y, g1_x, g1_y, g2_x, g2_y).
    residual : array, shape (Rx, Ry)
        RMS fit residual in ``units``.
    n_peaks : array of int, shape (Rx, Ry)
        Number of peaks used by the fit.
    mask : array of bool, shape (Rx, Ry)
        True where the fit is valid; elsewhere every float field is NaN.
    units, frame, calibrations, metadata
        As in :class:`BraggPeaks`.

    Examples
    --------
    >>> shape = (1, 2)
    >>> lm = LatticeMap(
    ...     origin=np.zeros(shape + (2,)), g1=np.tile([1.0, 0.0], shape + (1,)),
    ...     g2=np.tile([0.0, 1.0], shape + (1,)), covariance=np.zeros(shape + (6, 6)),
    ...     residual=np.zeros(shape), n_peaks=np.full(shape, 9), mask=np.ones(shape, bool))
    >>> lm
    LatticeMap(scan_shape=(1, 2), valid=2/2, units='px', frame='detector')
    """

    _required: ClassVar[dict[str, tuple[int, ...]]] = {
        "origin": (2,),
        "g1": (2,),
        "g2": (2,),
        "covariance": (6, 6),
        "residual": (),
    }
    _fields = (
        *_required,
        "n_peaks",
        "mask",
        "units",
        "frame",
        "calibrations",
        "metadata",
    )

    def __init__(
        self,
        origin,
        g1,
        g2,
        covariance,
        residual,
        n_peaks,
        mask,
        *,
        units: str = "px",
        frame: str = "detector",
        calibrations: tuple[str, ...] = (),
        metadata: Mapping[str, Any] | None = None,
    ):
        owner = "LatticeMap"
        values = {"origin": origin, "g1": g1, "g2": g2, "covariance": covariance}
        scan = self._init_fields({**values, "residual": residual}, mask)
        n_peaks = _readonly(n_peaks, np.int64, "n_peaks", owner)
        if n_peaks.shape != scan or (n_peaks < 0).any():
            raise ValueError(f"{owner}: n_peaks must be non-negative with shape {scan}")
        self._set("n_peaks", n_peaks)
        self._set("units", _check_choice(units, UNITS, "units", owner))
        self._set("frame", _check_choice(frame, FRAMES, "frame", owner))
        self._set("calibrations", tuple(str(c) for c in calibrations))
        self._set("metadata", _frozen_metadata(metadata, owner))

    def __repr__(self) -> str:
        return (
            f"LatticeMap(scan_shape={self.scan_shape}, valid={self.n_valid}/{self.mask.size}, "
            f"units={self.units!r}, frame={self.frame!r})"
        )

    @property
    def g(self) -> np.ndarray:
        """The lattice vectors as columns, shape (Rx, Ry, 2, 2): ``g[..., :, 0]`` is g1."""
        return np.stack([self.g1, self.g2], axis=-1)


@register
class StrainMap(_ScanMap):
    """Per-position strain, rotation, their standard errors and lattice parameters.

    ``exx``, ``eyy``, ``exy`` are components of the (small) strain tensor
    ``(F + F.T)/2 - I`` (``exy`` is the tensor shear, half the engineering shear; tension is
    positive); ``theta_deg`` is ``(F[1,0] - F[0,1])/2`` in degrees (+x toward +y).

    Parameters
    ----------
    exx, eyy, exy, theta_deg : array, shape (Rx, Ry)
    mask : array of bool, shape (Rx, Ry)
    sigma_exx, sigma_eyy, sigma_exy, sigma_theta_deg : array, shape (Rx, Ry), optional
        Standard errors.
    a, b, gamma_deg, sigma_a, sigma_b : array, shape (Rx, Ry), optional
        Absolute lattice parameters (Å) and the angle between a1 and a2 (degrees), when
        the peaks were calibrated in Å⁻¹.
    frame : {'real', 'detector'}
        The frame of x and y.
    frame_angle_deg : float
        Rotation of the output x axis from the frame's x axis (+x toward +y).
    reference_g : array, shape (2, 2), optional
        The reference reciprocal lattice, columns g1 and g2, in the frame and units of the
        peaks (drawn by :func:`strainkit.plot_strain`).
    metadata : dict, optional

    Examples
    --------
    >>> z = np.zeros((2, 2))
    >>> StrainMap(exx=z, eyy=z, exy=z, theta_deg=z, mask=np.ones((2, 2), bool))
    StrainMap(scan_shape=(2, 2), valid=4/4, frame='real', sigmas=False, lattice=False)
    """

    _required: ClassVar[dict[str, tuple[int, ...]]] = {
        "exx": (),
        "eyy": (),
        "exy": (),
        "theta_deg": (),
    }
    _optional: ClassVar[dict[str, tuple[int, ...]]] = {
        name: ()
        for name in (
            "sigma_exx",
            "sigma_eyy",
            "sigma_exy",
            "sigma_theta_deg",
            "a",
            "b",
            "gamma_deg",
            "sigma_a",
            "sigma_b",
        )
    }
    _fields = (
        *_required,
        "mask",
        *_optional,
        "frame",
        "frame_angle_deg",
        "reference_g",
        "metadata",
    )

    def __init__(
        self,
        exx,
        eyy,
        exy,
        theta_deg,
        mask,
        *,
        sigma_exx=None,
        sigma_eyy=None,
        sigma_exy=None,
        sigma_theta_deg=None,
        a=None,
        b=None,
        gamma_deg=None,
        sigma_a=None,
        sigma_b=None,
        frame: str = "real",
        frame_angle_deg: float = 0.0,
        reference_g=None,
        metadata: Mapping[str, Any] | None = None,
    ):
        owner = "StrainMap"
        values = dict(locals())
        self._init_fields(values, mask)
        self._set("frame", _check_choice(frame, FRAMES, "frame", owner))
        if not math.isfinite(float(frame_angle_deg)):
            raise ValueError(f"{owner}: frame_angle_deg must be finite, got {frame_angle_deg}")
        self._set("frame_angle_deg", float(frame_angle_deg))
        if reference_g is not None:
            reference_g = _readonly(reference_g, np.float64, "reference_g", owner)
            if reference_g.shape != (2, 2):
                raise ValueError(
                    f"{owner}: reference_g must be the 2x2 matrix with columns g1, g2, got "
                    f"shape {reference_g.shape}"
                )
            _check_finite(reference_g, "reference_g", owner)
        self._set("reference_g", reference_g)
        self._set("metadata", _frozen_metadata(metadata, owner))

    def __repr__(self) -> str:
        return (
            f"StrainMap(scan_shape={self.scan_shape}, valid={self.n_valid}/{self.mask.size}, "
            f"frame={self.frame!r}, sigmas={self.sigma_exx is not None}, "
            f"lattice={self.a is not None})"
        )


CONTAINERS = (DataCube, BraggPeaks, LatticeMap, StrainMap)
