"""Reading data files: 4D scans as lazy ``DataCube`` objects, and 2D images.

HDF5 (including EMD and py4DSTEM files, which are HDF5), ``.npy`` (memory-mapped) and raw
binary files are read here. HDF5 files are opened read-only and closed after each read.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from strainkit._files import FileFormatError, open_hdf5
from strainkit.containers import DataCube

__all__ = ["find_datasets", "read", "read_image", "read_raw"]

_MIN_DETECTOR = 8  # patterns smaller than this along either axis are not 4D-STEM frames


def find_datasets(path: str | os.PathLike, ndim: int | None = None) -> dict[str, tuple]:
    """Every dataset in an HDF5 file (optionally only those with ``ndim`` axes) and its shape.

    Examples
    --------
    >>> import tempfile, pathlib, h5py
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.h5"
    >>> with h5py.File(path, "w") as f:
    ...     f["a/data"] = np.zeros((2, 2, 4, 4))
    ...     f["image"] = np.zeros((3, 3))
    >>> find_datasets(path, ndim=4)
    {'/a/data': (2, 2, 4, 4)}
    """
    found: dict[str, tuple] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and (ndim is None or obj.ndim == ndim):
            found["/" + name] = tuple(obj.shape)

    with open_hdf5(path) as f:
        f.visititems(visit)
    return found


def _pick_dataset(path: Path, dataset: str | None, ndim: int, what: str) -> str:
    if dataset is not None:
        with open_hdf5(path) as f:
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise KeyError(
                    f"{str(path)!r} has no dataset {dataset!r}; its datasets are "
                    f"{find_datasets(path)}"
                )
            shape = f[dataset].shape
        if len(shape) != ndim:
            raise ValueError(
                f"dataset {dataset!r} in {str(path)!r} has shape {shape} ({len(shape)}D); "
                f"{what} must be {ndim}D"
            )
        return dataset
    candidates = find_datasets(path, ndim=ndim)
    if ndim == 4:  # (..., 2, 2) tensors or (..., n, 2) tables are not diffraction patterns
        candidates = {k: v for k, v in candidates.items() if min(v[2:]) >= _MIN_DETECTOR}
    if len(candidates) == 1:
        return next(iter(candidates))
    if not candidates:
        raise ValueError(
            f"{str(path)!r} holds no {ndim}D dataset ({what}); its datasets are "
            f"{find_datasets(path) or 'none'}"
        )
    raise ValueError(
        f"{str(path)!r} holds several {ndim}D datasets {candidates}; choose one with "
        f"dataset='...' (e.g. dataset={next(iter(candidates))!r})"
    )


def read(path: str | os.PathLike, dataset: str | None = None) -> DataCube:
    """Open a 4D-STEM scan as a lazy :class:`DataCube` (nothing is loaded yet).

    Parameters
    ----------
    path : str or path-like
        An HDF5 file (``.h5``, ``.hdf5``, ``.emd``, py4DSTEM files) or a ``.npy`` file.
    dataset : str, optional
        Path of the 4D dataset inside an HDF5 file; needed only when there are several
        4D datasets whose patterns are at least 8 x 8 px.

    Returns
    -------
    DataCube

    Examples
    --------
    >>> import tempfile, pathlib, h5py
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.h5"
    >>> with h5py.File(path, "w") as f:
    ...     f["scan/data"] = np.zeros((2, 3, 8, 8), dtype=np.uint16)
    >>> cube = read(path)
    >>> cube.shape, cube.metadata["dataset"]
    ((2, 3, 8, 8), '/scan/data')
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.exists():
            raise FileNotFoundError(f"no such file: {str(path)!r}; check the path")
        try:
            array = np.load(path, mmap_mode="r")  # numpy refuses object arrays by default
        except ValueError as err:
            raise FileFormatError(f"{str(path)!r} is not a readable .npy array: {err}") from None
        return DataCube(array, metadata={"source": str(path)})
    name = _pick_dataset(path, dataset, 4, "a 4D-STEM scan (Rx, Ry, Qx, Qy)")
    return DataCube._from_hdf5(path, name, metadata={"source": str(path), "dataset": name})


def read_image(path: str | os.PathLike, dataset: str | None = None) -> np.ndarray:
    """Read a 2D image (HAADF, shadow image, ...) from an HDF5 or ``.npy`` file.

    Parameters
    ----------
    path : str or path-like
    dataset : str, optional
        Path of the 2D dataset inside an HDF5 file; needed only when there are several.

    Returns
    -------
    numpy.ndarray of float64

    Examples
    --------
    >>> import tempfile, pathlib, h5py
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "images.h5"
    >>> with h5py.File(path, "w") as f:
    ...     f["haadf"] = np.ones((4, 5))
    ...     f["shadow"] = np.ones((6, 6))
    >>> read_image(path, "shadow").shape
    (6, 6)
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.exists():
            raise FileNotFoundError(f"no such file: {str(path)!r}; check the path")
        image = np.load(path)  # numpy refuses object arrays by default
        if image.ndim != 2:
            raise ValueError(f"{str(path)!r} holds a {image.ndim}D array; an image must be 2D")
        return image.astype(np.float64)
    name = _pick_dataset(path, dataset, 2, "an image")
    with open_hdf5(path) as f:
        return np.asarray(f[name][()], dtype=np.float64)


def read_raw(
    path: str | os.PathLike,
    shape: tuple[int, int, int, int],
    dtype: str | np.dtype = "float32",
    offset: int = 0,
) -> DataCube:
    """Memory-map a raw binary file of C-ordered frames as a lazy :class:`DataCube`.

    Parameters
    ----------
    path : str or path-like
    shape : (Rx, Ry, Qx, Qy)
    dtype : numpy dtype of the values (with byte order, e.g. ``'<u2'``)
    offset : int
        Bytes to skip before the first frame (a header).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.raw"
    >>> np.arange(2 * 2 * 4 * 4, dtype="<u2").tofile(path)
    >>> read_raw(path, (2, 2, 4, 4), "<u2")[1, 1][0, 0]
    np.uint16(48)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}; check the path")
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(f"shape must be four positive integers (Rx, Ry, Qx, Qy), got {shape}")
    need = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise FileFormatError(
            f"{str(path)!r} has {size} bytes but shape {shape} of {dtype} after an offset of "
            f"{offset} needs {need}; the file is truncated or the shape/dtype is wrong"
        )
    array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return DataCube(array, metadata={"source": str(path)})
