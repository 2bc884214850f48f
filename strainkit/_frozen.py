"""What every container shares: immutability, read-only arrays, validation helpers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

UNITS = ("px", "A^-1")
FRAMES = ("detector", "real")


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
