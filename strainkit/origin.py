"""The pattern origin at every scan position, and its smooth model over the scan (descan).

Scanning the beam also moves the diffraction pattern on the detector (imperfect descan).
:class:`OriginCalibrator` measures the origin of each pattern from the raw peaks and fits
a smooth model of it over the scan, then subtracts it from every peak. The work is done by
pure functions on the flat peak arrays (no loop over positions or peaks):

* :func:`central_beam_origins`: the brightest peak of each position, optionally only
  among the peaks within ``search_radius`` of a reference origin (the central beam).
* :func:`friedel_origins`: for patterns whose central beam is blocked or saturated, the
  midpoint of Friedel pairs (peaks at ``o + g`` and ``o − g``). Every pair of peaks of a
  position votes for its midpoint, weighted by how similar the two intensities are; the
  densest ``tolerance``-sized cell of midpoints wins, and the origin is then the weighted
  mean of the midpoints within ``tolerance`` of it (least squares over the matched pairs).
* :func:`fit_surface`: a robust fit of a constant, plane or parabola in the scan indices:
  least median of squares over random minimal subsets, then least squares over the
  positions within a residual threshold, repeated until the inliers no longer change.

The calibrator measures twice: first without a reference (brightest peak, or densest
midpoint anywhere), then, around the robust model of those first measurements, within
``search_radius`` of it. Positions with no usable measurement are NaN in
``origin_measured_`` and False in ``mask_``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic
from sklearn.base import TransformerMixin

from strainkit._base import Estimator, ParamsModel
from strainkit._rings import check_peaks
from strainkit.containers import BraggPeaks

__all__ = [
    "OriginCalibrator",
    "central_beam_origins",
    "design_matrix",
    "fit_surface",
    "friedel_origins",
]

MODELS = ("plane", "parabola", "constant", "none")
_PAIR_BUDGET = 1 << 21  # pairs of peaks handled at a time by friedel_origins
_FIRST_PASS_PEAKS = 16  # friedel: peaks per position paired before a reference exists
_RAYLEIGH_MEDIAN = 1.1774  # median of |(x, y)| for x, y ~ N(0, 1): sqrt(2 ln 2)


# ---------------------------------------------------------------------------- measuring


def _position_index(offsets: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(offsets.size - 1), np.diff(offsets))


def _first_per_group(groups: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Index (into the arrays) of the highest ``score`` of each distinct group."""
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-score, groups))
    first = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1]])
    return order[first]


def central_beam_origins(
    qx: np.ndarray,
    qy: np.ndarray,
    intensity: np.ndarray,
    offsets: np.ndarray,
    reference: np.ndarray | None = None,
    search_radius: float = np.inf,
) -> np.ndarray:
    """Position of the brightest peak of each scan position (NaN where there is none).

    With ``reference`` (flat origins, shape (n_positions, 2)) only the peaks within
    ``search_radius`` of each position's reference count.

    Examples
    --------
    >>> qx, qy = np.array([10.0, 30.0, 31.0]), np.array([10.0, 30.0, 29.0])
    >>> central_beam_origins(qx, qy, np.array([5.0, 9.0, 1.0]), np.array([0, 2, 2, 3]))
    array([[30., 30.],
           [nan, nan],
           [31., 29.]])
    >>> ref = np.full((3, 2), 10.0)
    >>> central_beam_origins(qx, qy, np.array([5.0, 9.0, 1.0]), np.array([0, 2, 2, 3]),
    ...                      ref, search_radius=2.0)[0]
    array([10., 10.])
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n_pos = offsets.size - 1
    pos = _position_index(offsets)
    ok = np.ones(pos.size, dtype=bool)
    if reference is not None:
        ref = np.asarray(reference, dtype=float)
        ok = np.hypot(qx - ref[pos, 0], qy - ref[pos, 1]) <= search_radius
    idx = np.flatnonzero(ok)
    best = idx[_first_per_group(pos[idx], np.asarray(intensity, dtype=float)[idx])]
    out = np.full((n_pos, 2), np.nan)
    out[pos[best], 0] = qx[best]
    out[pos[best], 1] = qy[best]
    return out


def _pairs(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j), i < j, of peaks at the same position; local peak indices and position."""
    n = int(counts.sum())
    local = np.arange(n)
    pos = np.repeat(np.arange(counts.size), counts)
    ends = np.repeat(np.cumsum(counts), counts)
    n_after = ends - local - 1
    first = np.repeat(local, n_after)
    start = np.repeat(np.cumsum(n_after) - n_after, n_after)
    second = first + 1 + (np.arange(first.size) - start)
    return first, second, pos[first]


def _strongest(intensity: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` most intense peaks of each position."""
    pos = _position_index(offsets)
    order = np.lexsort((-intensity, pos))
    rank = np.empty(pos.size, dtype=np.int64)
    rank[order] = np.arange(pos.size) - offsets[pos[order]]
    return rank < k


def _densest_cells(mx, my, w, pos, n_pos, tol, ref=None, reach=0.0):
    """Per position: weighted mean of the heaviest ``tol``-cell of midpoints.

    Four grids staggered by half a cell, so that a cluster is never split. Without a
    reference the cells are found by sorting (np.unique); with one, on a small grid of
    cells around it (np.bincount, no sort).
    """
    best_w = np.zeros(n_pos)
    best_xy = np.full((n_pos, 2), np.nan)
    for ox, oy in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)):
        if ref is None:
            bx = np.floor(mx / tol + ox).astype(np.int64)
            by = np.floor(my / tol + oy).astype(np.int64)
            bx -= bx.min()
            by -= by.min()
            nbx, nby = int(bx.max()) + 1, int(by.max()) + 1
            cells, inverse = np.unique((pos * nbx + bx) * nby + by, return_inverse=True)
            n_cells = cells.size
        else:
            nbx = nby = int(np.ceil(2.0 * reach / tol)) + 2
            bx = np.floor((mx - ref[pos, 0] + reach) / tol + ox).astype(np.int64)
            by = np.floor((my - ref[pos, 1] + reach) / tol + oy).astype(np.int64)
            inverse = (pos * nbx + bx) * nby + by
            cells, n_cells = None, n_pos * nbx * nby
        weight = np.bincount(inverse, weights=w, minlength=n_cells)
        sx = np.bincount(inverse, weights=w * mx, minlength=n_cells)
        sy = np.bincount(inverse, weights=w * my, minlength=n_cells)
        if cells is None:
            top = np.argmax(weight.reshape(n_pos, -1), axis=1) + np.arange(n_pos) * nbx * nby
            p = np.arange(n_pos)
        else:
            top = _first_per_group(cells // (nbx * nby), weight)
            p = cells[top] // (nbx * nby)
        better = weight[top] > best_w[p]
        p, top = p[better], top[better]
        best_w[p] = weight[top]
        best_xy[p] = np.stack([sx[top], sy[top]], axis=1) / weight[top, None]
    return best_w, best_xy


def _mean_near(mx, my, w, pos, xy, tol, n_pos):
    """Weighted mean of the midpoints within ``tol`` of ``xy[pos]``, and their number."""
    hit = np.hypot(mx - xy[pos, 0], my - xy[pos, 1]) <= tol
    p, wh = pos[hit], w[hit]
    wsum = np.bincount(p, weights=wh, minlength=n_pos)
    with np.errstate(invalid="ignore", divide="ignore"):
        sx = np.bincount(p, weights=wh * mx[hit], minlength=n_pos) / wsum
        sy = np.bincount(p, weights=wh * my[hit], minlength=n_pos) / wsum
    return np.stack([sx, sy], axis=1), np.bincount(p, minlength=n_pos)


def friedel_origins(
    qx: np.ndarray,
    qy: np.ndarray,
    intensity: np.ndarray,
    offsets: np.ndarray,
    reference: np.ndarray | None = None,
    search_radius: float = np.inf,
    tolerance: float = 0.5,
    min_pairs: int = 2,
    max_peaks: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Origin of each scan position as the common midpoint of its Friedel pairs.

    Every pair of peaks at a position (of its ``max_peaks`` most intense, default all)
    votes for its midpoint with weight ``min(I_i, I_j) / max(I_i, I_j)`` (Friedel mates
    are about equally bright). The heaviest cell of side ``tolerance`` (four staggered
    grids) gives a first origin; then, three times, the origin becomes the weighted mean
    of the midpoints within ``tolerance`` of it (least squares over the matched pairs).
    With ``reference`` (shape (n_positions, 2)), only midpoints within the finite
    ``search_radius`` of it vote. Positions with fewer than ``min_pairs`` matched pairs
    are NaN. Work and memory grow with the number of pairs, handled in blocks of
    positions.

    Returns
    -------
    origins : ndarray (n_positions, 2)
    n_pairs : ndarray (n_positions,) of int
        Matched pairs at each position.

    Examples
    --------
    >>> g = np.array([[10.0, 0.0], [3.0, 12.0], [-7.0, 5.0]])
    >>> pts = np.concatenate([50 + g, 50 - g]) + [0.4, -0.3]
    >>> origins, n = friedel_origins(pts[:, 0], pts[:, 1], np.ones(6), np.array([0, 6]))
    >>> origins, n
    (array([[50.4, 49.7]]), array([3]))
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    qx, qy = np.asarray(qx, dtype=float), np.asarray(qy, dtype=float)
    inten = np.clip(np.asarray(intensity, dtype=float), 1e-300, None)
    if reference is not None and not np.isfinite(search_radius):
        raise ValueError("friedel_origins: a reference needs a finite search_radius")
    if max_peaks is not None:
        keep = _strongest(inten, offsets, max_peaks)
        qx, qy, inten = qx[keep], qy[keep], inten[keep]
        kept = np.bincount(_position_index(offsets)[keep], minlength=offsets.size - 1)
        offsets = np.concatenate([[0], np.cumsum(kept)])
    n_pos = offsets.size - 1
    counts = np.diff(offsets)
    origins = np.full((n_pos, 2), np.nan)
    n_pairs = np.zeros(n_pos, dtype=np.int64)
    cum = np.cumsum(counts * (counts - 1) // 2)
    start = 0
    while start < n_pos:  # blocks of positions with about _PAIR_BUDGET pairs each
        before = cum[start - 1] if start else 0
        stop = max(int(np.searchsorted(cum, before + _PAIR_BUDGET, side="right")), start + 1)
        stop = min(stop, n_pos)
        n = stop - start
        i, j, pos = _pairs(counts[start:stop])
        i, j = i + offsets[start], j + offsets[start]
        mx, my = 0.5 * (qx[i] + qx[j]), 0.5 * (qy[i] + qy[j])
        w = np.minimum(inten[i], inten[j]) / np.maximum(inten[i], inten[j])
        ref = None
        if reference is not None:
            ref = np.asarray(reference, dtype=float)[start:stop]
            near = np.hypot(mx - ref[pos, 0], my - ref[pos, 1]) <= search_radius
            mx, my, w, pos = mx[near], my[near], w[near], pos[near]
        if mx.size:
            _, xy = _densest_cells(mx, my, w, pos, n, tolerance, ref, search_radius)
            for _ in range(3):
                xy, n_pairs[start:stop] = _mean_near(mx, my, w, pos, xy, tolerance, n)
            origins[start:stop] = xy
        start = stop
    origins[n_pairs < min_pairs] = np.nan
    return origins, n_pairs


# ---------------------------------------------------------------------------- model


def design_matrix(scan_shape: tuple[int, int], model: str) -> np.ndarray:
    """Columns of the origin model at each flat scan position (C order), in scan indices.

    ``'constant'``: [1]; ``'plane'``: [1, rx, ry]; ``'parabola'``: [1, rx, ry, rx², rx·ry,
    ry²]. The origin is ``design_matrix(...) @ coefficients`` with coefficients (k, 2).

    Examples
    --------
    >>> design_matrix((2, 2), "plane")
    array([[1., 0., 0.],
           [1., 0., 1.],
           [1., 1., 0.],
           [1., 1., 1.]])
    """
    if model not in ("constant", "plane", "parabola"):
        raise ValueError(f"model={model!r} has no design matrix; use constant, plane, parabola")
    rx, ry = np.meshgrid(
        np.arange(scan_shape[0], dtype=float), np.arange(scan_shape[1], dtype=float), indexing="ij"
    )
    rx, ry = rx.ravel(), ry.ravel()
    one = np.ones_like(rx)
    columns = {
        "constant": [one],
        "plane": [one, rx, ry],
        "parabola": [one, rx, ry, rx * rx, rx * ry, ry * ry],
    }[model]
    return np.stack(columns, axis=1)


def fit_surface(
    points: np.ndarray,
    scan_shape: tuple[int, int],
    model: str,
    threshold: float | None = None,
    n_sigma: float = 5.0,
    n_trials: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust fit of a smooth model to per-position points (NaN = no measurement).

    Least median of squares over ``n_trials`` random minimal subsets (seeded: the result
    is reproducible) gives a start; then, until the inliers stop changing, least squares
    over the positions whose residual distance is at most ``threshold`` px (default
    ``n_sigma`` times the robust standard deviation of one coordinate).

    Returns
    -------
    coefficients : ndarray (k, 2)
        See :func:`design_matrix`.
    inliers : ndarray (n_positions,) of bool

    Examples
    --------
    >>> truth = design_matrix((4, 4), "plane") @ [[60.0, 64.0], [0.1, 0.0], [0.0, -0.2]]
    >>> pts = truth.copy(); pts[5] += 3.0; pts[7] = np.nan
    >>> coef, inliers = fit_surface(pts, (4, 4), "plane")
    >>> coef.round(6) + 0.0, int(inliers.sum())
    (array([[60. , 64. ],
           [ 0.1,  0. ],
           [ 0. , -0.2]]), 14)
    """
    x_all = design_matrix(scan_shape, model)
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    idx = np.flatnonzero(np.isfinite(points).all(axis=1))
    k = x_all.shape[1]
    if idx.size == 0:
        raise ValueError("fit_surface: no position has a measurement")
    x, y = x_all[idx], points[idx]
    if idx.size > k:
        rng = np.random.default_rng(seed)
        subsets = rng.integers(0, idx.size, size=(n_trials, k))
        coefs = np.linalg.pinv(x[subsets]) @ y[subsets]  # (t, k, 2)
        probe = np.linspace(0, idx.size - 1, min(idx.size, 2000)).astype(np.int64)
        dist = np.linalg.norm(x[probe] @ coefs - y[probe], axis=-1)
        coef = coefs[int(np.argmin(np.median(dist, axis=1)))]
        d = np.linalg.norm(x @ coef - y, axis=1)
        sigma = np.median(d) / _RAYLEIGH_MEDIAN
    else:
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        d = np.linalg.norm(x @ coef - y, axis=1)
        sigma = 0.0
    inl = np.zeros(idx.size, dtype=bool)
    for _ in range(50):
        limit = threshold if threshold is not None else max(n_sigma * sigma, 1e-6)
        new = d <= limit
        if new.sum() < min(k, idx.size):
            new = d <= np.sort(d)[min(k, idx.size) - 1]
        if np.array_equal(new, inl):
            break
        inl = new
        coef = np.linalg.lstsq(x[inl], y[inl], rcond=None)[0]
        d = np.linalg.norm(x @ coef - y, axis=1)
        dof = max(2 * (int(inl.sum()) - k), 1)
        sigma = np.sqrt(np.sum(d[inl] ** 2) / dof)
    inliers = np.zeros(points.shape[0], dtype=bool)
    inliers[idx[inl]] = True
    return coef, inliers


# ---------------------------------------------------------------------------- estimator


class OriginCalibrator(TransformerMixin, Estimator):
    """Origin of every diffraction pattern (descan), measured and modelled over the scan.

    ``fit`` measures the origin at each scan position from raw peaks (px) and fits a
    smooth model of it; ``transform`` subtracts the origin from every peak, giving centred
    peaks (calibration ``'origin'``). See the module docstring for the algorithms.

    Positions without a usable measurement (no peak, no central beam within
    ``search_radius``, too few Friedel pairs, or an outlier of the model) are False in
    ``mask_``. With ``model='plane'``, ``'parabola'`` or ``'constant'`` the model origin is
    defined everywhere, so ``transform`` centres the peaks of every position. With
    ``model='none'`` (the measured origins themselves) a masked position has no origin and
    ``transform`` **drops its peaks**.

    Parameters
    ----------
    method : {'central', 'friedel'}
        ``'central'``: the central beam, the brightest peak near the origin.
        ``'friedel'``: the midpoint of Friedel pairs, for patterns whose central beam is
        blocked or saturated.
    model : {'plane', 'parabola', 'constant', 'none'}
        Model of the origin over the scan indices; ``'none'`` keeps the measurements.
    search_radius : float
        The second measurement looks only this far (px) from the robust model of the
        first one.
    tolerance : float
        ``'friedel'``: how far (px) a pair's midpoint may be from the origin.
    min_pairs : int
        ``'friedel'``: matched pairs a position needs.
    max_peaks : int
        ``'friedel'``: pair only this many most intense peaks of each position (the
        work grows as its square); the first, unguided pass uses at most 16.
    residual_threshold : float or None
        Positions farther than this (px) from the model are outliers; default 5 robust
        standard deviations.

    Attributes
    ----------
    origin_measured_ : ndarray (Rx, Ry, 2)
        Measured origin (px), NaN where there is none.
    origin_ : ndarray (Rx, Ry, 2)
        Model origin (px); for ``model='none'`` the measured origin at ``mask_``, NaN
        elsewhere.
    coefficients_ : ndarray (k, 2)
        Model coefficients in scan indices (see :func:`design_matrix`); (0, 2) for 'none'.
    mask_ : ndarray (Rx, Ry) of bool
        Positions with a usable measurement that fits the model.
    residual_rms_ : float
        RMS distance (px) between measured and model origin over ``mask_``.
    scan_shape_ : (int, int)
        The scan shape fitted; ``transform`` needs the same.

    Examples
    --------
    >>> rows = [np.array([[60.0 + 0.1 * i, 64.0, 9.0, 1.0], [70.0, 80.0, 2.0, 1.0]])
    ...         for i in range(4)]
    >>> peaks = BraggPeaks.from_positions(rows, scan_shape=(2, 2))
    >>> cal = OriginCalibrator(model="plane").fit(peaks)
    >>> cal.origin_[1, 1].round(6), int(cal.mask_.sum())
    (array([60.3, 64. ]), 4)
    >>> centred = cal.transform(peaks)
    >>> centred.calibrations, centred.qx[:2].round(6)
    (('origin',), array([ 0., 10.]))
    """

    class Params(ParamsModel):
        method: Literal["central", "friedel"] = "central"
        model: Literal["plane", "parabola", "constant", "none"] = "plane"
        search_radius: pydantic.PositiveFloat = 4.0
        tolerance: pydantic.PositiveFloat = 0.5
        min_pairs: pydantic.PositiveInt = 2
        max_peaks: int = pydantic.Field(40, ge=2)
        residual_threshold: pydantic.PositiveFloat | None = None

    def _measure(self, peaks: BraggPeaks, p, reference=None) -> np.ndarray:
        args = (peaks.qx, peaks.qy, peaks.intensity, peaks.offsets, reference, p.search_radius)
        if p.method == "central":
            return central_beam_origins(*args)
        # without a reference every pair may vote anywhere: the strongest few suffice
        k = p.max_peaks if reference is not None else min(p.max_peaks, _FIRST_PASS_PEAKS)
        return friedel_origins(*args, p.tolerance, p.min_pairs, k)[0]

    def fit(self, X: BraggPeaks, y=None) -> OriginCalibrator:
        """Measure and model the origin of every pattern of raw peaks ``X`` (px)."""
        p = self._validated()
        name = type(self).__name__
        check_peaks(X, name, centred=False, units="px", forbid="origin")
        what = "a central beam" if p.method == "central" else f"{p.min_pairs}+ Friedel pairs"
        if X.n_peaks == 0:
            raise ValueError(
                f"{name}: the peak table is empty (no peak at any of the {X.n_positions} "
                "positions); check the disk finder's thresholds or the data"
            )
        first = self._measure(X, p)
        if not np.isfinite(first).any():
            raise ValueError(
                f"{name}: no position has {what} (pairs of peaks whose midpoints agree "
                "within tolerance); lower min_pairs or raise tolerance"
            )
        shape = X.scan_shape
        ref_model = "plane" if p.model == "none" else p.model
        coef, _ = fit_surface(first, shape, ref_model, p.residual_threshold)
        reference = design_matrix(shape, ref_model) @ coef
        measured = self._measure(X, p, reference)
        valid = np.isfinite(measured).all(axis=1)
        if not valid.any():
            raise ValueError(
                f"{name}: no {what} lies within search_radius={p.search_radius} px of the "
                "fitted origin model; raise search_radius or choose another model"
                + (
                    ", or use method='friedel' if the central beam is blocked"
                    if p.method == "central"
                    else ""
                )
            )
        if p.model == "none":
            coef, mask, origin = np.zeros((0, 2)), valid, measured.copy()
        else:
            coef, mask = fit_surface(measured, shape, p.model, p.residual_threshold)
            origin = design_matrix(shape, p.model) @ coef
        d2 = np.sum((measured[mask] - origin[mask]) ** 2, axis=1)
        self.origin_measured_ = measured.reshape(*shape, 2)
        self.origin_ = origin.reshape(*shape, 2)
        self.coefficients_ = coef
        self.mask_ = mask.reshape(shape)
        self.residual_rms_ = float(np.sqrt(d2.mean())) if d2.size else 0.0
        self.scan_shape_ = tuple(shape)
        return self

    def transform(self, X: BraggPeaks) -> BraggPeaks:
        """Subtract each position's origin from its peaks (raw px → centred px).

        Peaks of positions without an origin (only with ``model='none'``) are dropped.
        """
        self._check_fitted()
        name = type(self).__name__
        check_peaks(X, name, centred=False, units="px", forbid="origin")
        if tuple(X.scan_shape) != tuple(self.scan_shape_):
            raise ValueError(
                f"{name}: the origin was fitted on a scan of shape {tuple(self.scan_shape_)} "
                f"but these peaks come from a scan of shape {X.scan_shape}; fit the "
                "OriginCalibrator on this scan (origins depend on the scan position)"
            )
        origin = self.origin_.reshape(-1, 2)
        has = np.isfinite(origin).all(axis=1)
        if not has.all():
            X = X.filter(has[X.position_index])
        pos = X.position_index
        metadata = {**X.metadata, "origin_model": self._validated().model}
        return X.with_coords(
            X.qx - origin[pos, 0], X.qy - origin[pos, 1], calibration="origin", metadata=metadata
        )
