"""The crystal lattice of every diffraction pattern: origin, g1 and g2 per scan position.

:class:`LatticeFitter` finds the lattice of a scan by itself (no clicks) and then fits it
at every scan position. The work is done by pure functions on the flat CSR peak arrays,
vectorised over positions and peaks (no Python loop over either):

* :func:`find_lattice`: the two shortest non-collinear lattice vectors of the pooled
  peaks. Within each position (a sample of at most ``max_positions`` of them) the
  differences between its ``max_peaks`` strongest peaks are lattice vectors; pooled, they
  form dense clusters at the lattice vectors. Every difference is scored by how many
  differences lie within ``spread`` × its length; among the well supported ones (at least
  half the best support) the shortest gives g1 and the shortest one at least 15° from it
  gives g2. Each is refined as the mean of its cluster; the pair is then reduced by
  :func:`reduce_basis`.
* :func:`reduce_basis`: the Lagrange–Gauss reduced basis in a reproducible order (see
  there).
* :func:`index_peaks`: the nearest (h, k) of every peak, and whether the peak lies within
  ``tolerance`` × min(|g1|, |g2|) of that lattice point.
* :func:`fit_lattice`: per position, the weighted least squares fit of the linear model
  ``q = o + h g1 + k g2`` over the indexed peaks (6 parameters ox, oy, g1x, g1y, g2x, g2y),
  with robust down-weighting (IRLS); the 6×6 normal matrices of all positions are
  accumulated with ``np.bincount`` and solved as one batch.

The noise model
---------------
Peak positions are taken as isotropic Gaussian, independent between peaks, with variance
``σ² ∝ 1/intensity`` (``weights='intensity'``: the disk finder's intensity is its estimate
of the counts in the disk, and the centre of a disk of N counts is known to ∝ 1/√N) or a
common variance (``weights='uniform'``). The scale of the variance is unknown and
estimated from the weighted residuals of each position (``s² = Σ w r² / (2n − 6)``, or the
median over the scan when a position has fewer than 10 degrees of freedom), so
``covariance = s² (Aᵀ W A)⁻¹``. Outliers (a wrong peak, two disks merged) are
down-weighted by Huber's weight ``min(1, c / u)`` with ``u`` the peak's standardised
residual distance, ``c = 2.45`` (the 95th percentile of the distance of a 2D Gaussian)
and the scale from the median of ``u`` at each position (MAD).
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np
import pydantic
from scipy.spatial import cKDTree
from sklearn.base import TransformerMixin

from strainkit._base import Estimator, ParamsModel
from strainkit._latticefit import fit_csr
from strainkit.containers import BraggPeaks, LatticeMap

__all__ = ["LatticeFitter", "find_lattice", "fit_lattice", "index_peaks", "reduce_basis"]

_HUBER_C = 2.45  # 95th percentile of |(x, y)| for x, y ~ N(0, 1)
_RAYLEIGH_MEDIAN = 1.1774  # median of |(x, y)| for x, y ~ N(0, 1)
_MIN_DOF_OWN_SCALE = 10  # fewer degrees of freedom: use the scan's median scale
_MIN_SIN = np.sin(np.deg2rad(15.0))  # g2 must be at least this far from collinear with g1


# ---------------------------------------------------------------------------- the basis


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def reduce_basis(g1, g2, *, rtol: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """The reduced basis of the lattice spanned by ``g1``, ``g2``, in a reproducible order.

    Lagrange–Gauss reduction gives the two shortest non-collinear lattice vectors. They
    are then ordered: g1 is the shorter one (when the lengths agree within ``rtol``, the
    one closer in direction to +x), g1 points into the half plane x > 0 (or along +y),
    and g2 is chosen with ``g1 × g2 > 0`` (right-handed in the (x, y) frame).

    Parameters
    ----------
    g1, g2 : array-like, shape (2,)
        Any basis of the lattice.
    rtol : float
        Relative tolerance for "equal length".

    Returns
    -------
    g1, g2 : ndarray, shape (2,)

    Examples
    --------
    >>> reduce_basis([1.0, 0.0], [3.0, 1.0])
    (array([1., 0.]), array([0., 1.]))
    >>> reduce_basis([0.0, -1.0], [3.0, 1.0])
    (array([0., 1.]), array([-3.,  0.]))
    """
    u, v = np.asarray(g1, dtype=float).copy(), np.asarray(g2, dtype=float).copy()
    if u.shape != (2,) or v.shape != (2,) or not np.isfinite([u, v]).all():
        raise ValueError(f"reduce_basis: g1, g2 must be finite 2-vectors, got {u}, {v}")
    if abs(_cross(u, v)) <= 1e-12 * max(u @ u, v @ v):
        raise ValueError(f"reduce_basis: g1={u} and g2={v} are collinear")
    for _ in range(100):
        if u @ u > v @ v:
            u, v = v, u
        m = np.round((u @ v) / (u @ u))
        if m == 0:
            break
        v = v - m * u
    lu, lv = np.hypot(*u), np.hypot(*v)
    if abs(lu - lv) <= rtol * max(lu, lv):
        # equal lengths: among ±u, ±v take the one closest in direction to +x
        cands = np.array([u, -u, v, -v])
        best = int(np.argmax(cands[:, 0] / np.hypot(cands[:, 0], cands[:, 1])))
        first = cands[best]
        other = v if best < 2 else u
    else:
        first, other = (u, v) if lu < lv else (v, u)
    if first[0] < 0 or (first[0] == 0 and first[1] < 0):
        first = -first
    if _cross(first, other) < 0:
        other = -other
    return first + 0.0, other + 0.0  # no negative zeros


def find_lattice(
    qx: np.ndarray,
    qy: np.ndarray,
    intensity: np.ndarray,
    offsets: np.ndarray,
    *,
    max_peaks: int = 12,
    max_positions: int = 2000,
    spread: float = 0.08,
    max_candidates: int = 4000,
) -> tuple[np.ndarray, np.ndarray]:
    """The reduced lattice vectors (g1, g2) of pooled peaks, found from peak differences.

    See the module docstring for the algorithm. The origin of the peaks does not matter
    (only differences within a position are used).

    Parameters
    ----------
    qx, qy, intensity : array, shape (n,)
        The flat peak arrays.
    offsets : array of int, shape (n_positions + 1,)
        CSR offsets.
    max_peaks : int
        Strongest peaks of each position paired.
    max_positions : int
        Positions sampled (evenly over the scan).
    spread : float
        Cluster radius as a fraction of the vector's length (covers the strain).
    max_candidates : int
        Differences scored (evenly sampled).

    Returns
    -------
    g1, g2 : ndarray, shape (2,)
        As :func:`reduce_basis` orders them.

    Raises
    ------
    ValueError
        When no two non-collinear lattice vectors are found.

    Examples
    --------
    >>> hk = np.stack(np.meshgrid(range(-2, 3), range(-2, 3), indexing="ij"), -1)
    >>> q = hk.reshape(-1, 2) @ np.array([[2.0, 0.0], [0.5, 3.0]])
    >>> g1, g2 = find_lattice(q[:, 0], q[:, 1], np.ones(25), np.array([0, 25]))
    >>> g1.round(6), g2.round(6)
    (array([2., 0.]), array([0.5, 3. ]))
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    n_pos = counts.size
    usable = np.flatnonzero(counts >= 2)
    found = f"{int(counts.sum())} peaks at {n_pos} positions, {usable.size} with 2+ peaks"
    if usable.size == 0:
        raise ValueError(f"find_lattice: cannot find a lattice from {found}")
    if usable.size > max_positions:
        usable = usable[np.linspace(0, usable.size - 1, max_positions).round().astype(int)]
    take = np.zeros(n_pos, dtype=bool)
    take[usable] = True
    pos = np.repeat(np.arange(n_pos), counts)
    order = np.lexsort((-np.asarray(intensity, float), pos))
    rank = np.empty(pos.size, dtype=np.int64)
    rank[order] = np.arange(pos.size) - offsets[pos[order]]
    keep = (rank < max_peaks) & take[pos]
    idx = np.flatnonzero(keep)  # sorted by position: CSR within the kept set
    kept_counts = np.bincount(pos[idx], minlength=n_pos)
    first, second = _pairs(kept_counts)
    q = np.stack([np.asarray(qx, float)[idx], np.asarray(qy, float)[idx]], axis=1)
    d = q[second] - q[first]
    d = np.concatenate([d, -d])
    length = np.hypot(d[:, 0], d[:, 1])
    scale = np.median(length) if length.size else 0.0
    d, length = d[length > 1e-6 * scale], length[length > 1e-6 * scale]
    if d.shape[0] < 4:
        raise ValueError(f"find_lattice: too few peak pairs to find a lattice ({found})")
    tree = cKDTree(d)
    cand = np.arange(d.shape[0])
    if cand.size > max_candidates:
        cand = np.linspace(0, d.shape[0] - 1, max_candidates).round().astype(int)
    support = tree.query_ball_point(d[cand], spread * length[cand], return_length=True)
    strong = cand[support >= 0.5 * support.max()]
    strong = strong[np.argsort(length[strong], kind="stable")]
    c1 = _cluster_mean(tree, d, d[strong[0]], spread)
    sin = np.abs(_cross(c1, d[strong])) / (np.hypot(*c1) * length[strong])
    off_axis = strong[sin > _MIN_SIN]
    if off_axis.size == 0:
        raise ValueError(
            "find_lattice: all well supported peak differences are collinear with "
            f"{c1.round(6).tolist()} (a 1D row of peaks?); cannot find a 2D lattice from "
            f"{found}; give g1= and g2= by hand"
        )
    c2 = _cluster_mean(tree, d, d[off_axis[0]], spread)
    return reduce_basis(c1, c2)


def _pairs(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i < j, of peaks at the same position, as flat indices."""
    n = int(counts.sum())
    local = np.arange(n)
    ends = np.repeat(np.cumsum(counts), counts)
    n_after = ends - local - 1
    first = np.repeat(local, n_after)
    start = np.repeat(np.cumsum(n_after) - n_after, n_after)
    second = first + 1 + (np.arange(first.size) - start)
    return first, second


def _cluster_mean(tree: cKDTree, d: np.ndarray, c: np.ndarray, spread: float) -> np.ndarray:
    """Two mean-shift steps: the mean of the differences within ``spread`` |c| of c."""
    for _ in range(2):
        near = tree.query_ball_point(c, spread * np.hypot(*c))
        c = d[near].mean(axis=0)
    return c


# ---------------------------------------------------------------------------- fitting


def index_peaks(
    qx: np.ndarray,
    qy: np.ndarray,
    pos: np.ndarray,
    origin: np.ndarray,
    g: np.ndarray,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest lattice indices (h, k) of every peak, and whether it is within tolerance.

    Parameters
    ----------
    qx, qy : array, shape (n,)
    pos : array of int, shape (n,)
        Flat position of each peak.
    origin : array, shape (n_positions, 2)
    g : array, shape (n_positions, 2, 2)
        Lattice vectors as columns (``g[:, :, 0]`` is g1) per position.
    tolerance : float
        A peak is indexed when it lies within ``tolerance * min(|g1|, |g2|)`` of the
        lattice point.

    Returns
    -------
    h, k : ndarray of int, shape (n,)
    indexed : ndarray of bool, shape (n,)

    Examples
    --------
    >>> h, k, ok = index_peaks(np.array([2.1, 0.9]), np.array([1.0, 0.4]), np.zeros(2, int),
    ...                        np.zeros((1, 2)), np.eye(2)[None], 0.25)
    >>> h, k, ok
    (array([2, 1]), array([1, 0]), array([ True, False]))
    """
    r = np.stack([qx - origin[pos, 0], qy - origin[pos, 1]], axis=1)
    gp = g[pos]
    hk = np.round(np.einsum("nij,nj->ni", np.linalg.inv(g)[pos], r))  # invert per position
    resid = r - np.einsum("nij,nj->ni", gp, hk)
    glen = np.min(np.hypot(g[:, 0, :], g[:, 1, :]), axis=1)[pos]
    indexed = np.hypot(resid[:, 0], resid[:, 1]) <= tolerance * glen
    return hk[:, 0].astype(np.int64), hk[:, 1].astype(np.int64), indexed


@numba.njit(cache=True)
def _segment_medians(values, starts, counts, out):
    for g in range(len(starts)):
        c = counts[g]
        if c == 0:
            continue
        seg = np.sort(values[starts[g] : starts[g] + c])
        out[g] = 0.5 * (seg[(c - 1) // 2] + seg[c // 2])


def _group_median(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` per group (NaN for empty groups), vectorised."""
    if len(groups) and (np.diff(groups) < 0).any():  # CSR tables come grouped already
        order = np.argsort(groups, kind="stable")
        values, groups = values[order], groups[order]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    out = np.full(n_groups, np.nan)
    _segment_medians(np.ascontiguousarray(values, dtype=float), starts, counts, out)
    return out


def _solve(qx, qy, h, k, w, pos, n_pos):
    """One weighted least squares fit per position; batched 6x6 normal equations.

    Returns the parameters (n_pos, 6), the inverse normal matrices (n_pos, 6, 6) and
    whether each position's system is well conditioned.
    """
    basis = (np.ones_like(h, dtype=float), h.astype(float), k.astype(float))
    m = np.empty((n_pos, 3, 3))
    rhs = np.empty((n_pos, 6))
    for a in range(3):  # 3x3 loops over the design's columns, not over data
        for b in range(a, 3):
            m[:, a, b] = m[:, b, a] = np.bincount(
                pos, weights=w * basis[a] * basis[b], minlength=n_pos
            )
        rhs[:, 2 * a] = np.bincount(pos, weights=w * basis[a] * qx, minlength=n_pos)
        rhs[:, 2 * a + 1] = np.bincount(pos, weights=w * basis[a] * qy, minlength=n_pos)
    # x and y share the design: N = M ⊗ I2 in the order (ox, oy, g1x, g1y, g2x, g2y)
    sv = np.linalg.svd(m, compute_uv=False)
    ok = np.isfinite(sv).all(axis=1) & (sv[:, -1] > 1e-10 * sv[:, 0])
    params = np.full((n_pos, 6), np.nan)
    inv = np.full((n_pos, 6, 6), np.nan)
    if ok.any():
        # inv(M ⊗ I2) = inv(M) ⊗ I2: invert the 3x3 design, not the 6x6 system
        minv = np.linalg.inv(m[ok])
        inv[ok] = np.einsum("pab,ij->paibj", minv, np.eye(2)).reshape(-1, 6, 6)
        params[ok] = np.einsum("pij,pj->pi", inv[ok], rhs[ok])
    return params, inv, ok


def _residuals(qx, qy, h, k, pos, params):
    p = params[pos]
    rx = qx - (p[:, 0] + h * p[:, 2] + k * p[:, 4])
    ry = qy - (p[:, 1] + h * p[:, 3] + k * p[:, 5])
    return rx, ry


def _as_lattice(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    origin = params[:, 0:2]
    g = np.stack([params[:, 2:4], params[:, 4:6]], axis=-1)
    return origin, g


def fit_lattice(
    qx: np.ndarray,
    qy: np.ndarray,
    weights: np.ndarray,
    pos: np.ndarray,
    n_pos: int,
    origin: np.ndarray,
    g: np.ndarray,
    *,
    tolerance: float = 0.25,
    robust: bool = True,
    n_iter: int = 5,
    min_peaks: int = 6,
) -> dict[str, np.ndarray]:
    """Per-position weighted, robust least squares fit of ``q = o + h g1 + k g2``.

    Peaks are indexed against the starting lattice (``origin``, ``g``), fitted, indexed
    again against each position's own fit, and fitted again with ``n_iter`` Huber IRLS
    iterations when ``robust``. See the module docstring for the noise model.

    Parameters
    ----------
    qx, qy, weights : array, shape (n,)
        Peak positions and their weights (∝ 1 / variance).
    pos : array of int, shape (n,)
        Flat position of each peak, in ``range(n_pos)``.
    n_pos : int
        Number of positions.
    origin : array, shape (2,) or (n_pos, 2)
        Starting origin.
    g : array, shape (2, 2) or (n_pos, 2, 2)
        Starting lattice vectors as columns.
    tolerance : float
        Indexing tolerance as a fraction of min(|g1|, |g2|).
    robust : bool
        Down-weight outliers (Huber IRLS).
    n_iter : int
        IRLS iterations.
    min_peaks : int
        Positions with fewer indexed peaks are invalid.

    Returns
    -------
    dict
        ``params`` (n_pos, 6) in the order (ox, oy, g1x, g1y, g2x, g2y), ``covariance``
        (n_pos, 6, 6), ``residual`` (n_pos,) RMS distance of the used peaks from the fit,
        ``n_peaks`` (n_pos,), ``valid`` (n_pos,) bool; NaN where not valid.

    Examples
    --------
    >>> hk = np.stack(np.meshgrid(range(-2, 3), range(-2, 3), indexing="ij"), -1)
    >>> q = hk.reshape(-1, 2) @ np.array([[2.0, 0.0], [0.5, 3.0]]) + [0.3, -0.1]
    >>> out = fit_lattice(q[:, 0], q[:, 1], np.ones(25), np.zeros(25, int), 1,
    ...                   np.zeros(2), np.array([[2.0, 0.5], [0.0, 3.0]]))
    >>> out["params"].round(6), out["n_peaks"]
    (array([[ 0.3, -0.1,  2. ,  0. ,  0.5,  3. ]]), array([25]))
    """
    qx, qy = np.asarray(qx, float), np.asarray(qy, float)
    w0 = np.asarray(weights, float)
    pos = np.asarray(pos, dtype=np.int64)
    origin0 = np.broadcast_to(np.asarray(origin, float), (n_pos, 2))
    g0 = np.broadcast_to(np.asarray(g, float), (n_pos, 2, 2))
    out = fit_csr(qx, qy, w0, pos, n_pos, origin0, g0, tolerance, robust, n_iter, min_peaks)
    if out is not None:  # CSR order: the numba kernel
        return out
    return _fit_lattice_numpy(
        qx, qy, w0, pos, n_pos, origin0, g0, tolerance, robust, n_iter, min_peaks
    )


def _fit_lattice_numpy(qx, qy, w0, pos, n_pos, origin0, g0, tolerance, robust, n_iter, min_peaks):
    """The vectorised numpy version of the fit (the reference for the numba kernel)."""
    h, k, ok_idx = index_peaks(qx, qy, pos, origin0, g0, tolerance)
    params, _, ok = _solve(qx, qy, h, k, w0 * ok_idx, pos, n_pos)
    # index again against each position's own lattice where it has one
    o1, g1 = _as_lattice(params)
    good = ok & np.isfinite(params).all(axis=1)
    o1 = np.where(good[:, None], o1, origin0)
    g1 = np.where(good[:, None, None], g1, g0)
    h, k, ok_idx = index_peaks(qx, qy, pos, o1, g1, tolerance)
    w = w0 * ok_idx
    n_peaks = np.bincount(pos[ok_idx], minlength=n_pos)
    rw = np.ones_like(w)
    for _ in range(n_iter if robust else 0):
        params, _, ok = _solve(qx, qy, h, k, w * rw, pos, n_pos)
        rx, ry = _residuals(qx, qy, h, k, pos, np.nan_to_num(params))
        u = np.sqrt(w) * np.hypot(rx, ry)
        sel = ok_idx
        scale = np.full(n_pos, np.nan)
        if sel.any():
            scale = _group_median(u[sel], pos[sel], n_pos) / _RAYLEIGH_MEDIAN
        s = scale[pos]
        tiny = np.finfo(float).tiny
        z = np.where(np.isfinite(s) & (s > tiny), u / np.maximum(s, tiny), 0.0)
        rw = np.minimum(1.0, _HUBER_C / np.maximum(z, tiny))
    weff = w * rw
    params, inv, ok = _solve(qx, qy, h, k, weff, pos, n_pos)
    rx, ry = _residuals(qx, qy, h, k, pos, np.nan_to_num(params))
    r2 = rx**2 + ry**2
    wss = np.bincount(pos, weights=weff * r2, minlength=n_pos)
    rss = np.bincount(pos[ok_idx], weights=r2[ok_idx], minlength=n_pos)
    return _finish(params, inv, ok, n_peaks, wss, rss, min_peaks)


def _finish(params, inv, ok, n_peaks, wss, rss, min_peaks) -> dict[str, np.ndarray]:
    """Covariance, residual and validity from a fit's sums; NaN where not valid."""
    dof = 2 * n_peaks - 6
    valid = ok & (n_peaks >= max(min_peaks, 3)) & np.isfinite(params).all(axis=1)
    s2 = np.where(dof > 0, wss / np.maximum(dof, 1), np.nan)
    own = valid & (dof >= _MIN_DOF_OWN_SCALE)
    if own.any():
        s2 = np.where(dof >= _MIN_DOF_OWN_SCALE, s2, np.median(s2[own]))
    cov = s2[:, None, None] * inv
    residual = np.sqrt(rss / np.maximum(n_peaks, 1))
    valid &= np.isfinite(cov).all(axis=(1, 2)) & np.isfinite(residual)
    params = np.where(valid[:, None], params, np.nan)
    cov[~valid] = np.nan
    residual[~valid] = np.nan
    return {
        "params": params,
        "covariance": cov,
        "residual": residual,
        "n_peaks": n_peaks,
        "valid": valid,
    }


def _weights(peaks: BraggPeaks, kind: str) -> np.ndarray:
    """Weights ∝ 1 / variance of each peak's position (see the noise model)."""
    if kind == "uniform":
        return np.ones(peaks.n_peaks)
    inten = np.maximum(np.asarray(peaks.intensity, float), 0.0)
    mean = inten.mean() if inten.size else 0.0
    inten /= mean if mean > 0 else 1.0  # once for the scan: s² compares between positions
    return inten


# ---------------------------------------------------------------------------- estimator


class LatticeFitter(TransformerMixin, Estimator):
    """The crystal lattice (origin, g1, g2 and their covariance) at every scan position.

    ``fit`` finds the lattice of the scan from the pooled peaks (:func:`find_lattice`,
    reduced and ordered by :func:`reduce_basis`: g1 the shorter, right-handed,
    ``g1 × g2 > 0``) unless ``g1`` and ``g2`` are given, then refines it (with one origin)
    by least squares over all pooled peaks. ``transform`` fits the lattice at each
    position (:func:`fit_lattice`) and returns a :class:`~strainkit.LatticeMap` in the
    peaks' units and frame. Positions with fewer than ``min_peaks`` indexed peaks, or
    whose peaks are collinear, are NaN with a False mask.

    Peaks should be centred (``OriginCalibrator``): each position's peaks are first
    indexed against the scan's lattice at ``origin_``.

    Parameters
    ----------
    g1, g2 : (float, float) or None
        The lattice vectors (x, y) in the peaks' units; give both to skip the search.
    tolerance : float
        A peak is indexed when within ``tolerance × min(|g1|, |g2|)`` of its lattice point.
    weights : {'intensity', 'uniform'}
        Peak weights: ∝ intensity (variance ∝ 1/counts) or equal.
    robust : bool
        Down-weight outliers by Huber IRLS.
    n_iter : int
        IRLS iterations.
    min_peaks : int
        Indexed peaks a position needs (at least 3 non-collinear).
    refine : bool
        Refine g1, g2 (and the origin) by least squares over the pooled peaks in ``fit``.
    max_peaks : int
        :func:`find_lattice`: the strongest peaks of each position paired.

    Attributes
    ----------
    g1_, g2_ : ndarray, shape (2,)
        The scan's lattice vectors.
    origin_ : ndarray, shape (2,)
        The scan's origin (≈ 0 for centred peaks).
    n_indexed_ : int
        Pooled peaks indexed by the scan's lattice.
    units_ : str
        The units of the peaks fitted.

    Examples
    --------
    >>> hk = np.stack(np.meshgrid(range(-2, 3), range(-2, 3), indexing="ij"), -1)
    >>> q = hk.reshape(-1, 2) @ np.array([[0.25, 0.0], [0.0, 0.25]])
    >>> rows = [np.c_[q * s, np.ones((25, 2))] for s in (1.0, 1.0, 1.0, 1.01)]
    >>> peaks = BraggPeaks.from_positions(rows, scan_shape=(2, 2), units="A^-1")
    >>> fitter = LatticeFitter().fit(peaks)
    >>> fitter.g1_.round(4) + 0.0, fitter.g2_.round(4) + 0.0  # + 0.0: no "-0."
    (array([0.2502, 0.    ]), array([0.    , 0.2502]))
    >>> lm = fitter.transform(peaks)
    >>> round(float(lm.g1[1, 1, 0]), 6), int(lm.n_peaks[0, 0])
    (0.2525, 25)
    """

    class Params(ParamsModel):
        g1: tuple[float, float] | None = None
        g2: tuple[float, float] | None = None
        tolerance: float = pydantic.Field(0.25, gt=0, lt=0.5)
        weights: Literal["intensity", "uniform"] = "intensity"
        robust: bool = True
        n_iter: int = pydantic.Field(5, ge=1)
        min_peaks: int = pydantic.Field(6, ge=3)
        refine: bool = True
        max_peaks: int = pydantic.Field(12, ge=3)

        @pydantic.field_validator("g1", "g2", mode="before")
        @classmethod
        def _vector(cls, value):
            if isinstance(value, np.ndarray):
                return tuple(value.tolist())
            return value

        @pydantic.model_validator(mode="after")
        def _both(self):
            if (self.g1 is None) != (self.g2 is None):
                raise ValueError("give both g1 and g2, or neither")
            if self.g1 is not None and abs(_cross(np.array(self.g1), np.array(self.g2))) <= (
                1e-12 * max(np.dot(self.g1, self.g1), np.dot(self.g2, self.g2))
            ):
                raise ValueError(f"g1={self.g1} and g2={self.g2} are collinear")
            return self

    def fit(self, X: BraggPeaks, y=None) -> LatticeFitter:
        """Find (or take) the scan's lattice and refine it over the pooled peaks ``X``."""
        p = self._validated()
        name = type(self).__name__
        if not isinstance(X, BraggPeaks):
            raise ValueError(f"{name}: expected BraggPeaks, got {type(X).__name__}")
        if X.n_peaks < 3:
            raise ValueError(
                f"{name}: cannot find a lattice from {X.n_peaks} peak(s) in the whole scan"
            )
        if p.g1 is None:
            try:
                g1, g2 = find_lattice(X.qx, X.qy, X.intensity, X.offsets, max_peaks=p.max_peaks)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        else:
            g1, g2 = np.array(p.g1, float), np.array(p.g2, float)
        if X.centered:
            origin = np.zeros(2)
        else:  # the brightest peak of each position, median over the scan
            pos = X.position_index
            order = np.lexsort((-X.intensity, pos))
            first = order[np.r_[True, pos[order][1:] != pos[order][:-1]]]
            origin = np.array([np.median(X.qx[first]), np.median(X.qy[first])])
        n_indexed = 0
        if p.refine:
            out = fit_lattice(
                X.qx,
                X.qy,
                _weights(X, p.weights),
                np.zeros(X.n_peaks, dtype=np.int64),
                1,
                origin,
                np.stack([g1, g2], axis=-1),
                tolerance=p.tolerance,
                robust=p.robust,
                n_iter=p.n_iter,
                min_peaks=p.min_peaks,
            )
            if not out["valid"][0]:
                raise ValueError(
                    f"{name}: the lattice g1={g1.round(6).tolist()}, g2={g2.round(6).tolist()} "
                    f"indexes only {int(out['n_peaks'][0])} of {X.n_peaks} peaks, or they are "
                    "collinear; check the peaks, tolerance or the given g1, g2"
                )
            origin = out["params"][0, 0:2]
            g1, g2 = out["params"][0, 2:4], out["params"][0, 4:6]
            n_indexed = int(out["n_peaks"][0])
        self.g1_ = np.asarray(g1, float)
        self.g2_ = np.asarray(g2, float)
        self.origin_ = np.asarray(origin, float)
        self.n_indexed_ = n_indexed
        self.units_ = X.units
        return self

    def transform(self, X: BraggPeaks) -> LatticeMap:
        """Fit the lattice at every position of ``X``; a :class:`~strainkit.LatticeMap`."""
        self._check_fitted()
        p = self._validated()
        name = type(self).__name__
        if not isinstance(X, BraggPeaks):
            raise ValueError(f"{name}: expected BraggPeaks, got {type(X).__name__}")
        if X.units != self.units_:
            raise ValueError(
                f"{name}: the lattice was fitted on peaks in {self.units_!r} but these are in "
                f"{X.units!r}; calibrate both the same way"
            )
        shape = tuple(X.scan_shape)
        out = fit_lattice(
            X.qx,
            X.qy,
            _weights(X, p.weights),
            X.position_index,
            X.n_positions,
            self.origin_,
            np.stack([self.g1_, self.g2_], axis=-1),
            tolerance=p.tolerance,
            robust=p.robust,
            n_iter=p.n_iter,
            min_peaks=p.min_peaks,
        )
        for value in out.values():  # fresh arrays: the map may keep them without copying
            value.flags.writeable = False
        par = out["params"]
        return LatticeMap(
            origin=par[:, 0:2].reshape(*shape, 2),
            g1=par[:, 2:4].reshape(*shape, 2),
            g2=par[:, 4:6].reshape(*shape, 2),
            covariance=out["covariance"].reshape(*shape, 6, 6),
            residual=out["residual"].reshape(shape),
            n_peaks=out["n_peaks"].reshape(shape),
            mask=out["valid"].reshape(shape),
            units=X.units,
            frame=X.frame,
            calibrations=X.calibrations,
            metadata={
                "lattice_g1": self.g1_.tolist(),
                "lattice_g2": self.g2_.tolist(),
                "weights": p.weights,
                "robust": p.robust,
            },
        )
