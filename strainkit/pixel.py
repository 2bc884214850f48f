"""The detector pixel size in Å⁻¹, from the rings of a standard of known d-spacings.

:class:`PixelCalibrator` finds the rings of centred, ellipse-corrected peaks
(:mod:`strainkit._rings`, as :mod:`strainkit.ellipse` does), assigns them to the known
d-spacings by their radius ratios, without a starting guess (:func:`assign_spacings`), and
fits the pixel size ``s`` (Å⁻¹ per px) of ``1/d = s · r`` over all assigned rings by
weighted least squares (:func:`fit_pixel_size`). Because the ellipse correction keeps the
minor axis, ``s`` is the pixel size along the minor axis of the distortion.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pydantic
from sklearn.base import TransformerMixin

from strainkit import _rings
from strainkit._base import Estimator, ParamsModel
from strainkit.containers import BraggPeaks
from strainkit.crystal import Crystal

__all__ = ["PixelCalibrator", "assign_spacings", "fit_pixel_size"]


def _score(radii: np.ndarray, q_ref: np.ndarray, scale: np.ndarray, tolerance: float):
    """For each candidate scale (Å⁻¹/px): matched reference of each ring, misfit, score."""
    predicted = q_ref[None, :] / scale[:, None]  # (c, n) ring radii the references predict
    pos = (
        np.clip(np.searchsorted(q_ref, radii[None, :] * scale[:, None]), 1, q_ref.size - 1)
        if q_ref.size > 1
        else np.zeros((scale.size, radii.size), dtype=np.int64)
    )
    rows = np.arange(scale.size)[:, None]
    lower = np.maximum(pos - 1, 0)
    dev_lo = np.abs(radii / predicted[rows, lower] - 1.0)
    dev_hi = np.abs(radii / predicted[rows, pos] - 1.0)
    k = np.where(dev_lo <= dev_hi, lower, pos)
    dev = np.minimum(dev_lo, dev_hi)
    match = np.where(dev <= tolerance, k, -1)
    # two rings on one reference: only the closer one counts
    dup = (match[:, 1:] == match[:, :-1]) & (match[:, 1:] >= 0)
    worse_right = dev[:, 1:] >= dev[:, :-1]
    match[:, 1:][dup & worse_right] = -1
    match[:, :-1][dup & ~worse_right] = -1
    n_matched = (match >= 0).sum(axis=1)
    lo, hi = radii.min() * (1 - tolerance), radii.max() * (1 + tolerance)
    expected = ((predicted >= lo) & (predicted <= hi)).sum(axis=1)
    missing = expected - n_matched
    misfit = np.sqrt(
        np.sum(np.where(match >= 0, dev, 0.0) ** 2, axis=1) / np.maximum(n_matched, 1)
    )
    return match, misfit, n_matched - missing, n_matched


def assign_spacings(
    radii: np.ndarray, d_spacings: np.ndarray, tolerance: float = 0.005
) -> tuple[np.ndarray, float]:
    """Assign measured ring radii (px) to d-spacings (Å) by their ratios; no guess needed.

    Every pairing of one ring with one d-spacing proposes a pixel size ``s = 1/(d r)``;
    each proposal matches every ring to the d-spacing predicting the nearest radius
    (within a relative ``tolerance``) and is refitted to its matches once. The proposal
    with the most matched rings minus the d-spacings it predicts inside the measured
    range but that no ring matches wins (so a scale that skips rings, e.g. fcc's 222,
    400, 440 for rings 111, 200, 220, loses); ties go to the smallest misfit.

    Returns
    -------
    match : ndarray (r,) of int
        Index into ``d_spacings`` of each ring, -1 for rings without a match.
    scale : float
        The winning pixel size, Å⁻¹/px (a first estimate).

    Examples
    --------
    >>> d = np.array([2.3544, 2.0390, 1.4418, 1.2296])  # fcc 111, 200, 220, 311
    >>> match, s = assign_spacings(1 / (d[:3] * 0.014), d)
    >>> match, round(s, 6)
    (array([0, 1, 2]), 0.014)
    """
    radii = np.asarray(radii, dtype=float)
    d = np.asarray(d_spacings, dtype=float)
    q_ref = np.sort(1.0 / d)
    back = np.argsort(1.0 / d)  # index in d_spacings of each sorted q_ref
    scale = (q_ref[None, :] / radii[:, None]).ravel()
    match, _, _, _ = _score(radii, q_ref, scale, tolerance)
    # refit each proposal to its matches: s = Σ q r / Σ r² (least squares in q)
    q_m = np.where(match >= 0, q_ref[np.maximum(match, 0)], 0.0)
    r_m = np.where(match >= 0, radii[None, :], 0.0)
    refit = np.sum(q_m * r_m, axis=1) / np.maximum(np.sum(r_m * r_m, axis=1), 1e-300)
    scale = np.where(refit > 0, refit, scale)
    match, misfit, score, _ = _score(radii, q_ref, scale, tolerance)
    best = int(np.lexsort((misfit, -score))[0])
    out = np.where(match[best] >= 0, back[np.maximum(match[best], 0)], -1)
    return out, float(scale[best])


def fit_pixel_size(
    radii: np.ndarray, radii_std: np.ndarray, d: np.ndarray
) -> tuple[float, float, float]:
    """Weighted least-squares pixel size ``s`` of ``1/d = s · r`` and its standard error.

    The radii carry the errors: ``r_i = u / d_i`` with ``u = 1/s`` is fitted with weights
    ``1/σ_i²``. The standard error is scaled up by the Birge ratio ``sqrt(χ²/(m−1))`` when
    the rings scatter more than their errors say (m rings).

    Returns
    -------
    s, s_std, chi2 : float
        Å⁻¹ per px, its standard error, and χ² of the fit.

    Examples
    --------
    >>> d = np.array([2.3544, 2.039, 1.4418])
    >>> s, s_std, chi2 = fit_pixel_size(1 / (0.014 * d), np.full(3, 1e-3), d)
    >>> round(s, 9), s_std < 1e-6
    (0.014, True)
    """
    r, sig, q = (np.asarray(v, dtype=float) for v in (radii, radii_std, d))
    q = 1.0 / q
    w = 1.0 / sig**2
    u = float(np.sum(w * q * r) / np.sum(w * q * q))
    u_std = float(1.0 / np.sqrt(np.sum(w * q * q)))
    chi2 = float(np.sum(w * (r - u * q) ** 2))
    if r.size > 1:
        u_std *= max(1.0, np.sqrt(chi2 / (r.size - 1)))
    return 1.0 / u, u_std / u**2, chi2


class PixelCalibrator(TransformerMixin, Estimator):
    """Detector pixel size (Å⁻¹ per px) from the rings of a standard with known spacings.

    ``fit`` takes centred, ellipse-corrected peaks in px
    (:class:`~strainkit.EllipticalCalibrator`), finds the rings, assigns them to the
    d-spacings by their radius ratios (no starting guess) and fits ``1/d = s · r`` over
    all assigned rings by weighted least squares. ``transform`` multiplies the peak
    coordinates by ``s``: units become ``'A^-1'`` (calibration ``'pixel'``). The ellipse
    correction keeps the minor axis, so ``s`` is the pixel size along it.

    Parameters
    ----------
    d_spacings : sequence of float or None
        Known d-spacings of the standard, Å (any order; extra ones are fine).
    crystal : strainkit.crystal.Crystal or None
        The standard instead, e.g. ``strainkit.crystal.fcc(4.078)``: its allowed
        d-spacings down to ``d_min``. Give exactly one of ``d_spacings`` and ``crystal``.
    d_min : float
        Smallest d-spacing (Å) taken from ``crystal``.
    annulus : (float, float) or None
        Use only peaks with ``q_min <= |q| <= q_max`` (px).
    min_radius : float
        Peaks nearer the origin than this (px) are ignored (the central beam).
    ring_width : float
        Smoothing (px) of the radius histogram in which rings are found.
    min_ring_peaks : int
        A ring needs at least this many peaks.
    tolerance : float
        Largest relative misfit between a ring and the radius its d-spacing predicts.
    n_sigma : float
        Peaks farther than this many robust standard deviations from their ring's radius
        are rejected.
    weights : {'intensity', 'none'}
        Weight each peak by its intensity (relative to the median) in the ring radii, or
        weigh all equally.

    Attributes
    ----------
    q_pixel_size_ : float
        Å⁻¹ per px of the corrected frame (along the distortion's minor axis).
    q_pixel_size_std_ : float
        Its standard error: from the ring radii, and, when the peaks' metadata hold the
        ellipse correction's standard error (``EllipticalCalibrator.transform`` records
        it), from that too: an error δ in a/b moves every corrected radius, and so s, by
        δ / (2 a/b) relative.
    ring_radii_, ring_radii_std_ : ndarray
        Radius (px) of every ring found and its standard error, ascending.
    ring_counts_ : ndarray of int
        Peaks on each ring.
    ring_d_ : ndarray
        d-spacing (Å) assigned to each ring; NaN for a ring that matches none (unused).
    chi2_ : float
        χ² of the weighted fit (about m − 1 for m rings when the errors are right).

    Examples
    --------
    >>> d = np.array([2.3544, 2.039, 1.4418])
    >>> phi = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    >>> r = np.repeat(1 / (0.014 * d), 30)
    >>> qx, qy = r * np.cos(np.tile(phi, 3)), r * np.sin(np.tile(phi, 3))
    >>> peaks = BraggPeaks(qx, qy, np.ones(90), np.ones(90), [0, 90], (1, 1),
    ...                    calibrations=("origin", "ellipse"))
    >>> cal = PixelCalibrator(d_spacings=[2.3544, 2.039, 1.4418, 1.2296]).fit(peaks)
    >>> round(cal.q_pixel_size_, 9), cal.ring_d_
    (0.014, array([2.3544, 2.039 , 1.4418]))
    >>> cal.transform(peaks).units
    'A^-1'
    """

    class Params(ParamsModel):
        d_spacings: tuple[pydantic.PositiveFloat, ...] | None = None
        crystal: Crystal | None = None
        d_min: pydantic.PositiveFloat = 0.5
        annulus: tuple[pydantic.NonNegativeFloat, pydantic.PositiveFloat] | None = None
        min_radius: pydantic.NonNegativeFloat = 5.0
        ring_width: pydantic.PositiveFloat = 0.5
        min_ring_peaks: int = pydantic.Field(10, ge=3)
        tolerance: float = pydantic.Field(0.005, gt=0, lt=0.2)
        n_sigma: float = pydantic.Field(4.0, gt=1.0)
        weights: Literal["intensity", "none"] = "intensity"

        @pydantic.model_validator(mode="after")
        def _one_source(self):
            if (self.d_spacings is None) == (self.crystal is None):
                raise ValueError(
                    "give exactly one of d_spacings (Å) or crystal "
                    "(e.g. strainkit.crystal.fcc(4.078))"
                )
            if self.d_spacings is not None and len(self.d_spacings) == 0:
                raise ValueError("d_spacings is empty; give the standard's spacings in Å")
            if self.annulus is not None and not self.annulus[0] < self.annulus[1]:
                raise ValueError("annulus: give (q_min, q_max) with q_min < q_max, in px")
            return self

    def fit(self, X: BraggPeaks, y=None) -> PixelCalibrator:
        """Find the rings of centred, ellipse-corrected peaks ``X`` (px); fit the pixel size."""
        p = self._validated()
        name = type(self).__name__
        _rings.check_peaks(X, name, centred=True, units="px", forbid="pixel")
        if "ellipse" not in X.calibrations:
            warnings.warn(
                f"{name}: the peaks are not ellipse-corrected (calibrations={X.calibrations});"
                " elliptical rings are broad and the pixel size is then an average over "
                "directions. Apply EllipticalCalibrator first.",
                UserWarning,
                stacklevel=2,
            )
        if p.crystal is not None:
            d = np.asarray(p.crystal.d_spacings(p.d_min), dtype=float)
        else:
            d = np.unique(np.asarray(p.d_spacings, dtype=float))[::-1]
        r = np.hypot(X.qx, X.qy)
        lo, hi = p.annulus if p.annulus is not None else (0.0, np.inf)
        where = f" within the annulus {p.annulus} px" if p.annulus else ""
        use = (r >= max(lo, p.min_radius)) & (r <= hi)
        stats = _rings.measure_rings(
            r[use],
            smooth=p.ring_width,
            bin_width=p.ring_width / 5,
            min_peaks=p.min_ring_peaks,
            n_sigma=p.n_sigma,
            weights=_rings.peak_weights(X.intensity[use], p.weights),
        )
        radii = stats.radius
        if radii.size == 0:
            raise ValueError(
                f"{name}: no rings found among {int(use.sum())} peaks beyond "
                f"min_radius={p.min_radius} px{where} (of {X.n_peaks}): no radius holds "
                f"{p.min_ring_peaks} or more peaks. Check that the peaks come from a "
                "polycrystalline standard, or lower min_ring_peaks / widen ring_width"
            )
        found = ", ".join(f"{v:.3f}" for v in radii)
        if radii.size == 1 and d.size > 1:
            raise ValueError(
                f"{name}: only one ring was found (radius {found} px), which cannot be "
                f"assigned among {d.size} d-spacings by ratios; give only its d-spacing, "
                "or include more rings"
            )
        match, _ = assign_spacings(radii, d, p.tolerance)
        n_matched = int((match >= 0).sum())
        if n_matched < min(2, radii.size):
            given = ", ".join(f"{v:.4f}" for v in d[:12]) + (", ..." if d.size > 12 else "")
            raise ValueError(
                f"{name}: the d-spacings [{given}] Å match none of the rings found: their "
                f"radius ratios fit no two rings within tolerance={p.tolerance}. Rings found "
                f"at radii [{found}] px{where}. Check the standard (d_spacings / crystal), "
                "raise tolerance, or check the ellipse correction"
            )
        ok = match >= 0
        if not ok.all():
            unmatched = ", ".join(f"{v:.3f}" for v in radii[~ok])
            warnings.warn(
                f"{name}: the rings at radii [{unmatched}] px match none of the d-spacings "
                "and are not used (another phase, double diffraction or a spurious ring?)",
                UserWarning,
                stacklevel=2,
            )
        ring_d = np.where(ok, d[np.maximum(match, 0)], np.nan)
        sig = np.where(np.isfinite(stats.radius_std), stats.radius_std, np.inf)
        sig = np.maximum(sig, 1e-9 * radii)
        s, s_std, chi2 = fit_pixel_size(radii[ok], sig[ok], ring_d[ok])
        ellipse, ellipse_std = X.metadata.get("ellipse"), X.metadata.get("ellipse_std")
        if ellipse is not None and ellipse_std is not None:
            # the correction keeps the minor axis: an error δ in a/b moves every corrected
            # radius, and so s, by δ / (2 a/b) relative
            share = 0.5 * float(ellipse_std[0]) / (float(ellipse[0]) / float(ellipse[1]))
            s_std = float(np.hypot(s_std, s * share))
        self.q_pixel_size_ = s
        self.q_pixel_size_std_ = s_std
        self.ring_radii_ = radii
        self.ring_radii_std_ = stats.radius_std
        self.ring_counts_ = stats.count
        self.ring_d_ = ring_d
        self.chi2_ = chi2
        return self

    def transform(self, X: BraggPeaks) -> BraggPeaks:
        """Convert centred peaks from px to Å⁻¹ (calibration ``'pixel'``)."""
        self._check_fitted()
        _rings.check_peaks(X, type(self).__name__, centred=True, units="px", forbid="pixel")
        s = self.q_pixel_size_
        metadata = {**X.metadata, "q_pixel_size": float(s)}
        return X.with_coords(
            X.qx * s, X.qy * s, calibration="pixel", units="A^-1", metadata=metadata
        )
