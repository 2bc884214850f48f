"""Image registration for the rotation calibration: a STEM image against the shadow image.

The measurement behind :class:`strainkit.rotation.RotationCalibrator`; see the module
docstring of :mod:`strainkit.rotation` for the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.fft as sfft
from scipy import ndimage, optimize, spatial

from strainkit._geometry import distortion_matrix, flip_matrix, rotation_matrix

__all__ = ["RotationFit", "register_images", "shadow_disk_mask"]


def _wrap_deg(angle: float) -> float:
    """An angle in degrees wrapped into [-180, 180)."""
    wrapped = (float(angle) + 180.0) % 360.0 - 180.0
    return 0.0 if wrapped == 0.0 else wrapped  # no -0.0


_OWNER = "RotationCalibrator"
_N_THETA = 360  # log-polar angular samples over 180°
_N_RHO = 96  # log-polar radial samples
_CANDIDATES_PER_FLIP = 3  # Fourier–Mellin peaks kept per flip hypothesis
_REFINE = 3  # candidates refined by least squares, at most
_RECHECK = 0.75  # ... those whose coarse score is within this fraction of the best
_ILLUMINATION = 3.0  # the shadow's illumination: its mean over this many high-pass widths
_SMOOTH = 1.0  # px, Gaussian smoothing of the image: less noise in the model of the shadow
_MASK_MARGIN = 3.0  # px kept clear of the edge of the shadow's bright disk


# ---------------------------------------------------------------------------- input checks


def _as_image(value: Any, name: str) -> np.ndarray:
    """A finite 2D float64 copy of an image, or a ``ValueError`` saying what to fix."""
    arr = np.asarray(value)
    if arr.ndim != 2:
        hint = (
            " For a stack of frames pass one image, e.g. the sum over the first axis."
            if arr.ndim == 3
            else ""
        )
        raise ValueError(
            f"{_OWNER}: {name} must be a 2D image (x = axis 0, y = axis 1), got {arr.ndim}D "
            f"with shape {arr.shape}.{hint}"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{_OWNER}: {name} must hold real numbers, got dtype {arr.dtype}")
    if min(arr.shape) < 16:
        raise ValueError(
            f"{_OWNER}: {name} of shape {arr.shape} is too small; give at least 16 x 16 px"
        )
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{_OWNER}: the {name} holds {int(bad.sum())} NaN/inf pixel(s) (first at {first}); "
            f"replace them, e.g. by the median of the finite pixels ({name}[~np.isfinite("
            f"{name})] = np.median({name}[np.isfinite({name})])), or crop them out"
        )
    return arr


def _as_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise ValueError(
            f"{_OWNER}: shadow_mask has shape {arr.shape} but the shadow is {shape}; give one "
            "boolean per shadow pixel (True inside the bright disk)"
        )
    arr = arr.astype(bool)
    if arr.sum() < 64:
        raise ValueError(
            f"{_OWNER}: shadow_mask marks only {int(arr.sum())} pixel(s); mark the bright disk "
            "of the shadow (at least 64 px)"
        )
    return arr


def _ellipse_tuple(value: Any) -> tuple[float, float, float] | None:
    """(a, b, angle_deg) from None, a fitted ellipse calibrator or a 3-sequence."""
    if value is None:
        return None
    if hasattr(value, "ellipse_") or hasattr(value, "get_params"):
        try:
            value = value.ellipse_
        except AttributeError:
            raise ValueError(
                f"ellipse={type(value).__name__}(...) is not fitted (no ellipse_); fit it "
                "first, or give (a, b, angle_deg)"
            ) from None
    try:
        a, b, angle = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"ellipse={value!r}: give None, a fitted EllipticalCalibrator or (a, b, angle_deg)"
        ) from None
    if not all(math.isfinite(v) for v in (a, b, angle)) or b <= 0 or a < b:
        raise ValueError(
            f"ellipse={value!r}: need finite a >= b > 0 (semi-axes) and an angle in degrees"
        )
    return a, b, angle


# ---------------------------------------------------------------------------- geometry


def shadow_disk_mask(shadow: np.ndarray, margin: float = _MASK_MARGIN) -> np.ndarray:
    """The bright disk of a shadow image, ``margin`` px inside its edge (boolean image).

    The disk is the convex hull of the largest region brighter than half-way between the
    dark surround and the bright top of the smoothed image, so dark features at its edge
    leave no notch.

    Examples
    --------
    >>> x, y = np.mgrid[:64, :64]
    >>> img = 100.0 * (np.hypot(x - 30, y - 33) < 20)
    >>> mask = shadow_disk_mask(img, margin=2)
    >>> bool(mask[30, 33]), bool(mask[30, 52]), round(float(np.sqrt(mask.sum() / np.pi)))
    (True, False, 18)
    """
    shadow = np.asarray(shadow, dtype=np.float64)
    smooth = ndimage.gaussian_filter(shadow, 2.0)
    low, high = np.percentile(smooth, [1.0, 99.5])
    if not high > low:
        raise ValueError(f"{_OWNER}: the shadow image is constant; no bright disk to register")
    bright = smooth > 0.5 * (low + high)
    labels, n = ndimage.label(bright)
    sizes = ndimage.sum_labels(bright, labels, np.arange(1, n + 1))
    region = labels == 1 + int(np.argmax(sizes))
    points = np.argwhere(region).astype(float)
    grid = np.stack(np.meshgrid(*map(np.arange, shadow.shape), indexing="ij"), -1).reshape(-1, 2)
    try:
        hull = spatial.ConvexHull(points)
        inside = np.all(grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0.5, axis=1)
    except spatial.QhullError:  # a degenerate (line-like) region: keep it as it is
        inside = region.ravel()
    hull_mask = inside.reshape(shadow.shape)
    padded = np.pad(hull_mask, 1)  # the image border counts as outside
    mask = ndimage.distance_transform_edt(padded)[1:-1, 1:-1] > margin
    return mask


def _smooth_step(u: np.ndarray) -> np.ndarray:
    """0 for u <= 0, 1 for u >= 1, ``3u² − 2u³`` in between (smooth at both ends)."""
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _taper(points: np.ndarray, shape: tuple[int, int], width: float) -> np.ndarray:
    """Apodisation weight at continuous positions (n, 2): 1 inside, 0 at the image edges."""
    w = np.ones(points.shape[0])
    for axis in range(2):
        x = points[:, axis]
        edge = np.minimum(x + 0.5, shape[axis] - 0.5 - x)
        w *= _smooth_step(edge / width)
    return w


def _taper_image(shape: tuple[int, int], width: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 2)
    return _taper(grid.astype(float), shape, width).reshape(shape)


def _highpass_image(image: np.ndarray, sigma: float) -> np.ndarray:
    """The image minus its Gaussian-smoothed self."""
    return image - ndimage.gaussian_filter(image, sigma, mode="reflect")


def _masked_ratio(shadow: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """``shadow / local mean − 1`` where ``weight > 0``, the mean taken over the weight only.

    A high-pass that neither sees the edge of the bright disk nor an uneven illumination.
    """
    num = ndimage.gaussian_filter(shadow * weight, sigma, mode="constant")
    den = ndimage.gaussian_filter(weight, sigma, mode="constant")
    local = num / np.maximum(den, 1e-9)
    floor = 1e-3 * max(float(np.max(np.abs(local))), 1e-300)
    inside = (weight > 0) & (np.abs(local) > floor)
    return np.where(inside, shadow / np.where(inside, local, 1.0) - 1.0, 0.0)


@dataclass(frozen=True)
class _Prepared:
    """Both images, ready to register (see :func:`_prepare`)."""

    image: np.ndarray  # high-passed image
    coef: np.ndarray  # its cubic spline coefficients
    taper_width: float
    c_r: np.ndarray  # image centre, px
    distortion: np.ndarray  # D: corrected -> raw shadow offsets
    c_d: np.ndarray  # point about which D acts (shadow centre)
    mask: np.ndarray  # raw shadow frame
    corrected: np.ndarray  # signal in the ellipse-corrected frame, tapered inside its mask
    corrected_mask: np.ndarray
    c_q: np.ndarray  # centroid of the corrected mask


def _prepare(image, shadow, mask, distortion, sigma) -> _Prepared:
    c_r = (np.asarray(image.shape, dtype=float) - 1.0) / 2.0
    hp = _highpass_image(image, sigma)
    if _SMOOTH > 0:
        hp = ndimage.gaussian_filter(hp, _SMOOTH)
    spread = float(np.std(hp))
    if not spread > 1e-12 * max(float(np.abs(image).max()), 1e-300):
        raise ValueError(
            f"{_OWNER}: the image is featureless (constant after removing its smooth "
            "background); give a STEM image with visible features"
        )
    hp /= spread
    # The refinement filters the warped image like the shadow; here only the broad
    # background goes, so that the taper leaves no step.
    broad = _highpass_image(image, _ILLUMINATION * sigma)
    if _SMOOTH > 0:
        broad = ndimage.gaussian_filter(broad, _SMOOTH)
    coef = ndimage.spline_filter(broad / spread, order=3, mode="mirror")
    taper_width = max(3.0, 0.08 * min(image.shape))

    c_d = (np.asarray(shadow.shape, dtype=float) - 1.0) / 2.0
    weight = mask.astype(float)
    signal = _masked_ratio(shadow, weight, sigma)
    inside = signal[mask]
    spread = float(np.std(inside))
    if not spread > 0:
        raise ValueError(
            f"{_OWNER}: the shadow is featureless inside its bright disk; give a defocused "
            "CBED pattern that shows a shadow image of the sample"
        )
    signal /= spread
    if np.allclose(distortion, np.eye(2)):
        corrected, cmask = signal, mask
    else:  # corrected(q') = raw(c_d + D (q' - c_d))
        offset = c_d - distortion @ c_d
        corrected = ndimage.affine_transform(signal, distortion, offset, order=1)
        cmask = ndimage.affine_transform(weight, distortion, offset, order=1) > 0.999
        corrected = np.where(cmask, corrected, 0.0)
    edge = ndimage.distance_transform_edt(np.pad(cmask, 1))[1:-1, 1:-1]
    corrected = corrected * _smooth_step(edge / 4.0)
    c_q = np.argwhere(cmask).mean(axis=0)
    return _Prepared(hp, coef, taper_width, c_r, distortion, c_d, mask, corrected, cmask, c_q)


def _logpolar(image: np.ndarray, f_lo: float, f_hi: float) -> np.ndarray:
    """Log-polar resampled magnitude spectrum, rows (log ρ) normalised, shape (ρ, θ)."""
    pad = tuple(sfft.next_fast_len(2 * n) for n in image.shape)
    magnitude = np.abs(sfft.fftshift(sfft.fft2(image, s=pad)))
    theta = np.arange(_N_THETA) * (np.pi / _N_THETA)
    rho = f_lo * np.exp(np.arange(_N_RHO) * (np.log(f_hi / f_lo) / (_N_RHO - 1)))
    fx = rho[:, None] * np.cos(theta)[None, :]
    fy = rho[:, None] * np.sin(theta)[None, :]
    coords = [fx * pad[0] + pad[0] // 2, fy * pad[1] + pad[1] // 2]
    lp = np.log(ndimage.map_coordinates(magnitude, coords, order=1) + 1e-12)
    lp -= lp.mean(axis=1, keepdims=True)
    lp /= lp.std(axis=1, keepdims=True) + 1e-12
    return lp


def _fourier_mellin(ls: np.ndarray, lh: np.ndarray, f_lo: float, f_hi: float, scale_range):
    """Peaks (φ mod 180° in rad, s, height) of the log-polar cross-correlation."""
    n_rho, n_theta = ls.shape
    step = np.log(f_hi / f_lo) / (n_rho - 1)
    spec = np.conj(sfft.rfft2(ls, s=(2 * n_rho, n_theta))) * sfft.rfft2(lh, s=(2 * n_rho, n_theta))
    corr = sfft.irfft2(spec, s=(2 * n_rho, n_theta))
    shifts = np.fft.fftfreq(2 * n_rho, 1.0 / (2 * n_rho))  # a = log s / step
    overlap = n_rho - np.abs(shifts)
    log_s = shifts * step
    ok = (
        (overlap >= n_rho / 3)
        & (log_s >= np.log(scale_range[0]))
        & (log_s <= np.log(scale_range[1]))
    )
    corr = np.where(ok[:, None], corr / np.maximum(overlap, 1)[:, None], -np.inf)
    local = ndimage.maximum_filter(corr, size=(3, 5), mode="wrap")
    rows, cols = np.nonzero((corr == local) & np.isfinite(corr))
    order = np.argsort(corr[rows, cols])[::-1][:_CANDIDATES_PER_FLIP]
    peaks = []
    for i, j in zip(rows[order], cols[order]):
        da = _parabola(corr[(i - 1) % len(corr), j], corr[i, j], corr[(i + 1) % len(corr), j])
        db = _parabola(corr[i, (j - 1) % n_theta], corr[i, j], corr[i, (j + 1) % n_theta])
        phi = -(j + db) * (np.pi / n_theta)
        peaks.append((phi, float(np.exp((shifts[i] + da) * step)), float(corr[i, j])))
    return peaks


def _parabola(left: float, mid: float, right: float) -> float:
    """Vertex offset of the parabola through three equally spaced values, in [-0.5, 0.5]."""
    denom = left - 2.0 * mid + right
    if not np.isfinite(denom) or denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def _contrast_sign(contrast: str) -> float:
    return {"inverted": -1.0, "same": 1.0}.get(contrast, 0.0)


def _warp_to_canvas(prep: _Prepared, taper: np.ndarray, phi: float, scale: float, flip: bool):
    """The tapered image and its footprint warped by ``s R(φ) P`` onto a canvas around it."""
    a = scale * rotation_matrix(phi) @ flip_matrix(flip)
    ainv = np.linalg.inv(a)
    half = (np.asarray(prep.image.shape, dtype=float) - 1.0) / 2.0
    corners = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]]) * half
    extent = np.abs(corners @ a.T).max(axis=0)
    canvas = tuple(int(2 * np.ceil(e) + 3) for e in extent)
    u0 = (np.asarray(canvas, dtype=float) - 1.0) / 2.0
    offset = prep.c_r - ainv @ u0
    warped = ndimage.affine_transform(prep.image * taper, ainv, offset, canvas, order=1)
    foot = ndimage.affine_transform(taper, ainv, offset, canvas, order=1)
    return warped, foot, u0


def _best_shift(prep: _Prepared, spectra, canvas, foot_sum, u0, contrast: str, cache: dict):
    """Best translation (corrected frame) of a warped image, by FFT, and its correlation.

    ``spectra`` are the rFFTs of the warped image, its square and its footprint. The
    correlation at each shift is normalised by the image energy over the shadow's disk
    (the shadow's is fixed); shifts where the image covers less than a quarter of the disk
    (or of itself) are not considered.
    """
    shape = _fft_shape(prep, canvas)
    if shape not in cache:
        weight = prep.corrected_mask.astype(float)
        cache[shape] = (
            np.conj(sfft.rfft2(prep.corrected, s=shape)),
            np.conj(sfft.rfft2(weight, s=shape)),
            float(weight.sum()),
            float(np.sum(prep.corrected**2)),
        )
    fs, fm, area, ss = cache[shape]
    spec_w, spec_w2, spec_f = spectra
    cross = sfft.irfft2(fs * spec_w, s=shape)
    energy = sfft.irfft2(fm * spec_w2, s=shape)
    overlap = sfft.irfft2(fm * spec_f, s=shape)
    valid = (overlap > 0.25 * min(area, foot_sum)) & (energy > 1e-9)
    ncc = np.where(valid, cross / np.sqrt(ss * np.maximum(energy, 1e-9)), 0.0)
    sign = _contrast_sign(contrast)
    target = np.abs(ncc) if sign == 0.0 else sign * ncc
    i, j = np.unravel_index(int(np.argmax(target)), target.shape)
    di = _parabola(target[i - 1, j], target[i, j], target[(i + 1) % shape[0], j])
    dj = _parabola(target[i, j - 1], target[i, j], target[i, (j + 1) % shape[1]])
    d = np.array([i + di, j + dj])
    d = np.where(np.array([i, j]) >= np.asarray(canvas), d - np.asarray(shape), d)
    return float(target[i, j]), u0 - prep.c_q - d


def _fft_shape(prep: _Prepared, canvas) -> tuple[int, int]:
    """FFT size for a correlation of the shadow with a canvas without wrap-around."""
    ns = prep.corrected.shape
    return tuple(sfft.next_fast_len(ns[k] + canvas[k] - 1, real=True) for k in range(2))


def _reversed_spectrum(spectrum: np.ndarray, canvas, shape) -> np.ndarray:
    """rFFT of ``x[::-1, ::-1]`` from that of a real ``x`` of shape ``canvas``:
    ``e^{−2πi k·(C − 1)/M} conj(X(k))``."""
    ramp0 = np.exp(-2j * np.pi * sfft.fftfreq(shape[0]) * (canvas[0] - 1))
    ramp1 = np.exp(-2j * np.pi * sfft.rfftfreq(shape[1]) * (canvas[1] - 1))
    return ramp0[:, None] * ramp1[None, :] * np.conj(spectrum)


@dataclass(frozen=True)
class RotationFit:
    """What :func:`register_images` measured.

    Attributes
    ----------
    rotation_deg : float
        φ in degrees, in [−180, 180).
    flip : bool
        Whether the x↔y swap P precedes the rotation.
    scale : float
        Shadow px (along the ellipse's minor axis) per image px.
    affine : ndarray (2, 3)
        ``[M | t]``: image px ``r`` lies at raw shadow px ``M r + t``, ``M = D s R(φ) P``.
    score : float
        Normalised cross-correlation, inside the shadow's disk, of the shadow and the warped
        image (both high-passed and smoothed alike), with the contrast sign applied: 0.95
        or more for a clean match, below 0.5 for images that do not match.
    rotation_std_deg, scale_std : float
        Standard errors of φ (degrees) and of s.
    contrast : {'inverted', 'same'}
        Whether features bright in the image are dark in the shadow (the usual case).
    overlap : float
        Fraction of the shadow's disk that the image covers.
    margin : float
        Coarse score of the match over that of the best clearly different candidate (the
        other flip, or a rotation more than 5° away): about 2 or more for a clear match,
        near 1 when the images do not match.

    Examples
    --------
    >>> fit = RotationFit(10.0, False, 1.0, np.eye(2, 3), 0.9, 0.01, 1e-4, "inverted", 1.0, 2.5)
    >>> fit.rotation_deg
    10.0
    """

    rotation_deg: float
    flip: bool
    scale: float
    affine: np.ndarray
    score: float
    rotation_std_deg: float
    scale_std: float
    contrast: str
    overlap: float
    margin: float


def _fm_hypotheses(prep: _Prepared, region: np.ndarray, disk: float, scale_range):
    """(height, flip, φ mod 180°, s) from the log-polar spectra of a tapered image region."""
    f_lo, f_hi = 3.0 / min(min(region.shape), disk), 0.45
    ls = _logpolar(prep.corrected, f_lo, f_hi)
    hypotheses = []
    for flip in (False, True):
        lh = _logpolar(region.T if flip else region, f_lo, f_hi)
        for phi, scale, height in _fourier_mellin(ls, lh, f_lo, f_hi, scale_range):
            hypotheses.append((height, flip, phi, scale))
    return hypotheses


def _check_hypotheses(prep: _Prepared, taper, hypotheses, contrast: str, cache: dict):
    """Candidates (score, flip, φ, s, t), best first: each hypothesis at φ and φ + 180°."""
    candidates = []
    for _, flip, phi, scale in hypotheses:
        warped, foot, u0 = _warp_to_canvas(prep, taper, phi, scale, flip)
        shape = _fft_shape(prep, warped.shape)
        spectra = [sfft.rfft2(a, s=shape) for a in (warped, warped**2, foot)]
        # φ + 180° turns the canvas about its centre u0: the arrays reversed
        turned = [_reversed_spectrum(x, warped.shape, shape) for x in spectra]
        area = float(foot.sum())
        for turn, spec in ((0.0, spectra), (np.pi, turned)):
            score, t = _best_shift(prep, spec, warped.shape, area, u0, contrast, cache)
            candidates.append((score, flip, phi + turn, scale, t))
    return sorted(candidates, key=lambda c: -c[0])


def _margin(candidates) -> float:
    """Best coarse correlation over the best of a clearly different candidate (> 1 is good).

    Different: the other flip, or a rotation more than 5° away (the 180° twin included).
    """
    score, flip, phi = candidates[0][:3]
    for other in candidates[1:]:
        apart = abs((np.rad2deg(other[2] - phi) + 180.0) % 360.0 - 180.0)
        if other[1] != flip or apart > 5.0:
            return float(score / other[0]) if other[0] > 0 else float("inf")
    return float("inf")


class _MaskFilter:
    """The linear filter ``K = L ∘ HP`` applied alike to the shadow and to its model.

    On the pixels inside the disk (vectors hold those pixels): ``HP x = x − G(x)/G(1)`` takes
    off the local mean over the disk only (width ``highpass``), ``L y = G(y)/G(1)`` smooths
    over the disk only (width ``smooth``). Filtering the data and the model by the same
    operator keeps the model exact next to the edge of the disk, where features are cut.
    """

    def __init__(self, mask: np.ndarray, highpass: float, smooth: float):
        rows, cols = np.nonzero(mask)  # zero outside the mask: its bounding box is enough
        self.mask = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        weight = self.mask.astype(float)
        self.highpass_sigma, self.smooth_sigma = highpass, smooth
        self.norm_h = self._blur(weight[self.mask], highpass)
        self.norm_l = self._blur(weight[self.mask], smooth) if smooth > 0 else None

    def _blur(self, values: np.ndarray, sigma: float) -> np.ndarray:
        image = np.zeros(self.mask.shape)
        image[self.mask] = values
        return ndimage.gaussian_filter(image, sigma, mode="constant", truncate=3.0)[self.mask]

    def __call__(self, values: np.ndarray) -> np.ndarray:
        out = values - self._blur(values, self.highpass_sigma) / self.norm_h
        if self.norm_l is not None:
            out = self._blur(out, self.smooth_sigma) / self.norm_l
        return out

    def transpose(self, values: np.ndarray) -> np.ndarray:
        """``Kᵀ = HPᵀ Lᵀ``, with ``Lᵀ y = G(y / G(1))`` and ``HPᵀ z = z − G(z / G(1))``."""
        if self.norm_l is not None:
            values = self._blur(values / self.norm_l, self.smooth_sigma)
        return values - self._blur(values / self.norm_h, self.highpass_sigma)

    def noise_gain(self) -> float:
        """Mean of ``diag(K Kᵀ)``: the variance of filtered unit white noise (two probes)."""
        probes = np.random.default_rng(0).standard_normal((2, int(self.mask.sum())))
        return float(np.mean([np.mean(self(z) ** 2) for z in probes]))


def _refine(prep: _Prepared, filt: _MaskFilter, data: np.ndarray, flip, phi, scale, t, contrast):
    """Least-squares refinement of (φ, log s, t) on the raw shadow pixels inside the disk.

    ``data`` is the filtered shadow at the disk's pixels; the model is a quadratic
    background plus ``b`` times the filtered warped image.
    """
    q_raw = np.argwhere(prep.mask).astype(float)
    dinv = np.linalg.inv(prep.distortion)
    qc = prep.c_d + (q_raw - prep.c_d) @ dinv.T
    radius = max(float(np.sqrt(len(q_raw) / np.pi)), 1.0)
    rel = (qc - prep.c_q) / radius
    basis = np.column_stack(
        [np.ones(len(rel)), rel[:, 0], rel[:, 1], rel[:, 0] ** 2, rel[:, 0] * rel[:, 1]]
        + [rel[:, 1] ** 2]
    )
    qb = np.linalg.qr(basis)[0]
    s_perp = data - qb @ (qb.T @ data)
    swap = flip_matrix(flip)

    def column(p):
        m = swap @ rotation_matrix(-p[0]) / np.exp(p[1])
        r = prep.c_r + (qc - prep.c_q - p[2:]) @ m.T
        h = ndimage.map_coordinates(prep.coef, r.T, order=3, prefilter=False, mode="mirror")
        foot = _taper(r, prep.image.shape, prep.taper_width)
        h = filt(h * foot)
        return h - qb @ (qb.T @ h), foot

    def residual(p):
        h, _ = column(p)
        hh = float(h @ h)
        b = float(h @ s_perp) / hh if hh > 0 else 0.0
        return s_perp - b * h

    p0 = np.array([phi, np.log(scale), t[0], t[1]])
    fit = optimize.least_squares(
        residual, p0, method="lm", x_scale=[1e-3, 1e-3, 0.1, 0.1], xtol=1e-5, ftol=1e-6
    )
    p = fit.x
    h, foot = column(p)
    norm = float(np.sqrt((h @ h) * (s_perp @ s_perp)))
    ncc = float(h @ s_perp) / norm if norm > 0 else 0.0
    sign = _contrast_sign(contrast)
    if sign == 0.0:
        sign = -1.0 if ncc < 0 else 1.0
    # Noise e = K n of white noise n: cov = A⁻¹ (KᵀJ)ᵀ(KᵀJ) A⁻¹ σ², σ² = var(e) / gain.
    dof = max(len(data) - len(p) - basis.shape[1] - 1, 1)
    variance = float(fit.fun @ fit.fun) / dof / filt.noise_gain()
    try:
        bread = np.linalg.inv(fit.jac.T @ fit.jac)
        spread = np.column_stack([filt.transpose(col) for col in fit.jac.T])
        cov = bread @ (spread.T @ spread) @ bread * variance
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:
        std = np.full(4, np.inf)
    return {
        "score": sign * ncc,
        "sign": sign,
        "p": p,
        "std": std,
        "overlap": float(np.mean(foot > 0.5)),
    }


def register_images(
    image: np.ndarray,
    shadow: np.ndarray,
    *,
    shadow_mask: np.ndarray | None = None,
    ellipse: Any = None,
    contrast: Literal["auto", "inverted", "same"] = "auto",
    scale_range: tuple[float, float] = (0.2, 5.0),
    highpass_sigma: float | None = None,
) -> RotationFit:
    """Rotation, flip, scale and translation between a STEM image and a shadow image.

    Parameters
    ----------
    image : ndarray (Nx, Ny)
        The STEM image (HAADF, bright field, ...), x along axis 0.
    shadow : ndarray (Qx, Qy)
        The defocused CBED pattern showing a shadow image of the same area, raw detector px.
    shadow_mask : ndarray of bool (Qx, Qy), optional
        Where the shadow shows the sample (default: its bright disk, see
        :func:`shadow_disk_mask`).
    ellipse : (a, b, angle_deg) or fitted ellipse calibrator, optional
        The detector's elliptical distortion, undone before registering.
    contrast : {'auto', 'inverted', 'same'}
        'inverted': features bright in the image are dark in the shadow (HAADF against a
        bright-field shadow); 'same' (a bright-field image); 'auto' picks the better.
    scale_range : (float, float)
        Shadow px per image px to search.
    highpass_sigma : float, optional
        Width (image px) of the Gaussian high-pass that removes smooth backgrounds (the
        shadow gets the same, scaled); default ``max(4, min(image.shape) / 16)``; about
        twice the size of the features is a good choice.

    Returns
    -------
    RotationFit

    Examples
    --------
    >>> from strainkit import simulate
    >>> sim = simulate.simulate_images(simulate.Microscope(rotation_deg=120.0, flip=False),
    ...                                image_shape=(96, 96), scale=1.1, n_features=25)
    >>> fit = register_images(sim.haadf, sim.shadow, ellipse=(1.025, 1.0, 35.0))
    >>> round(fit.rotation_deg, 1), fit.flip, round(fit.scale, 2), fit.contrast
    (120.0, False, 1.1, 'inverted')
    """
    image = _as_image(image, "image")
    shadow = _as_image(shadow, "shadow")
    ell = _ellipse_tuple(ellipse)
    distortion = np.eye(2) if ell is None else distortion_matrix(*ell)
    if shadow_mask is None:
        mask = shadow_disk_mask(shadow, _MASK_MARGIN)
        if mask.sum() < 64:
            raise ValueError(
                f"{_OWNER}: found no bright disk in the shadow image; pass shadow_mask="
            )
    else:
        mask = _as_mask(shadow_mask, shadow.shape)
    sigma = max(4.0, min(image.shape) / 16.0) if highpass_sigma is None else highpass_sigma
    prep = _prepare(image, shadow, mask, distortion, sigma)

    # 1. Fourier–Mellin hypotheses for each flip, checked by FFT correlation.
    disk = 2.0 * np.sqrt(prep.corrected_mask.sum() / np.pi)
    taper = _taper_image(image.shape, prep.taper_width)
    hypotheses = _fm_hypotheses(prep, prep.image * taper, disk, scale_range)
    if not hypotheses:
        raise ValueError(
            f"{_OWNER}: no match with a scale in scale_range={tuple(scale_range)}; widen it"
        )
    candidates = _check_hypotheses(prep, taper, hypotheses, contrast, {})
    margin = _margin(candidates)

    # 2. Refine the best few; keep the best refined match. The shadow, divided by its
    # illumination, and the warped image go through the same high-pass (the image's,
    # scaled to the shadow) and smoothing (the image's) inside the disk.
    scale0 = candidates[0][3]
    illumination = _masked_ratio(shadow, mask.astype(float), _ILLUMINATION * sigma * scale0)
    filt = _MaskFilter(mask, sigma * scale0, _SMOOTH * scale0)
    data = filt(illumination[mask])
    data /= np.std(data)
    best, top = None, candidates[0][0]
    for coarse, flip, phi, scale, t in candidates[:_REFINE]:
        if best is not None and coarse < _RECHECK * top:
            break
        result = _refine(prep, filt, data, flip, phi, scale, t, contrast)
        result["flip"] = flip
        if best is None or result["score"] > best["score"]:
            best = result
    phi, log_s, t0, t1 = best["p"]
    s = float(np.exp(log_s))
    m = prep.distortion @ (s * rotation_matrix(phi) @ flip_matrix(best["flip"]))
    d = prep.distortion
    offset = prep.c_d + d @ (prep.c_q + np.array([t0, t1]) - prep.c_d) - m @ prep.c_r
    return RotationFit(
        rotation_deg=_wrap_deg(np.rad2deg(phi)),
        flip=bool(best["flip"]),
        scale=s,
        affine=np.column_stack([m, offset]),
        score=float(best["score"]),
        rotation_std_deg=float(np.rad2deg(best["std"][0])),
        scale_std=float(s * best["std"][1]),
        contrast="inverted" if best["sign"] < 0 else "same",
        overlap=best["overlap"],
        margin=margin,
    )


# ---------------------------------------------------------------------------- estimator
