"""The data containers: ``DataCube``, ``BraggPeaks``, ``LatticeMap`` and ``StrainMap``.

Containers are small, immutable and validated on construction: a container that exists
holds consistent, finite data (missing positions are NaN with a False mask, never a
silent zero). Arrays they hold are read-only; operations return new containers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import h5py
import numpy as np

from strainkit._registry import register

__all__ = ["BraggPeaks", "DataCube", "LatticeMap", "PositionPeaks", "StrainMap"]

UNITS = ("px", "A^-1")
FRAMES = ("detector", "real")


# ---------------------------------------------------------------------------- helpers


def _readonly(value: Any, dtype: Any, name: str, owner: str) -> np.ndarray:
    """A read-only array of ``dtype``; copies unless ``value`` already is one."""
    if isinstance(value, np.ndarray) and value.dtype == dtype and not value.flags.writeable:
        return value
    try:
        arr = np.array(value, dtype=dtype, copy=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{owner}: {name} must be an array of {np.dtype(dtype)}: {err}") from None
    arr.flags.writeable = False
    return arr


def _check_shape2(value: Any, name: str, owner: str) -> tuple[int, int]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 2 or min(shape) <= 0 or any(s != v for s, v in zip(shape, value)):
        raise ValueError(f"{owner}: {name} must be two positive integers, got {value!r}")
    return shape


def _check_choice(value: Any, allowed: tuple[str, ...], name: str, owner: str) -> str:
    if value not in allowed:
        raise ValueError(f"{owner}: {name}={value!r} is not allowed; use one of {allowed}")
    return value


def _check_finite(arr: np.ndarray, name: str, owner: str, where: str = "") -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{owner}: {name} holds {int(bad.sum())} NaN/inf value(s){where} (first at index "
            f"{first}); remove those entries or mark the positions invalid"
        )


def _frozen_metadata(metadata: Mapping[str, Any] | None, owner: str) -> Mapping[str, Any]:
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{owner}: metadata must hold only JSON values (str, numbers, lists, dicts): {err}"
        ) from None
    return MappingProxyType(metadata)


class _Frozen:
    """Attribute assignment is refused after construction."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__} is immutable: build a new one (e.g. with replace() or "
            f"with_coords()) instead of setting {name!r}"
        )

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _to_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]):
        return cls(**state)


# ---------------------------------------------------------------------------- DataCube


class _H5FileArray:
    """A dataset in an HDF5 file that is opened read-only for each read and closed after."""

    def __init__(self, path: str | os.PathLike, name: str):
        self.path = os.fspath(path)
        self.name = name
        with h5py.File(self.path, "r") as f:
            ds = f[name]
            self.shape, self.dtype = tuple(ds.shape), ds.dtype

    def __getitem__(self, key):
        with h5py.File(self.path, "r") as f:
            return f[self.name][key]

    def __repr__(self) -> str:
        return f"{self.path}:{self.name}"


def _check_source(data: Any) -> Any:
    """Accept array-likes with a shape, a numeric dtype and slicing; refuse the rest."""
    if not (hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__")):
        data = np.asarray(data)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 4:
        hint = (
            " For one pattern use data[None, None]; for a stack of N frames from an Rx x Ry "
            "scan use data.reshape(Rx, Ry, Qx, Qy)."
            if len(shape) in (2, 3)
            else ""
        )
        raise ValueError(
            f"DataCube: data must be 4D (Rx, Ry, Qx, Qy), got {len(shape)}D with shape {shape}."
            + hint
        )
    if min(shape) <= 0:
        raise ValueError(f"DataCube: the scan is empty (shape {shape}); every axis needs >= 1")
    kind = np.dtype(data.dtype).kind
    if kind not in "uif":
        raise ValueError(
            f"DataCube: data must hold real numbers (int/uint/float), got dtype {data.dtype}"
        )
    return data


@register
class DataCube(_Frozen):
    """A 4D-STEM scan of shape (Rx, Ry, Qx, Qy), read lazily in blocks of frames.

    Wraps a numpy array, ``np.memmap``, ``h5py.Dataset``, dask array, or a dataset in an
    HDF5 file that is opened only while a block is read (what :func:`strainkit.read`
    returns). Nothing is loaded until a block is asked for; :meth:`crop` and :meth:`bin`
    return lazy views. x is array axis 0 (rows), y axis 1, in both spaces.

    Parameters
    ----------
    data : array-like
        4D array-like with ``shape``, ``dtype`` and slicing, shape (Rx, Ry, Qx, Qy).
    metadata : dict, optional
        JSON-serialisable facts about the scan (e.g. step size, source file).

    Examples
    --------
    >>> cube = DataCube(np.ones((4, 5, 16, 16), dtype=np.uint16))
    >>> cube
    DataCube(scan_shape=(4, 5), detector_shape=(16, 16), dtype=uint16, source=numpy.ndarray)
    >>> cube.bin(q=2).detector_shape
    (8, 8)
    >>> [start for start, frames in cube.iter_blocks(block_size=10)]
    [0, 10]
    """

    _fields = ("metadata",)

    def __init__(self, data: Any, *, metadata: Mapping[str, Any] | None = None):
        if isinstance(data, DataCube):
            raise ValueError("DataCube: data is already a DataCube; use it directly")
        source = _check_source(data)
        s = source.shape
        self._set("_source", source)
        self._set("_rwin", (0, s[0], 0, s[1]))
        self._set("_qwin", (0, s[2], 0, s[3]))
        self._set("_rbin", 1)
        self._set("_qbin", 1)
        self._set("_scale", 1.0)
        self._set("metadata", _frozen_metadata(metadata, "DataCube"))

    @classmethod
    def _from_hdf5(cls, path: str | os.PathLike, name: str, metadata=None) -> DataCube:
        return cls(_H5FileArray(path, name), metadata=metadata)

    # -- shape ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(Rx, Ry, Qx, Qy) of this view."""
        x0, x1, y0, y1 = self._rwin
        qx0, qx1, qy0, qy1 = self._qwin
        r, q = self._rbin, self._qbin
        return ((x1 - x0) // r, (y1 - y0) // r, (qx1 - qx0) // q, (qy1 - qy0) // q)

    @property
    def scan_shape(self) -> tuple[int, int]:
        """(Rx, Ry): the number of scan positions along x and y."""
        return self.shape[:2]

    @property
    def detector_shape(self) -> tuple[int, int]:
        """(Qx, Qy): the pattern size in pixels."""
        return self.shape[2:]

    @property
    def n_frames(self) -> int:
        """Number of scan positions, Rx * Ry."""
        return self.shape[0] * self.shape[1]

    @property
    def dtype(self) -> np.dtype:
        """dtype of the frames this view returns (float32 once binned)."""
        if self._rbin == 1 and self._qbin == 1 and self._scale == 1.0:
            return np.dtype(self._source.dtype)
        return np.dtype(np.float32)

    @property
    def is_view(self) -> bool:
        """Whether this cube is a cropped or binned view of its source."""
        s = self._source.shape
        return (
            self._rwin != (0, s[0], 0, s[1])
            or self._qwin != (0, s[2], 0, s[3])
            or (
                self._rbin,
                self._qbin,
                self._scale,
            )
            != (1, 1, 1.0)
        )

    def __repr__(self) -> str:
        src = self._source
        name = repr(src) if isinstance(src, _H5FileArray) else type(src).__module__.split(".")[0]
        if not isinstance(src, _H5FileArray):
            name = f"{name}.{type(src).__name__}"
        return (
            f"DataCube(scan_shape={self.scan_shape}, detector_shape={self.detector_shape}, "
            f"dtype={self.dtype}, source={name})"
        )

    # -- views ------------------------------------------------------------------------
    def _view(self, **changes) -> DataCube:
        new = object.__new__(DataCube)
        for k in ("_source", "_rwin", "_qwin", "_rbin", "_qbin", "_scale", "metadata"):
            object.__setattr__(new, k, changes.get(k, getattr(self, k)))
        return new

    @staticmethod
    def _window(win, factor, sel, n, name):
        if sel is None:
            return win
        lo, hi = (int(v) for v in sel)
        if not 0 <= lo < hi <= n:
            raise ValueError(
                f"DataCube.crop: {name}={tuple(sel)} is outside 0..{n}; give (start, stop) "
                f"with 0 <= start < stop <= {n}"
            )
        return win[0] + lo * factor, win[0] + hi * factor

    def crop(self, rx=None, ry=None, qx=None, qy=None) -> DataCube:
        """A lazy view of a (start, stop) window along any of the four axes.

        Examples
        --------
        >>> DataCube(np.zeros((8, 8, 32, 32))).crop(rx=(2, 6), qy=(4, 20)).shape
        (4, 8, 32, 16)
        """
        rx_n, ry_n, qx_n, qy_n = self.shape
        x = self._window(self._rwin[:2], self._rbin, rx, rx_n, "rx")
        y = self._window(self._rwin[2:], self._rbin, ry, ry_n, "ry")
        qxw = self._window(self._qwin[:2], self._qbin, qx, qx_n, "qx")
        qyw = self._window(self._qwin[2:], self._qbin, qy, qy_n, "qy")
        return self._view(_rwin=x + y, _qwin=qxw + qyw)

    def bin(self, q: int = 1, r: int = 1, reduce: str = "sum") -> DataCube:
        """A lazy view binned by ``q`` in the detector and ``r`` in the scan.

        Trailing rows/columns that do not fill a bin are dropped. Binned frames are float32.

        Examples
        --------
        >>> cube = DataCube(np.ones((4, 4, 10, 10))).bin(q=3, r=2, reduce="mean")
        >>> cube.shape, float(cube[0, 0][0, 0])
        ((2, 2, 3, 3), 1.0)
        """
        for name, v in (("q", q), ("r", r)):
            if int(v) != v or v < 1:
                raise ValueError(f"DataCube.bin: {name}={v!r} must be a positive integer")
        _check_choice(reduce, ("sum", "mean"), "reduce", "DataCube.bin")
        q, r = int(q), int(r)
        if min(self.shape[0] // r, self.shape[1] // r, self.shape[2] // q, self.shape[3] // q) < 1:
            raise ValueError(f"DataCube.bin: factors q={q}, r={r} are larger than {self.shape}")
        rb, qb = self._rbin * r, self._qbin * q

        def trim(win, b):
            return win[0], win[0] + (win[1] - win[0]) // b * b

        rwin = trim(self._rwin[:2], rb) + trim(self._rwin[2:], rb)
        qwin = trim(self._qwin[:2], qb) + trim(self._qwin[2:], qb)
        scale = self._scale / (q * q * r * r) if reduce == "mean" else self._scale
        return self._view(_rwin=rwin, _qwin=qwin, _rbin=rb, _qbin=qb, _scale=scale)

    # -- reading ----------------------------------------------------------------------
    def _read_rect(self, rx0: int, rx1: int, ry0: int, ry1: int) -> np.ndarray:
        """Frames of view rows rx0:rx1 and columns ry0:ry1, shape (nx, ny, Qx, Qy)."""
        r, q = self._rbin, self._qbin
        x0, y0 = self._rwin[0], self._rwin[2]
        qx0, qx1, qy0, qy1 = self._qwin
        raw = np.asarray(
            self._source[
                x0 + rx0 * r : x0 + rx1 * r,
                y0 + ry0 * r : y0 + ry1 * r,
                qx0:qx1,
                qy0:qy1,
            ]
        )
        if r == 1 and q == 1 and self._scale == 1.0:
            return raw
        nx, ny, nqx, nqy = (
            raw.shape[0] // r,
            raw.shape[1] // r,
            raw.shape[2] // q,
            raw.shape[3] // q,
        )
        binned = raw.reshape(nx, r, ny, r, nqx, q, nqy, q).sum(axis=(1, 3, 5, 7), dtype=np.float64)
        return (binned * self._scale).astype(np.float32)

    def frames(self, start: int, stop: int, *, check_finite: bool = True) -> np.ndarray:
        """Frames of flat positions ``start:stop`` (C order), shape (n, Qx, Qy), read-only.

        Raises a ``ValueError`` naming the first scan position with NaN/inf values.

        Examples
        --------
        >>> cube = DataCube(np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2))
        >>> cube.frames(2, 4)[:, 0, 0]
        array([ 8, 12])
        """
        n = self.n_frames
        if not 0 <= start <= stop <= n:
            raise ValueError(
                f"DataCube.frames: need 0 <= start <= stop <= {n}, got {start}:{stop}"
            )
        ry_n = self.shape[1]
        pieces = []
        pos = start
        while pos < stop:
            row, col = divmod(pos, ry_n)
            if col == 0 and stop - pos >= ry_n:
                rows = (stop - pos) // ry_n
                block = self._read_rect(row, row + rows, 0, ry_n)
                pos += rows * ry_n
            else:
                end = min(stop - pos, ry_n - col) + col
                block = self._read_rect(row, row + 1, col, end)
                pos += end - col
            pieces.append(block.reshape(-1, *block.shape[2:]))
        if not pieces:
            return np.empty((0, *self.detector_shape), dtype=self.dtype)
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if check_finite and out.dtype.kind == "f":
            self._raise_if_not_finite(out, start)
        if out.flags.writeable and out.base is not None:
            out = out.view()
            out.flags.writeable = False
        return out

    def _raise_if_not_finite(self, frames: np.ndarray, start: int) -> None:
        good = np.isfinite(frames).all(axis=(1, 2))
        if not good.all():
            k = int(np.argmin(good))
            pos = divmod(start + k, self.shape[1])
            raise ValueError(
                f"DataCube: the frame at scan position {pos} holds NaN or inf values "
                f"({int((~good).sum())} bad frame(s) among positions {start}.."
                f"{start + len(good) - 1}). Replace them (e.g. np.nan_to_num) or crop them "
                "out before processing."
            )

    def iter_blocks(
        self, block_size: int = 256, *, check_finite: bool = True
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, frames)`` over the whole scan in blocks of about ``block_size``.

        Blocks hold whole scan rows when ``block_size >= Ry`` (the fastest HDF5 reads), so
        memory stays bounded by the block size whatever the scan size.

        Examples
        --------
        >>> cube = DataCube(np.zeros((3, 4, 8, 8)))
        >>> [(s, f.shape[0]) for s, f in cube.iter_blocks(block_size=8)]
        [(0, 8), (8, 4)]
        """
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be a positive integer")
        ry_n = self.shape[1]
        step = block_size // ry_n * ry_n if block_size >= ry_n else int(block_size)
        start = 0
        while start < self.n_frames:
            stop = min(start + step, self.n_frames)
            if step < ry_n:  # stay within one scan row
                stop = min(stop, (start // ry_n + 1) * ry_n)
            yield start, self.frames(start, stop, check_finite=check_finite)
            start = stop

    def __getitem__(self, key) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(
                "DataCube[i, j] returns the frame at scan position (i, j); use crop() for "
                "windows and to_numpy() to load everything"
            )
        i, j = (int(k) for k in key)
        rx_n, ry_n = self.scan_shape
        if not (-rx_n <= i < rx_n and -ry_n <= j < ry_n):
            raise IndexError(f"scan position {(i, j)} is outside the scan {self.scan_shape}")
        i, j = i % rx_n, j % ry_n
        return self.frames(i * ry_n + j, i * ry_n + j + 1)[0]

    def to_numpy(self) -> np.ndarray:
        """Load the whole view into memory as one array (the only method that does).

        Examples
        --------
        >>> DataCube(np.zeros((2, 2, 4, 4))).to_numpy().shape
        (2, 2, 4, 4)
        """
        out = np.empty(self.shape, dtype=self.dtype)
        flat = out.reshape(-1, *self.detector_shape)
        for start, block in self.iter_blocks(block_size=1024, check_finite=False):
            flat[start : start + len(block)] = block
        return out

    def reduce_frames(self, how: str = "mean", block_size: int = 256) -> np.ndarray:
        """The mean, sum or max frame over all scan positions (float64), read in blocks.

        Examples
        --------
        >>> DataCube(np.ones((3, 3, 4, 4))).reduce_frames("sum")[0, 0]
        np.float64(9.0)
        """
        _check_choice(how, ("mean", "sum", "max"), "how", "DataCube.reduce_frames")
        acc = np.full(self.detector_shape, -np.inf if how == "max" else 0.0)
        for _, block in self.iter_blocks(block_size):
            if how == "max":
                np.maximum(acc, block.max(axis=0), out=acc)
            else:
                acc += block.sum(axis=0, dtype=np.float64)
        return acc / self.n_frames if how == "mean" else acc

    def _to_state(self) -> dict[str, Any]:
        return {"metadata": dict(self.metadata)}


# ---------------------------------------------------------------------------- BraggPeaks


class PositionPeaks(NamedTuple):
    """The peaks at one scan position (read-only views into a ``BraggPeaks``)."""

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
            _check_finite(arr[mask], name, owner, where=" at valid positions")
            if not np.isnan(arr[~mask]).all():
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
    _fields = (*_required, "mask", *_optional, "frame", "frame_angle_deg", "metadata")

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
        metadata: Mapping[str, Any] | None = None,
    ):
        owner = "StrainMap"
        values = dict(locals())
        self._init_fields(values, mask)
        self._set("frame", _check_choice(frame, FRAMES, "frame", owner))
        if not math.isfinite(float(frame_angle_deg)):
            raise ValueError(f"{owner}: frame_angle_deg must be finite, got {frame_angle_deg}")
        self._set("frame_angle_deg", float(frame_angle_deg))
        self._set("metadata", _frozen_metadata(metadata, owner))

    def __repr__(self) -> str:
        return (
            f"StrainMap(scan_shape={self.scan_shape}, valid={self.n_valid}/{self.mask.size}, "
            f"frame={self.frame!r}, sigmas={self.sigma_exx is not None}, "
            f"lattice={self.a is not None})"
        )


CONTAINERS = (DataCube, BraggPeaks, LatticeMap, StrainMap)
