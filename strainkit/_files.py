"""Small file helpers shared by every writer: atomic replacement."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FileFormatError", "atomic_path", "open_hdf5"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or an exception while writing leaves any earlier file at ``path`` untouched
    and removes the partial temporary file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(
            f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist; "
            "create it first"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class FileFormatError(ValueError):
    """A file exists but is not what was asked for: truncated, not HDF5, or the wrong kind."""


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike, what: str = "an HDF5 file") -> Iterator:
    """Open ``path`` read-only as HDF5 with clear errors; the file is closed on exit.

    Raises ``FileNotFoundError`` for a missing file and :class:`FileFormatError` for a
    truncated or non-HDF5 one.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "notes.h5"
    >>> _ = bad.write_text("not hdf5")
    >>> with open_hdf5(bad):
    ...     pass
    Traceback (most recent call last):
    ...
    strainkit._files.FileFormatError: ...is not a readable HDF5 file...
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r} (expected {what}); check the path")
    if path.is_dir():
        raise FileFormatError(f"{str(path)!r} is a folder, not {what}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        size = path.stat().st_size
        raise FileFormatError(
            f"{str(path)!r} ({size} bytes) is not a readable HDF5 file: it is truncated, "
            f"still being written, or in another format (expected {what}). HDF5 said: {err}"
        ) from None
    try:
        yield f
    finally:
        f.close()
