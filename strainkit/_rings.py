"""Helpers shared by the calibrators: finding diffraction rings, peak weights, input checks.

A polycrystalline standard puts its Bragg peaks on rings: the peak radii ``|q|`` pile up
at a few values. :func:`find_rings` locates those piles in a smoothed histogram of the
radii; :func:`assign_rings` gives each peak the nearest ring within a window; and
:func:`ring_statistics` measures each ring robustly (median start, then the mean of the
peaks within ``n_sigma`` robust standard deviations, iterated). :func:`measure_rings` chains
the three. Everything works on flat arrays, with no loop over peaks.

:mod:`strainkit.ellipse` uses these on the radii of distorted peaks (after a coarse
correction) and :mod:`strainkit.pixel` on the radii of corrected peaks, both with the
weights of :func:`peak_weights`. :func:`check_peaks` gives the calibrators one set of
messages for peaks in the wrong units, frame or calibration state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage, signal

from strainkit.containers import BraggPeaks

__all__ = [
    "RingStats",
    "assign_rings",
    "check_peaks",
    "find_rings",
    "group_median",
    "measure_rings",
    "peak_weights",
    "ring_statistics",
]

# 1.4826 MAD is the standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826


class RingStats(NamedTuple):
    """Robust measurement of rings: one entry per ring, plus per-peak assignment.

    Attributes
    ----------
    radius : ndarray (r,)
        (Weighted) mean radius of each ring's inlier peaks.
    radius_std : ndarray (r,)
        Standard error of ``radius`` (scatter / sqrt(sum of weights)).
    scatter : ndarray (r,)
        Standard deviation of the inlier radii about ``radius`` (of a peak of weight 1).
    count : ndarray (r,) of int
        Number of inlier peaks.
    index : ndarray (n,) of int
        Ring of each peak, or -1 for peaks on no ring (and rejected outliers).
    """

    radius: np.ndarray
    radius_std: np.ndarray
    scatter: np.ndarray
    count: np.ndarray
    index: np.ndarray


def group_median(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` within each group ``0..n_groups-1`` (NaN for empty groups).

    Examples
    --------
    >>> group_median(np.array([1.0, 5.0, 2.0, 7.0, 9.0]), np.array([0, 1, 0, 1, 0]), 3)
    array([ 2.,  6., nan])
    """
    values = np.asarray(values, dtype=float)
    groups = np.asarray(groups, dtype=np.int64)
    out = np.full(n_groups, np.nan)
    if values.size == 0:
        return out
    order = np.lexsort((values, groups))
    v, g = values[order], groups[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    lo = starts + (counts - 1) // 2
    hi = starts + counts // 2
    out[has] = 0.5 * (v[lo[has]] + v[hi[has]])
    return out


def find_rings(
    radii: np.ndarray,
    *,
    r_min: float | None = None,
    r_max: float | None = None,
    bin_width: float = 0.1,
    smooth: float = 0.5,
    min_peaks: int = 10,
    min_fraction: float = 0.05,
) -> np.ndarray:
    """Radii of the rings in which the values ``radii`` pile up, ascending.

    The radii are histogrammed in bins of ``bin_width`` between ``r_min`` and ``r_max``
    and smoothed with a Gaussian of standard deviation ``smooth`` (both in the units of
    ``radii``). Each local maximum is a candidate ring. Its excess is the number of radii
    within half the distance to its neighbouring candidates (at most ``3 smooth`` away)
    less the background there: the higher of the histogram's mean levels 3 to 8
    ``smooth`` below and above it, so that peaks scattered everywhere make no ring.
    Rings whose excess is at least ``min_peaks``, at least ``min_fraction`` of the largest
    excess and at least five times the background's Poisson noise are kept; the radius
    of each is refined by a parabola through the smoothed histogram's maximum.

    Returns an empty array when no ring qualifies.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r = np.concatenate([30 + 0.05 * rng.standard_normal(200), 45 + 0.05 *
    ...                     rng.standard_normal(100), rng.uniform(10, 60, 500)])
    >>> find_rings(r).round(1)
    array([30., 45.])
    """
    radii = np.asarray(radii, dtype=float)
    radii = radii[np.isfinite(radii)]
    if radii.size == 0:
        return np.zeros(0)
    lo = float(radii.min()) if r_min is None else float(r_min)
    hi = float(radii.max()) if r_max is None else float(r_max)
    pad = 4.0 * smooth
    edges = np.arange(lo - pad, hi + pad + bin_width, bin_width)
    if edges.size < 3:
        edges = np.array([lo - pad, 0.5 * (lo + hi), hi + pad])
    hist, edges = np.histogram(radii, bins=edges)
    density = ndimage.gaussian_filter1d(hist.astype(float), smooth / bin_width, mode="constant")
    centres = 0.5 * (edges[:-1] + edges[1:])
    maxima, _ = signal.find_peaks(density)
    if maxima.size == 0:
        return np.zeros(0)
    # parabolic refinement of each maximum of the smoothed histogram
    y0, y1, y2 = density[maxima - 1], density[maxima], density[maxima + 1]
    curvature = y0 - 2.0 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(curvature < 0, 0.5 * (y0 - y2) / curvature, 0.0)
    rings = centres[maxima] + np.clip(shift, -0.5, 0.5) * bin_width
    # background: the higher of the mean levels 3..8 smooth below and above each ring
    cum = np.concatenate([[0.0], np.cumsum(density)])
    near, far = round(3.0 * smooth / bin_width), round(8.0 * smooth / bin_width) + 1

    def band(a, b):
        a, b = np.clip(a, 0, density.size), np.clip(b, 0, density.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > a, (cum[b] - cum[a]) / np.maximum(b - a, 1), 0.0)

    level = np.maximum(band(maxima - far, maxima - near + 1), band(maxima + near, maxima + far))
    half = _half_gaps(rings, 3.0 * smooth)
    expected = level * (half[:, 0] + half[:, 1]) / bin_width
    excess = _window_counts(radii, rings, 3.0 * smooth) - expected
    keep = (
        (excess >= min_peaks)
        & (excess >= min_fraction * excess.max(initial=0))
        & (excess >= 5.0 * np.sqrt(expected + 1.0))
    )
    return rings[keep]


def _window_counts(radii: np.ndarray, rings: np.ndarray, reach: float) -> np.ndarray:
    """Number of radii nearer to each ring than half the gap to its neighbours (<= reach)."""
    half = _half_gaps(rings, reach)
    sorted_r = np.sort(radii)
    lo = np.searchsorted(sorted_r, rings - half[:, 0], side="left")
    hi = np.searchsorted(sorted_r, rings + half[:, 1], side="right")
    return hi - lo


def _half_gaps(rings: np.ndarray, reach: float | np.ndarray) -> np.ndarray:
    """(below, above) half-distances from each ring to its neighbours, capped at ``reach``."""
    gaps = np.diff(rings)
    below = np.concatenate([[np.inf], 0.5 * gaps])
    above = np.concatenate([0.5 * gaps, [np.inf]])
    reach = np.broadcast_to(np.asarray(reach, dtype=float), rings.shape)
    return np.stack([np.minimum(below, reach), np.minimum(above, reach)], axis=1)


def assign_rings(radii: np.ndarray, rings: np.ndarray, reach: float | np.ndarray) -> np.ndarray:
    """Index of the nearest ring of each radius, or -1 when it is farther than ``reach``.

    ``rings`` must be ascending; ``reach`` (scalar or one per ring) is also capped at half
    the distance to the neighbouring rings, so every peak has at most one ring.

    Examples
    --------
    >>> assign_rings(np.array([9.0, 10.2, 14.0, 20.1]), np.array([10.0, 20.0]), 0.5)
    array([-1,  0, -1,  1])
    """
    radii = np.asarray(radii, dtype=float)
    rings = np.asarray(rings, dtype=float)
    if rings.size == 0:
        return np.full(radii.shape, -1, dtype=np.int64)
    half = _half_gaps(rings, reach)
    upper = np.clip(np.searchsorted(rings, radii), 0, rings.size - 1)
    lower = np.clip(upper - 1, 0, rings.size - 1)
    nearest = np.where(np.abs(radii - rings[lower]) <= np.abs(radii - rings[upper]), lower, upper)
    delta = radii - rings[nearest]
    ok = np.where(delta < 0, -delta <= half[nearest, 0], delta <= half[nearest, 1])
    return np.where(ok, nearest, -1).astype(np.int64)


def peak_weights(intensity: np.ndarray, kind: str = "intensity") -> np.ndarray:
    """Relative weights of peak positions: ``intensity / median`` (clipped to [0.05, 20])
    for ``kind='intensity'``, ones for ``kind='none'``.

    A disk's position error from counting noise has a variance about inversely
    proportional to its counts, so weighting by intensity is about the inverse variance.

    Examples
    --------
    >>> peak_weights(np.array([1.0, 2.0, 4.0, 1000.0]))
    array([ 0.33...,  0.66...,  1.33..., 20.  ])
    """
    intensity = np.asarray(intensity, dtype=float)
    if kind == "none" or intensity.size == 0:
        return np.ones(intensity.shape)
    median = float(np.median(intensity))
    if not median > 0:
        return np.ones(intensity.shape)
    return np.clip(intensity / median, 0.05, 20.0)


def ring_statistics(
    radii: np.ndarray,
    index: np.ndarray,
    n_rings: int,
    *,
    weights: np.ndarray | None = None,
    n_sigma: float = 4.0,
    n_iter: int = 5,
    min_scatter: float = 1e-6,
) -> RingStats:
    """Robust radius, standard error, scatter and count of each ring.

    Peak ``k`` has variance ``σ²/w_k`` (``weights``, default 1). Starts from each ring's
    median and median absolute deviation, then repeatedly keeps the peaks whose weighted
    deviation ``√w (r − mean)`` is within ``n_sigma`` σ (at least ``min_scatter``) and
    recomputes the weighted mean and σ. Peaks rejected here get index -1.

    Examples
    --------
    >>> r = np.array([10.0, 10.1, 9.9, 10.0, 13.0, 20.0, 20.2])
    >>> s = ring_statistics(r, np.array([0, 0, 0, 0, 0, 1, 1]), 2, n_sigma=3)
    >>> s.radius, s.count, s.index
    (array([10. , 20.1]), array([4, 2]), array([ 0,  0,  0,  0, -1,  1,  1]))
    """
    radii = np.asarray(radii, dtype=float)
    index = np.asarray(index, dtype=np.int64).copy()
    w = np.ones(radii.shape) if weights is None else np.asarray(weights, dtype=float)
    root_w = np.sqrt(w)
    on = index >= 0
    centre = group_median(radii[on], index[on], n_rings)
    dev = root_w[on] * np.abs(radii[on] - centre[index[on]])
    sigma = np.maximum(_MAD_TO_SIGMA * np.nan_to_num(group_median(dev, index[on], n_rings)), 0)
    sigma = np.maximum(sigma, min_scatter)
    base = index.copy()
    for _ in range(n_iter):
        ok = base >= 0
        ok[ok] = root_w[ok] * np.abs(radii[ok] - centre[base[ok]]) <= n_sigma * sigma[base[ok]]
        new = np.where(ok, base, -1)
        g, wk, rk = new[ok], w[ok], radii[ok]
        count = np.bincount(g, minlength=n_rings)
        wsum = np.bincount(g, weights=wk, minlength=n_rings)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(g, weights=wk * rk, minlength=n_rings) / wsum
            dev2 = np.bincount(g, weights=wk * (rk - mean[g]) ** 2, minlength=n_rings)
            scatter = np.sqrt(dev2 / np.maximum(count - 1, 1))
        changed = not np.array_equal(new, index)
        index, centre = new, mean
        sigma = np.maximum(np.nan_to_num(scatter), min_scatter)
        if not changed:
            break
    with np.errstate(invalid="ignore", divide="ignore"):
        stderr = np.where(count > 1, scatter / np.sqrt(wsum), np.nan)
    return RingStats(mean, stderr, scatter, count, index)


def measure_rings(
    radii: np.ndarray,
    *,
    r_min: float | None = None,
    r_max: float | None = None,
    bin_width: float = 0.1,
    smooth: float = 0.5,
    min_peaks: int = 10,
    min_fraction: float = 0.05,
    n_sigma: float = 4.0,
    weights: np.ndarray | None = None,
) -> RingStats:
    """Find the rings in ``radii`` and measure each robustly (:func:`find_rings`, then
    :func:`assign_rings` within ``4 smooth``, then :func:`ring_statistics`).

    Radii outside [``r_min``, ``r_max``] take part in nothing. Rings left with fewer than
    ``min_peaks`` inliers are dropped.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> r = np.concatenate([30 + 0.02 * rng.standard_normal(300), 45 + 0.02 *
    ...                     rng.standard_normal(300)])
    >>> s = measure_rings(r)
    >>> s.radius.round(2), s.count
    (array([30., 45.]), array([300, 300]))
    """
    radii = np.asarray(radii, dtype=float)
    inside = np.ones(radii.shape, dtype=bool)
    if r_min is not None:
        inside &= radii >= r_min
    if r_max is not None:
        inside &= radii <= r_max
    rings = find_rings(
        radii[inside],
        r_min=r_min,
        r_max=r_max,
        bin_width=bin_width,
        smooth=smooth,
        min_peaks=min_peaks,
        min_fraction=min_fraction,
    )
    index = np.full(radii.shape, -1, dtype=np.int64)
    index[inside] = assign_rings(radii[inside], rings, 4.0 * smooth)
    stats = ring_statistics(radii, index, rings.size, weights=weights, n_sigma=n_sigma)
    keep = stats.count >= min_peaks
    if keep.all():
        return stats
    renumber = np.full(rings.size + 1, -1, dtype=np.int64)
    renumber[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
    return RingStats(
        stats.radius[keep],
        stats.radius_std[keep],
        stats.scatter[keep],
        stats.count[keep],
        renumber[stats.index],
    )


def check_peaks(peaks: BraggPeaks, owner: str, *, centred: bool, units: str, forbid: str) -> None:
    """Raise a ``ValueError`` saying what to do when ``peaks`` do not suit ``owner``.

    ``peaks`` must be :class:`~strainkit.BraggPeaks` in the detector frame, in ``units``,
    centred if ``centred`` is True, and without the calibration ``forbid`` applied.

    Examples
    --------
    >>> raw = BraggPeaks.empty((1, 1))
    >>> check_peaks(raw, "Demo", centred=False, units="px", forbid="origin")
    >>> check_peaks(raw, "Demo", centred=True, units="px", forbid="ellipse")
    Traceback (most recent call last):
    ...
    ValueError: Demo: needs centred peaks (measured from the pattern origin); run ...
    """
    if not isinstance(peaks, BraggPeaks):
        raise ValueError(f"{owner}: expected BraggPeaks, got {type(peaks).__name__}")
    if peaks.units != units:
        hint = (
            "these peaks are already calibrated in Å⁻¹; give the peaks in px from before "
            "PixelCalibrator.transform"
            if peaks.units == "A^-1"
            else "convert the peaks to Å⁻¹ first (PixelCalibrator)"
        )
        raise ValueError(f"{owner}: needs peaks in units {units!r}, got {peaks.units!r}; {hint}")
    if peaks.frame != "detector":
        raise ValueError(
            f"{owner}: needs peaks in the detector frame, got frame={peaks.frame!r}; apply it "
            "before the rotation calibration"
        )
    if centred and not peaks.centered:
        raise ValueError(
            f"{owner}: needs centred peaks (measured from the pattern origin); run "
            "OriginCalibrator().fit_transform(peaks) first"
        )
    if forbid in peaks.calibrations:
        raise ValueError(
            f"{owner}: these peaks already have the {forbid!r} calibration "
            f"(calibrations={peaks.calibrations}); give the peaks from before it"
        )
