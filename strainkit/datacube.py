"""``DataCube``: a 4D-STEM scan read lazily in blocks of frames, with crop and bin views."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from strainkit._frozen import _check_choice, _Frozen, _frozen_metadata
from strainkit._registry import register

__all__ = ["DataCube"]


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
