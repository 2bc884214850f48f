"""Checks of the simulator's knobs (each error names the knob) and its random streams."""

from __future__ import annotations

import math

import numpy as np

# Each scan kind draws from its own child of SeedSequence(seed).
_KIND_KEYS = {"vacuum": 0, "crystal": 1, "polycrystal": 2, "images": 3}


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
