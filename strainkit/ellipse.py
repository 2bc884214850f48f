"""Elliptical distortion: measure it on the rings of a polycrystalline standard, correct it.

A small tilt of the optic axis turns the circles of a diffraction pattern into ellipses.
The distortion is linear: a corrected (circular) offset ``v`` from the pattern origin
appears on the detector at ``D @ v`` with ``D = distortion_matrix(a, b, angle)`` from
:mod:`strainkit._geometry` (semi-axes ``a >= b``, the major axis at ``angle`` from +Qx toward
+Qy, in [0°, 180°)). The correction is ``D⁻¹``: it maps each ellipse onto the circle of
radius ``b``, so the minor axis is preserved and a pixel of the corrected frame is a pixel
along the minor axis.

How :class:`EllipticalCalibrator` measures it (pure functions below):

1. **Coarse search** (:func:`coarse_ellipse`). The area-preserving stretch
   ``S = expm(-K)``, ``K = [[p, q], [q, -p]]``, maps an ellipse of axis ratio ``e^{2κ}``
   (``κ = |(p, q)|``) with its major axis at ``θ = atan2(q, p) / 2`` onto a circle. On a
   grid of (p, q), the radii ``|S q|`` of all peaks are histogrammed; the sharpest
   histogram (largest sum of squared bins) wins. A second, finer grid follows.
2. **Rings** (:mod:`strainkit._rings`): the rings are found in the coarsely corrected
   radii, and each peak is assigned to the nearest ring.
3. **Joint fit** (:func:`fit_rings`). One stretch (p, q) and one radius per ring minimise
   ``Σ w_k (|S q_k| − ρ_ring(k))²`` over the assigned peaks (non-linear least squares,
   started from the coarse search). A peak's weight is its intensity relative to the
   median (a disk's position variance from counting noise goes as 1/counts) over its
   ring's robust scatter squared. Peaks farther than ``n_sigma`` robust standard
   deviations from their ring are rejected and the peaks re-assigned, until the
   assignment no longer changes. Standard errors come from the Jacobian at the solution.

Precision, measured on :func:`strainkit.simulate.simulate_polycrystal` scans of gold
(default microscope: 2e5 e⁻ per pattern, 1 px detector blur, peaks from
:class:`~strainkit.BraggDiskFinder`, ~0.022 px radial scatter): the error of a/b is about
``2e-3 / sqrt(n_spots)`` (1.8e-5 for a 40 x 40 scan of ~14 000 spots); the angle's error
is that divided by ``2 (a/b − 1)`` radians, so it grows without bound as a/b → 1.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pydantic
from scipy import optimize
from sklearn.base import TransformerMixin

from strainkit import _rings
from strainkit._base import Estimator, ParamsModel
from strainkit._geometry import distortion_matrix
from strainkit.containers import BraggPeaks

__all__ = [
    "EllipticalCalibrator",
    "coarse_ellipse",
    "correct_ellipse",
    "ellipse_from_stretch",
    "fit_rings",
    "stretch_from_ellipse",
    "stretched_radii",
]

_GRID = 31  # coarse grid points per axis of (p, q)
_FINE = 13  # fine grid points per axis
_MAX_GRID_PEAKS = 20000  # peaks used by the coarse search
# Standard deviation of an angle uniform over 180°: the angle of a circle is unknown.
_ANGLE_STD_MAX = 180.0 / math.sqrt(12.0)


# ---------------------------------------------------------------------------- geometry


def stretch_from_ellipse(ratio: float, angle_deg: float) -> np.ndarray:
    """(p, q) of the stretch that makes circles of ellipses with axis ratio ``ratio``.

    ``κ = ln(ratio) / 2`` and ``(p, q) = κ (cos 2θ, sin 2θ)`` with ``θ`` the major-axis
    angle. Inverse of :func:`ellipse_from_stretch`.

    Examples
    --------
    >>> np.round(stretch_from_ellipse(np.exp(0.02), 45.0), 12)
    array([0.  , 0.01])
    """
    kappa = 0.5 * math.log(ratio)
    two_theta = 2.0 * math.radians(angle_deg)
    return np.array([kappa * math.cos(two_theta), kappa * math.sin(two_theta)])


def ellipse_from_stretch(p: float, q: float) -> tuple[float, float]:
    """(ratio a/b >= 1, major-axis angle in degrees in [0, 180)) of the stretch (p, q).

    Examples
    --------
    >>> ratio, angle = ellipse_from_stretch(0.0, 0.01)
    >>> round(ratio, 6), round(angle, 6)
    (1.020201, 45.0)
    """
    kappa = math.hypot(p, q)
    angle = math.degrees(0.5 * math.atan2(q, p)) % 180.0
    return math.exp(2.0 * kappa), (0.0 if angle >= 180.0 else angle)


def stretched_radii(
    qx: np.ndarray, qy: np.ndarray, p: float | np.ndarray, q: float | np.ndarray
) -> np.ndarray:
    """``|S (qx, qy)|`` for the area-preserving stretch ``S = expm(-[[p, q], [q, -p]])``.

    ``p`` and ``q`` may be arrays of shape (m, 1) to evaluate m stretches at once,
    giving shape (m, n).

    Examples
    --------
    >>> p, q = stretch_from_ellipse(1.05, 30.0)
    >>> D = distortion_matrix(1.05, 1.0, 30.0)
    >>> ring = D @ np.stack([np.cos(np.arange(4.0)), np.sin(np.arange(4.0))]) * 10
    >>> bool(np.ptp(stretched_radii(ring[0], ring[1], p, q)) < 1e-12)
    True
    """
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    kappa2 = 2.0 * np.hypot(p, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        sinhc = np.where(kappa2 > 0, np.sinh(kappa2) / np.where(kappa2 > 0, kappa2, 1.0), 1.0)
    # S² = cosh(2κ) I − sinh(2κ)/κ K
    r2 = np.cosh(kappa2) * (qx * qx + qy * qy) - 2.0 * sinhc * (
        p * (qx * qx - qy * qy) + 2.0 * q * qx * qy
    )
    return np.sqrt(np.maximum(r2, 0.0))


def correct_ellipse(
    qx: np.ndarray, qy: np.ndarray, ellipse: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the correction ``D⁻¹`` of ``ellipse = (a, b, angle_deg)`` to centred vectors.

    The ellipse with semi-axes a (at ``angle_deg``) and b becomes the circle of radius b
    (the minor axis is preserved).

    Examples
    --------
    >>> qx, qy = correct_ellipse(np.array([1.1, 0.0]), np.array([0.0, 1.0]), (1.1, 1.0, 0.0))
    >>> qx, qy
    (array([1., 0.]), array([0., 1.]))
    """
    a, b, angle = ellipse
    inv = np.linalg.inv(distortion_matrix(a, b, angle))
    qx, qy = np.asarray(qx, dtype=float), np.asarray(qy, dtype=float)
    return inv[0, 0] * qx + inv[0, 1] * qy, inv[1, 0] * qx + inv[1, 1] * qy


# ---------------------------------------------------------------------------- coarse search


def _sharpness(radii: np.ndarray, bin_width: float) -> np.ndarray:
    """Σ h² of a linearly splatted histogram of each row of ``radii`` (shape (m, n))."""
    m, _ = radii.shape
    f = radii / bin_width
    low = np.floor(f).astype(np.int64)
    t = f - low
    low -= low.min(axis=1, keepdims=True)
    n_bins = int(low.max()) + 2
    rows = np.arange(m)[:, None] * n_bins
    hist = np.bincount((rows + low).ravel(), weights=(1.0 - t).ravel(), minlength=m * n_bins)
    hist += np.bincount((rows + low + 1).ravel(), weights=t.ravel(), minlength=m * n_bins)
    return np.sum(hist.reshape(m, n_bins) ** 2, axis=1)


def _best_on_grid(qx, qy, centre, half, n, bin_width, kappa_max) -> np.ndarray:
    axis = np.linspace(-half, half, n)
    pp, qq = np.meshgrid(centre[0] + axis, centre[1] + axis, indexing="ij")
    pp, qq = pp.ravel(), qq.ravel()
    inside = np.hypot(pp, qq) <= kappa_max + 1e-12
    pp, qq = pp[inside], qq[inside]
    scores = np.empty(pp.size)
    chunk = max(1, 2_000_000 // max(qx.size, 1))
    for s in range(0, pp.size, chunk):
        radii = stretched_radii(qx, qy, pp[s : s + chunk, None], qq[s : s + chunk, None])
        scores[s : s + chunk] = _sharpness(radii, bin_width)
    best = int(np.argmax(scores))
    return np.array([pp[best], qq[best]])


def coarse_ellipse(
    qx: np.ndarray, qy: np.ndarray, max_ratio: float = 1.1, bin_width: float = 0.25
) -> np.ndarray:
    """The stretch (p, q) that makes the radii of centred peaks pile up most sharply.

    A grid over all ellipses with axis ratio up to ``max_ratio``, then a finer grid around
    the best point. Good to about 1e-3 in the axis ratio: a start for :func:`fit_rings`.

    Examples
    --------
    >>> phi = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    >>> ring = distortion_matrix(1.04, 1.0, 60.0) @ np.stack([np.cos(phi), np.sin(phi)])
    >>> p, q = coarse_ellipse(*(40 * ring))
    >>> ratio, angle = ellipse_from_stretch(p, q)
    >>> abs(ratio - 1.04) < 2e-3, abs(angle - 60.0) < 3.0
    (True, True)
    """
    qx, qy = np.asarray(qx, dtype=float), np.asarray(qy, dtype=float)
    if qx.size > _MAX_GRID_PEAKS:
        take = np.linspace(0, qx.size - 1, _MAX_GRID_PEAKS).astype(np.int64)
        qx, qy = qx[take], qy[take]
    kappa_max = 0.5 * math.log(max_ratio)
    step = 2.0 * kappa_max / (_GRID - 1)
    best = _best_on_grid(qx, qy, (0.0, 0.0), kappa_max, _GRID, bin_width, kappa_max)
    return _best_on_grid(qx, qy, best, step, _FINE, 0.2 * bin_width, kappa_max * 1.01)


# ---------------------------------------------------------------------------- joint fit


def fit_rings(
    qx: np.ndarray,
    qy: np.ndarray,
    ring: np.ndarray,
    n_rings: int,
    start: np.ndarray | tuple[float, float],
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares stretch (p, q) and ring radii ρ for peaks assigned to rings.

    Minimises ``Σ w_k (|S q_k| − ρ_ring(k))²`` over the peaks with ``ring >= 0`` (weights
    ``w`` default 1), started at ``start = (p, q)``.

    Returns
    -------
    x : ndarray (2 + n_rings,)
        (p, q, ρ_0, ..., ρ_{n_rings-1}); ρ in the area-preserving stretched frame.
    cov : ndarray (2 + n_rings, 2 + n_rings)
        Covariance of ``x`` from the Jacobian and the residual variance.
    residuals : ndarray (n_used,)
        Weighted residuals ``√w_k (|S q_k| − ρ)`` of the peaks used.

    Examples
    --------
    >>> phi = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    >>> circle = np.stack([np.cos(phi), np.sin(phi)])
    >>> pts = distortion_matrix(1.03, 1.0, 20.0) @ np.concatenate([30 * circle, 45 * circle], 1)
    >>> x, cov, res = fit_rings(*pts, np.repeat([0, 1], 40), 2, (0.0, 0.0))
    >>> ratio, angle = ellipse_from_stretch(*x[:2])
    >>> round(ratio, 9), round(angle, 6), float(np.abs(res).max()) < 1e-9
    (1.03, 20.0, True)
    """
    use = ring >= 0
    qx, qy, ring = qx[use], qy[use], ring[use]
    w = np.ones(qx.shape) if weights is None else np.asarray(weights, dtype=float)[use]
    root_w = np.sqrt(w)

    def residual(x):
        return root_w * (stretched_radii(qx, qy, x[0], x[1]) - x[2:][ring])

    x0 = np.concatenate([np.asarray(start, dtype=float), np.zeros(n_rings)])
    r0 = stretched_radii(qx, qy, x0[0], x0[1])
    x0[2:] = np.bincount(ring, weights=w * r0, minlength=n_rings) / np.maximum(
        np.bincount(ring, weights=w, minlength=n_rings), 1e-300
    )
    result = optimize.least_squares(residual, x0, method="lm", x_scale=np.r_[1e-3, 1e-3, x0[2:]])
    res = result.fun
    jac = result.jac
    dof = max(res.size - x0.size, 1)
    cov = np.linalg.pinv(jac.T @ jac) * float(res @ res) / dof
    return result.x, cov, res


def _ellipse_std(p: float, q: float, cov2: np.ndarray) -> tuple[float, float]:
    """Standard errors of (a/b, angle in degrees) from the covariance of (p, q)."""
    kappa = math.hypot(p, q)
    ratio = math.exp(2.0 * kappa)
    if kappa > 0:
        g = np.array([p, q]) / kappa
        var_kappa = float(g @ cov2 @ g)
        h = np.array([-q, p]) / (2.0 * kappa * kappa)
        angle_std = math.degrees(math.sqrt(max(float(h @ cov2 @ h), 0.0)))
    else:
        var_kappa = 0.5 * float(np.trace(cov2))
        angle_std = math.inf
    return 2.0 * ratio * math.sqrt(max(var_kappa, 0.0)), min(angle_std, _ANGLE_STD_MAX)


def _reassign(rad, rho, ring, root_w, n_sigma, floor):
    """Each peak on its nearest ring, unless its weighted deviation from the ring's radius
    exceeds ``n_sigma`` robust standard deviations of the ring's current peaks.

    Returns the new assignment and each ring's robust standard deviation (of a peak of
    weight 1).
    """
    order = np.argsort(rho)
    near = order[_rings.assign_rings(rad, rho[order], np.inf)]
    on = ring >= 0
    dev = root_w[on] * np.abs(rad[on] - rho[ring[on]])
    mad = _rings.group_median(dev, ring[on], rho.size)
    sigma = np.maximum(1.4826 * np.nan_to_num(mad, nan=np.nanmax(mad)), floor)
    keep = root_w * np.abs(rad - rho[near]) <= n_sigma * sigma[near]
    return np.where(keep, near, -1), sigma


# ---------------------------------------------------------------------------- estimator


class EllipticalCalibrator(TransformerMixin, Estimator):
    """Measure the elliptical distortion on the rings of a polycrystalline standard.

    ``fit`` takes centred peaks in px (:class:`strainkit.OriginCalibrator`), finds the
    rings automatically and fits ONE ellipse shape to all of them jointly, each ring with
    its own radius, rejecting outliers (see the module docstring). ``transform`` applies
    the correction ``D⁻¹``, ``D = distortion_matrix(a, b, angle)``, which maps each ellipse
    onto the circle of radius b: **the minor axis is preserved**, so the pixel size of the
    corrected frame is the one along the minor axis.

    Parameters
    ----------
    annulus : (float, float) or None
        Use only the peaks with ``q_min <= |q| <= q_max`` (px, distorted radii), e.g. one
        chosen ring; default all peaks beyond ``min_radius``.
    min_radius : float
        Peaks nearer the origin than this (px) are ignored (the central beam).
    max_ratio : float
        Largest axis ratio a/b the coarse search considers (> 1).
    ring_width : float
        Smoothing (px) of the radius histogram in which rings are found; about the radial
        scatter of the peaks or more.
    min_ring_peaks : int
        A ring needs at least this many peaks.
    n_sigma : float
        Peaks farther than this many robust standard deviations from their ring are
        rejected.
    max_iter : int
        Most rounds of fit and re-assignment.
    weights : {'intensity', 'none'}
        Weight each peak by its intensity (relative to the median), about the inverse
        variance of its position when counting noise limits it; or weigh all equally.

    Attributes
    ----------
    ellipse_ : (float, float, float)
        (a, b, angle_deg) normalised to b = 1, so a is the axis ratio a/b >= 1; the major
        axis is at angle_deg from +Qx toward +Qy, in [0, 180).
    ellipse_std_ : (float, float, float)
        Standard errors of ``ellipse_`` (b is exact). For a ratio near 1 the angle is
        ill-defined and its error large (at most 52°, that of an unknown angle).
    ring_radii_ : ndarray
        Radius of each ring in the corrected frame, px (the minor-axis scale), ascending.
    ring_radii_std_ : ndarray
        Their standard errors, px.
    ring_counts_ : ndarray of int
        Peaks used on each ring.
    residual_rms_ : float
        RMS weighted radial residual of the peaks used, px: the scatter of a peak of
        median intensity (of every peak for ``weights='none'``).
    n_iter_ : int
        Rounds of fit and re-assignment done.

    Examples
    --------
    >>> phi = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    >>> pts = distortion_matrix(1.03, 1.0, 70.0) @ (30 * np.stack([np.cos(phi), np.sin(phi)]))
    >>> peaks = BraggPeaks(pts[0], pts[1], np.ones(50), np.ones(50), [0, 50], (1, 1),
    ...                    calibrations=("origin",))
    >>> cal = EllipticalCalibrator().fit(peaks)
    >>> np.round(cal.ellipse_, 6), np.round(cal.ring_radii_, 6)
    (array([ 1.03,  1.  , 70.  ]), array([30.]))
    >>> cal.transform(peaks).calibrations
    ('origin', 'ellipse')
    """

    class Params(ParamsModel):
        annulus: tuple[pydantic.NonNegativeFloat, pydantic.PositiveFloat] | None = None
        min_radius: pydantic.NonNegativeFloat = 5.0
        max_ratio: float = pydantic.Field(1.1, gt=1.0, le=2.0)
        ring_width: pydantic.PositiveFloat = 0.5
        min_ring_peaks: int = pydantic.Field(10, ge=3)
        n_sigma: float = pydantic.Field(4.0, gt=1.0)
        max_iter: int = pydantic.Field(10, ge=1)
        weights: Literal["intensity", "none"] = "intensity"

        @pydantic.field_validator("annulus")
        @classmethod
        def _ordered(cls, value):
            if value is not None and not value[0] < value[1]:
                raise ValueError("give (q_min, q_max) with q_min < q_max, in px")
            return value

    def fit(self, X: BraggPeaks, y=None) -> EllipticalCalibrator:
        """Find the rings of centred peaks ``X`` (px) and fit the ellipse to them."""
        p = self._validated()
        name = type(self).__name__
        _rings.check_peaks(X, name, centred=True, units="px", forbid="ellipse")
        qx, qy = X.qx, X.qy
        r = np.hypot(qx, qy)
        lo, hi = p.annulus if p.annulus is not None else (p.min_radius, np.inf)
        use = (r >= max(lo, p.min_radius)) & (r <= hi)
        where = f" within the annulus {p.annulus} px" if p.annulus else ""
        if use.sum() < p.min_ring_peaks:
            raise ValueError(
                f"{name}: no rings found: only {int(use.sum())} peak(s) lie beyond "
                f"min_radius={p.min_radius} px{where} (of {X.n_peaks}); a calibration scan "
                "of a polycrystalline standard with many spots per ring is needed"
            )
        qx, qy = qx[use], qy[use]
        w = _rings.peak_weights(X.intensity[use], p.weights)
        root_w = np.sqrt(w)
        start = coarse_ellipse(qx, qy, p.max_ratio)
        rad = stretched_radii(qx, qy, *start)
        stats = _rings.measure_rings(
            rad,
            smooth=p.ring_width,
            bin_width=p.ring_width / 5,
            min_peaks=p.min_ring_peaks,
            n_sigma=p.n_sigma,
            weights=w,
        )
        if stats.radius.size == 0:
            raise ValueError(
                f"{name}: no rings found among {qx.size} peaks{where}: no radius holds "
                f"{p.min_ring_peaks} or more peaks (min_ring_peaks). Check that the peaks "
                "come from a polycrystalline standard, lower min_ring_peaks, widen "
                "ring_width, or choose a ring with annulus=(q_min, q_max)"
            )
        ring, n_rings = stats.index, stats.radius.size
        floor = 1e-6 * float(stats.radius.max())
        sigma = np.maximum(np.nan_to_num(stats.scatter, nan=np.nanmax(stats.scatter)), floor)
        n_iter = 0
        while n_iter < p.max_iter:
            n_iter += 1
            # each peak weighs as its intensity over its ring's scatter squared
            ring_w = (np.median(sigma) / sigma) ** 2
            x, cov, _ = fit_rings(qx, qy, ring, n_rings, start, w * ring_w[np.maximum(ring, 0)])
            start = x[:2]
            rad = stretched_radii(qx, qy, *start)
            new, sigma = _reassign(rad, x[2:], ring, root_w, p.n_sigma, floor)
            counts = np.bincount(new[new >= 0], minlength=n_rings)
            if (counts < p.min_ring_peaks).any() or np.array_equal(new, ring):
                break  # converged, or a ring would lose its support: keep the last fit
            ring = new
        on = ring >= 0
        res = root_w[on] * (rad[on] - x[2:][ring[on]])
        ratio, angle = ellipse_from_stretch(x[0], x[1])
        ratio_std, angle_std = _ellipse_std(x[0], x[1], cov[:2, :2])
        kappa = 0.5 * math.log(ratio)
        order = np.argsort(x[2:])
        self.ellipse_ = (ratio, 1.0, angle)
        self.ellipse_std_ = (ratio_std, 0.0, angle_std)
        self.ring_radii_ = x[2:][order] * math.exp(-kappa)
        self.ring_radii_std_ = np.sqrt(np.diag(cov)[2:][order]) * math.exp(-kappa)
        self.ring_counts_ = np.bincount(ring[ring >= 0], minlength=n_rings)[order]
        self.residual_rms_ = float(np.sqrt(np.mean(res**2)) * math.exp(-kappa))
        self.n_iter_ = n_iter
        return self

    def transform(self, X: BraggPeaks) -> BraggPeaks:
        """Correct centred peaks (px): ``D⁻¹ q``; calibration ``'ellipse'`` is appended.

        ``ellipse_`` and ``ellipse_std_`` are recorded in the metadata (``'ellipse'``,
        ``'ellipse_std'``), from where :class:`~strainkit.PixelCalibrator` takes the
        ellipse's share of the pixel size's error.
        """
        self._check_fitted()
        _rings.check_peaks(X, type(self).__name__, centred=True, units="px", forbid="ellipse")
        qx, qy = correct_ellipse(X.qx, X.qy, self.ellipse_)
        metadata = {
            **X.metadata,
            "ellipse": [float(v) for v in self.ellipse_],
            "ellipse_std": [float(v) for v in self.ellipse_std_],
        }
        return X.with_coords(qx, qy, calibration="ellipse", metadata=metadata)
