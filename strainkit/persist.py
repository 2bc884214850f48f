"""Save and load estimators, pipelines and containers as one HDF5 file of arrays and JSON.

File layout (format 1)::

    /                  attrs: strainkit_format, format_version, class, created,
                              versions (JSON), provenance (JSON)
    /object            the saved object (a node)

A node is an HDF5 dataset (``kind='ndarray'``) or a group whose ``kind`` attribute is
``object`` (attribute ``class``: a registry key; child ``state``), ``dict``, ``list`` or
``tuple``. Leaf values that JSON can hold (numbers, strings, booleans, None and lists,
tuples and dicts of them) are kept in attributes ``v.<i>`` as tagged JSON so that tuples,
NaN and numpy scalar types come back exactly. Arrays come back bit for bit.

Loading looks every class up in strainkit's registry before it reads anything else of
that node; it never imports by name and never deserialises code, so opening a stranger's file can
only build strainkit's own estimators and containers (and scikit-learn's ``Pipeline`` and
``FrozenEstimator``). Files are written to a temporary name and renamed, so an interrupted
save leaves the earlier file intact.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import sklearn
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from strainkit._base import Estimator
from strainkit._files import FileFormatError, atomic_path, open_hdf5
from strainkit._registry import class_key, lookup
from strainkit._version import __version__
from strainkit.containers import DataCube

__all__ = ["FORMAT_VERSION", "load_model", "save"]

FORMAT_MARK = "strainkit-model"
FORMAT_VERSION = 1
_BLOCK = 256  # frames per block when a DataCube is written


# ---------------------------------------------------------------------------- JSON leaves


def _tag(value: Any) -> Any:
    """A JSON-ready structure for ``value``; raises ``TypeError`` when it is not a leaf."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"__np__": value.dtype.str, "v": _tag(value.item())}
    if isinstance(value, tuple):
        return {"__tuple__": [_tag(v) for v in value]}
    if isinstance(value, list):
        return [_tag(v) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _tag(v) for k, v in value.items()}}
    raise TypeError(type(value).__name__)


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float(value["__float__"])
    if "__np__" in value:
        return np.dtype(value["__np__"]).type(_untag(value["v"]))
    if "__tuple__" in value:
        return tuple(_untag(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _untag(v) for k, v in value["__dict__"].items()}
    raise FileFormatError(f"unknown tagged value in file: {sorted(value)}")


def _as_leaf(value: Any) -> str | None:
    """Tagged JSON of ``value`` if it is a leaf, else None."""
    try:
        return json.dumps(_tag(value), allow_nan=False)
    except TypeError:
        return None


# ---------------------------------------------------------------------------- writing


def _object_state(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Estimator):
        return {"params": obj.get_params(deep=False), "fitted": obj._fitted_state()}
    if isinstance(obj, Pipeline):
        if obj.memory is not None:
            raise TypeError(
                "cannot save a Pipeline with memory= set (a cache on disk); set memory=None"
            )
        return {"params": obj.get_params(deep=False)}
    if isinstance(obj, FrozenEstimator):
        return {"params": obj.get_params(deep=False)}
    return obj._to_state()


def _check_savable(obj: Any) -> None:
    try:
        registered = lookup(class_key(type(obj))) is type(obj)
    except ValueError:
        registered = False
    if not registered:
        raise TypeError(
            f"cannot save a {type(obj).__module__}.{type(obj).__qualname__}: strainkit saves "
            "only its own estimators and containers, scikit-learn Pipelines and "
            "FrozenEstimators, and numbers, strings, arrays, lists and dicts of them"
        )


def _write_node(parent: h5py.Group, name: str, value: Any) -> None:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc" or value.dtype.hasobject:
            raise TypeError(f"cannot save an array of dtype {value.dtype} ({name!r})")
        parent.create_dataset(name, data=value).attrs["kind"] = "ndarray"
        return
    if isinstance(value, (list, tuple, dict)) and not isinstance(value, str):
        group = parent.create_group(name)
        if isinstance(value, dict):
            keys = list(value)
            if not all(isinstance(k, str) for k in keys):
                raise TypeError(f"cannot save a dict with non-string keys ({name!r})")
            group.attrs["kind"] = "dict"
            group.attrs["keys"] = json.dumps(keys)
            items = list(value.values())
        else:
            group.attrs["kind"] = type(value).__name__
            group.attrs["length"] = len(value)
            items = list(value)
        for i, item in enumerate(items):
            _write_member(group, str(i), item)
        return
    _check_savable(value)
    group = parent.create_group(name)
    group.attrs["kind"] = "object"
    group.attrs["class"] = class_key(type(value))
    if isinstance(value, DataCube):
        _write_datacube(group, value)
    _write_node(group, "state", _object_state(value))


def _write_member(group: h5py.Group, key: str, value: Any) -> None:
    leaf = _as_leaf(value)
    if leaf is not None:
        group.attrs[f"v.{key}"] = leaf
    else:
        _write_node(group, key, value)


def _write_datacube(group: h5py.Group, cube: DataCube) -> None:
    ds = group.create_dataset("data", shape=cube.shape, dtype=cube.dtype)
    ds.attrs["kind"] = "ndarray"
    ry = cube.shape[1]
    for start, frames in cube.iter_blocks(_BLOCK, check_finite=False):
        row, col = divmod(start, ry)
        if col == 0 and len(frames) % ry == 0:  # whole scan rows
            ds[row : row + len(frames) // ry] = frames.reshape(-1, ry, *frames.shape[1:])
        else:  # a block inside one scan row
            ds[row, col : col + len(frames)] = frames


def save(
    obj: Any, path: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Save an estimator, pipeline or container to one HDF5 file, atomically.

    Parameters
    ----------
    obj : object
        A strainkit estimator (fitted or not, nested estimators included), a
        ``sklearn.pipeline.Pipeline`` or ``sklearn.frozen.FrozenEstimator`` of them, or a
        container (``DataCube``, ``BraggPeaks``, ``LatticeMap``, ``StrainMap``).
    path : str or path-like
        Destination. An existing file is replaced only once the new one is complete.
    provenance : dict, optional
        JSON-serialisable notes stored with the file (e.g. the input files' names).

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from strainkit.containers import BraggPeaks
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "peaks.h5"
    >>> _ = save(BraggPeaks.empty((2, 3)), path)
    >>> load_model(path)
    BraggPeaks(scan_shape=(2, 3), n_peaks=0, units='px', frame='detector', calibrations=())
    """
    path = Path(path)
    provenance_json = _as_leaf(dict(provenance or {}))
    if provenance_json is None:
        raise TypeError("provenance must be a dict of JSON values (str, numbers, lists, dicts)")
    _check_savable(obj)
    versions = {
        "strainkit": __version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["strainkit_format"] = FORMAT_MARK
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["class"] = class_key(type(obj))
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["versions"] = json.dumps(versions)
        f.attrs["provenance"] = provenance_json
        _write_node(f, "object", obj)
    return path


# ---------------------------------------------------------------------------- reading


def _read_members(group: h5py.Group, n: int) -> list[Any]:
    out = []
    for i in range(n):
        key = f"v.{i}"
        if key in group.attrs:
            out.append(_untag(json.loads(group.attrs[key])))
        elif str(i) in group:
            out.append(_read_node(group[str(i)]))
        else:
            raise FileFormatError(f"{group.name}: entry {i} is missing; the file is damaged")
    return out


def _read_node(node: h5py.Group | h5py.Dataset) -> Any:
    kind = node.attrs.get("kind")
    if kind == "ndarray" and isinstance(node, h5py.Dataset):
        return np.asarray(node[()])
    if kind == "object":
        cls = lookup(str(node.attrs["class"]))  # refuses unknown classes before anything else
        return _build(cls, node)
    if kind == "dict":
        keys = json.loads(node.attrs["keys"])
        return dict(zip(keys, _read_members(node, len(keys))))
    if kind in ("list", "tuple"):
        items = _read_members(node, int(node.attrs["length"]))
        return items if kind == "list" else tuple(items)
    raise FileFormatError(f"{node.name}: unknown node kind {kind!r}; the file is damaged")


def _build(cls: type, node: h5py.Group) -> Any:
    state = _read_node(node["state"])
    if issubclass(cls, Estimator):
        obj = cls(**state["params"])
        for name, value in state["fitted"].items():
            setattr(obj, name, value)
        return obj
    if issubclass(cls, (Pipeline, FrozenEstimator)):
        return cls(**state["params"])
    if issubclass(cls, DataCube):
        return DataCube._from_hdf5(node.file.filename, node["data"].name, **state)
    return cls._from_state(state)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def load_model(path: str | os.PathLike) -> Any:
    """Load what :func:`save` wrote: an estimator, pipeline or container.

    Only classes in strainkit's registry are instantiated; a file naming any other class
    raises ``ValueError`` before anything of it is built. A ``DataCube`` comes back lazy,
    reading its frames from ``path`` block by block.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    object

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    strainkit.FileFormatError
        When the file is truncated, not HDF5, not a strainkit file, or of a newer format.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sklearn.pipeline import Pipeline
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "pipe.h5"
    >>> _ = save(Pipeline([("step", "passthrough")]), path)
    >>> load_model(path)
    Pipeline(steps=[('step', 'passthrough')])
    """
    with open_hdf5(path, "a strainkit model file") as f:
        if f.attrs.get("strainkit_format") != FORMAT_MARK or "object" not in f:
            raise FileFormatError(
                f"{str(path)!r} is an HDF5 file but not one written by strainkit.save; to read "
                "4D-STEM data from it use strainkit.read(path, dataset=...)"
            )
        fmt = int(f.attrs.get("format_version", 0))
        if fmt > FORMAT_VERSION:
            raise FileFormatError(
                f"{str(path)!r} uses strainkit file format {fmt}, newer than this strainkit's "
                f"{FORMAT_VERSION}; upgrade strainkit to read it"
            )
        written_by = json.loads(f.attrs.get("versions", "{}")).get("strainkit", "0")
        if _version_tuple(written_by) > _version_tuple(__version__):
            warnings.warn(
                f"{str(path)!r} was written by strainkit {written_by}, newer than this "
                f"strainkit {__version__}; upgrade if loading fails or results differ",
                UserWarning,
                stacklevel=2,
            )
        return _read_node(f["object"])
