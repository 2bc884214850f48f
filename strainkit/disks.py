"""Bragg disk detection: correlate every pattern with the probe kernel, find the maxima,
refine them to subpixel precision.

The work is a pure function of a block of frames (:func:`detect_block`): batched
``scipy.fft`` correlation, then one numba pass per frame that finds local maxima above
the thresholds, keeps the strongest ones at least ``min_spacing`` apart and refines each.

Subpixel refinement ``'dft'`` locates the maximum of the band-limited (DFT) interpolation
of the correlation exactly, without upsampling the whole spectrum: the DFT-interpolated
correlation at ``p + δ`` equals the pattern correlated with the kernel shifted by ``δ``
through its Fourier series. Those shifted kernels and their first and second derivatives
with respect to ``δ`` are tabulated once on a 1/8 px grid over a window that holds the
kernel; Newton steps from the nearest grid point then find the maximum (a few thousand
multiply-adds per peak, with no rounding to a grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import joblib
import numba
import numpy as np
import pydantic
import scipy.fft as sfft
from tqdm.auto import tqdm

from strainkit._base import Estimator, ParamsModel
from strainkit.containers import BraggPeaks, DataCube
from strainkit.probe import ProbeTemplate, kernel_offset

__all__ = ["BraggDiskFinder", "BraggVectorMap", "bragg_vector_map", "detect_block"]

_GRID = 8  # tabulated subpixel shifts per px
_CHUNK = 32  # frames per FFT batch: their spectra stay in cache


# ---------------------------------------------------------------------------- kernel bank


@dataclass(frozen=True)
class KernelBank:
    """What a block of frames is correlated with: the kernel spectrum and shifted kernels.

    ``bank[g, a, c, b]`` holds, for grid shift ``g`` (``δ = (gx, gy)/8 − ½``), the
    component ``c`` in (value, ∂x, ∂y, ∂xx, ∂xy, ∂yy) of the DFT-interpolated kernel
    ``K̃(m − δ)`` at window offset ``m = (a − h, b − h)``; columns ``b > 2h`` are zero
    padding so that rows are a whole number of SIMD lanes.
    """

    spectrum: np.ndarray  # conj(rfft2(kernel)), complex64 (Qx, Qy//2+1)
    bank: np.ndarray  # (9*9, 2h+1, 6, P) float32, P = 2h+1 rounded up to a SIMD width
    half: int  # window half width h
    offset: np.ndarray  # kernel centre within ½ px of pixel (0, 0)
    kappa0: float  # peak sharpness of a perfect match
    shape: tuple[int, int]


def _kernel_half_width(kernel: np.ndarray) -> int:
    big = np.argwhere(np.abs(kernel) > 1e-3 * np.abs(kernel).max())
    n = np.array(kernel.shape)
    wrapped = np.where(big > n / 2, n - big, big)
    return int(wrapped.max()) + 2


def make_bank(kernel: np.ndarray, offset) -> KernelBank:
    """Tabulate the DFT-shifted kernel and its derivatives for subpixel refinement.

    Examples
    --------
    >>> from strainkit.probe import ProbeTemplate
    >>> probe = ProbeTemplate.synthetic(6.0, 0.5, (64, 64))
    >>> bank = make_bank(probe.kernel_, (0.0, 0.0))
    >>> bank.bank.shape, bank.half
    ((81, 23, 6, 24), 11)
    """
    nx, ny = kernel.shape
    h = _kernel_half_width(kernel)
    spec = np.fft.fft2(kernel)
    kx = 2j * np.pi * np.fft.fftfreq(nx)[:, None]
    ky = 2j * np.pi * np.fft.fftfreq(ny)[None, :]
    # d/dδ of K̃(m − δ) multiplies the spectrum by −ik per derivative
    factors = [1.0, -kx, -ky, kx * kx, kx * ky, ky * ky]
    steps = np.arange(_GRID + 1) / _GRID - 0.5
    idx_x = np.arange(-h, h + 1) % nx
    idx_y = np.arange(-h, h + 1) % ny
    width = -(-(2 * h + 1) // 8) * 8
    bank = np.zeros(((_GRID + 1) ** 2, 2 * h + 1, 6, width), dtype=np.float32)
    for gx, dx in enumerate(steps):
        for gy, dy in enumerate(steps):
            ramp = spec * np.exp(-kx * dx - ky * dy)
            for c, f in enumerate(factors):
                full = np.fft.ifft2(ramp * f).real
                bank[gx * (_GRID + 1) + gy, :, c, : 2 * h + 1] = full[np.ix_(idx_x, idx_y)]
    conj = np.conj(sfft.rfft2(kernel)).astype(np.complex64)
    return KernelBank(conj, bank, h, np.asarray(offset, float), 1.0, (nx, ny))


# ---------------------------------------------------------------------------- numba core


# The loops below are written for LLVM's vectoriser: branch-free ternaries rather than
# ``max``, and loops over whole (sliced) rows starting at 0, which it vectorises while
# it does not vectorise ``range(lo, hi)`` with a non-zero start (measured: 8x slower).


@numba.njit(cache=True, nogil=True, fastmath=True)
def _row_max3(corr, hmax, colmax):
    """hmax[i, j] = max of corr[i, j-1:j+2]; returns the frame max (via colmax)."""
    nx, ny = corr.shape
    colmax[:] = corr[0]
    for i in range(nx):
        row, out = corr[i], hmax[i]
        left, centre, right, inner = row[: ny - 2], row[1 : ny - 1], row[2:], out[1 : ny - 1]
        for j in range(ny - 2):
            m = left[j] if left[j] > centre[j] else centre[j]
            inner[j] = m if m > right[j] else right[j]
        out[0] = row[0] if row[0] > row[1] else row[1]
        out[ny - 1] = row[ny - 2] if row[ny - 2] > row[ny - 1] else row[ny - 1]
        for j in range(ny):
            colmax[j] = colmax[j] if colmax[j] > row[j] else row[j]
    top = colmax[0]
    for j in range(ny):
        top = top if top > colmax[j] else colmax[j]
    return top


@numba.njit(cache=True, nogil=True, fastmath=True)
def _local_maxima(corr, hmax, edge, threshold, cand_v, cand_i, cand_j):
    """Pixels above ``threshold`` that equal the max of their 3x3 neighbourhood.

    Candidates lie at least ``edge`` px inside the detector; equal neighbours on a flat
    top all qualify (the minimum spacing then keeps one). Each row is first counted
    with a vectorised loop; only the few rows holding a maximum are scanned.
    """
    nx, ny = corr.shape
    e = edge if edge > 1 else 1
    thr = np.float32(threshold)
    n = 0
    for i in range(e, nx - e):
        row, mid = corr[i, e : ny - e], hmax[i, e : ny - e]
        up, down = hmax[i - 1, e : ny - e], hmax[i + 1, e : ny - e]
        count = 0
        for j in range(row.shape[0]):
            m = up[j] if up[j] > mid[j] else mid[j]
            m = m if m > down[j] else down[j]
            count += (row[j] >= m) & (row[j] > thr)
        if count == 0:
            continue
        for j in range(row.shape[0]):
            v = row[j]
            if v > thr and v >= up[j] and v >= mid[j] and v >= down[j] and n < cand_v.shape[0]:
                cand_v[n] = v
                cand_i[n] = i
                cand_j[n] = j + e
                n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _select(cand_v, cand_i, cand_j, n, rel, min_dist2, max_peaks, keep):
    """Strongest candidates above ``rel`` × the strongest, pairwise ≥ min spacing."""
    if n == 0:
        return 0
    order = np.argsort(-cand_v[:n])
    floor = rel * cand_v[order[0]]
    k = 0
    for idx in order:
        if cand_v[idx] < floor or k >= max_peaks:
            break
        ok = True
        for q in range(k):
            di = cand_i[idx] - cand_i[keep[q]]
            dj = cand_j[idx] - cand_j[keep[q]]
            if di * di + dj * dj < min_dist2:
                ok = False
                break
        if ok:
            keep[k] = idx
            k += 1
    return k


@numba.njit(cache=True, nogil=True, inline="always")
def _parabola(m, c, p):
    denom = m - 2.0 * c + p
    if denom >= 0.0:
        return 0.0
    d = 0.5 * (m - p) / denom
    return min(max(d, -0.5), 0.5)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _bank_sums(frame, bank, g, i, j, h, acc, out):
    """The six correlations of the frame window at (i, j) with bank entry g."""
    nx, ny = frame.shape
    width = bank.shape[3]
    acc[:] = 0.0
    if i - h >= 0 and j - h >= 0 and i + h < nx and j - h + width <= ny:
        for a in range(2 * h + 1):
            row = frame[i - h + a, j - h : j - h + width]
            for c in range(6):
                k = bank[g, a, c]
                for b in range(width):  # element-wise, so it vectorises
                    acc[c, b] += row[b] * k[b]
    else:  # near the edge: the correlation is periodic, wrap around the detector
        for a in range(2 * h + 1):
            x = (i - h + a) % nx
            for b in range(2 * h + 1):
                v = frame[x, (j - h + b) % ny]
                for c in range(6):
                    acc[c, b] += v * bank[g, a, c, b]
    for c in range(6):
        out[c] = acc[c].sum()


@numba.njit(cache=True, nogil=True)
def _refine_dft(frame, bank, h, i, j, dx, dy, acc, sums, result):
    """Newton steps on the DFT-interpolated correlation from (i + dx, j + dy).

    Writes (dx, dy, value, sharpness) into ``result``; returns False if no maximum is
    found within ¾ px (the parabolic estimate is kept then).
    """
    half = 0.5
    for _ in range(4):
        gx = min(max(round((dx + half) * _GRID), 0), _GRID)
        gy = min(max(round((dy + half) * _GRID), 0), _GRID)
        _bank_sums(frame, bank, gx * (_GRID + 1) + gy, i, j, h, acc, sums)
        c, cx, cy, cxx, cxy, cyy = sums[0], sums[1], sums[2], sums[3], sums[4], sums[5]
        det = cxx * cyy - cxy * cxy
        if not (cxx < 0.0 and det > 0.0):
            return False
        ex = -(cyy * cx - cxy * cy) / det
        ey = -(cxx * cy - cxy * cx) / det
        ox, oy = gx / _GRID - half, gy / _GRID - half
        dx, dy = ox + ex, oy + ey
        if abs(dx) > 0.75 or abs(dy) > 0.75:
            return False
        if abs(ex) <= 0.5 / _GRID + 1e-6 and abs(ey) <= 0.5 / _GRID + 1e-6:
            result[0] = dx
            result[1] = dy
            result[2] = (
                c + cx * ex + cy * ey + 0.5 * (cxx * ex * ex + 2 * cxy * ex * ey + cyy * ey * ey)
            )
            result[3] = -(cxx + cyy) / result[2] if result[2] > 0 else 0.0
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _detect_frames(
    corr, frames, bank, h, edge, abs_thr, rel, min_dist2, max_peaks, mode, out, counts
):
    """Find and refine the peaks of each correlation frame; mode 0 none, 1 parab., 2 dft."""
    ncand = max(4 * max_peaks, 256)
    cand_v = np.empty(ncand, np.float64)
    cand_i = np.empty(ncand, np.int64)
    cand_j = np.empty(ncand, np.int64)
    keep = np.empty(max_peaks, np.int64)
    hmax = np.empty(corr.shape[1:], corr.dtype)
    colmax = np.empty(corr.shape[2], corr.dtype)
    sums = np.empty(6, np.float64)
    acc = np.empty((6, bank.shape[3]), np.float32)
    result = np.empty(4, np.float64)
    for f in range(corr.shape[0]):
        c = corr[f]
        # nothing below rel x the strongest can be kept: skip it while scanning
        threshold = max(abs_thr, rel * _row_max3(c, hmax, colmax))
        n = _local_maxima(c, hmax, edge, threshold, cand_v, cand_i, cand_j)
        k = _select(cand_v, cand_i, cand_j, n, rel, min_dist2, max_peaks, keep)
        counts[f] = k
        for q in range(k):
            i, j = cand_i[keep[q]], cand_j[keep[q]]
            v = c[i, j]
            dx, dy, value, sharp = 0.0, 0.0, v, 0.0
            if mode >= 1:
                dx = _parabola(c[i - 1, j], v, c[i + 1, j])
                dy = _parabola(c[i, j - 1], v, c[i, j + 1])
                sharp = -(c[i - 1, j] + c[i + 1, j] + c[i, j - 1] + c[i, j + 1] - 4 * v) / v
            if mode == 2 and _refine_dft(frames[f], bank, h, i, j, dx, dy, acc, sums, result):
                dx, dy, value, sharp = result[0], result[1], result[2], result[3]
            out[f, q, 0] = i + dx
            out[f, q, 1] = j + dy
            out[f, q, 2] = value
            out[f, q, 3] = sharp


# ---------------------------------------------------------------------------- block function


class Settings(NamedTuple):
    """Detection settings in detector pixels, resolved from the finder's parameters."""

    edge: int
    min_absolute: float
    min_relative: float
    min_spacing: float
    max_peaks: int
    subpixel: int  # 0 none, 1 parabolic, 2 dft


def detect_block(frames: np.ndarray, bank: KernelBank, settings: Settings) -> tuple:
    """Detect the disks of a block of frames; a pure function of its inputs.

    Parameters
    ----------
    frames : ndarray (n, Qx, Qy)
    bank : KernelBank
        From :func:`make_bank`.
    settings : Settings

    Returns
    -------
    peaks : ndarray (n, max_peaks, 4)
        qx, qy, correlation intensity, quality; only the first ``counts[f]`` rows of
        frame f are set.
    counts : ndarray (n,) of int

    Examples
    --------
    >>> from strainkit.probe import ProbeTemplate, disk_model
    >>> probe = ProbeTemplate.synthetic(4.0, 0.5, (48, 48), kernel="flat")
    >>> frame = disk_model((48, 48), (20.3, 25.6), 4.0, 0.5)[None].astype(np.float32)
    >>> bank = make_bank(probe.kernel_, (0.0, 0.0))
    >>> peaks, counts = detect_block(frame, bank, Settings(4, 0.0, 0.01, 6.0, 10, 2))
    >>> counts, np.round(peaks[0, 0, :2], 3)
    (array([1]), array([20.3, 25.6]))
    """
    n = len(frames)
    out = np.empty((n, settings.max_peaks, 4), dtype=np.float64)
    counts = np.empty(n, dtype=np.int64)
    work = np.empty((min(n, _CHUNK), *bank.shape), dtype=np.float32)
    for s in range(0, n, _CHUNK):
        chunk = frames[s : s + _CHUNK]
        w = work[: len(chunk)]
        np.copyto(w, chunk, casting="unsafe")
        spec = sfft.rfft2(w, overwrite_x=False)
        spec *= bank.spectrum
        corr = sfft.irfft2(spec, s=bank.shape, overwrite_x=True)
        _detect_frames(
            corr,
            w,
            bank.bank,
            bank.half,
            settings.edge,
            settings.min_absolute,
            settings.min_relative,
            settings.min_spacing**2,
            settings.max_peaks,
            settings.subpixel,
            out[s : s + len(chunk)],
            counts[s : s + len(chunk)],
        )
    out[..., 0] += bank.offset[0]
    out[..., 1] += bank.offset[1]
    return out, counts


# ---------------------------------------------------------------------------- estimator


_SUBPIXEL = {"none": 0, "parabolic": 1, "dft": 2}


class BraggDiskFinder(Estimator):
    """Find Bragg disks in every pattern of a scan by correlation with the probe.

    Parameters
    ----------
    probe : ProbeTemplate
        A fitted probe template; its kernel and disk radius set the defaults below.
    kernel : {'probe', 'flat', 'zero_sum', 'edge'}
        Correlation kernel; ``'probe'`` uses the probe's own ``kernel_``.
    spacing : float or None
        Smallest disk spacing (px) for the zero-sum kernel; default the probe's.
    subpixel : {'dft', 'parabolic', 'none'}
        Refinement of each correlation maximum.
    min_spacing : float or None
        Minimum distance between peaks (px); default the disk radius.
    min_relative_intensity : float
        Keep peaks whose correlation is at least this fraction of the strongest one.
    min_absolute_intensity : float
        Keep peaks whose correlation is at least this value.
    edge_boundary : float or None
        Ignore maxima closer than this to the detector edge (px); default the radius.
    max_peaks : int
        At most this many peaks per pattern, the strongest.
    block_size : int
        Frames read at a time; memory stays proportional to it.
    n_jobs : int
        Threads working on blocks (results do not depend on it).
    progress : bool
        Show a progress bar.

    Examples
    --------
    >>> from strainkit import simulate
    >>> sim = simulate.simulate_crystal(scan_shape=(2, 2), seed=1)
    >>> probe = ProbeTemplate.synthetic(6.0, 0.5, (128, 128))
    >>> peaks = BraggDiskFinder(probe=probe, progress=False).transform(DataCube(sim.data))
    >>> peaks.n_peaks > 160  # of 4 x 49 disks, a few lie within a radius of the edge
    True
    """

    class Params(ParamsModel):
        probe: ProbeTemplate | None = None
        kernel: Literal["probe", "flat", "zero_sum", "edge"] = "probe"
        spacing: pydantic.PositiveFloat | None = None
        subpixel: Literal["dft", "parabolic", "none"] = "dft"
        min_spacing: pydantic.PositiveFloat | None = None
        min_relative_intensity: float = pydantic.Field(0.005, ge=0, le=1)
        min_absolute_intensity: float = pydantic.Field(0.0, ge=0)
        edge_boundary: pydantic.NonNegativeFloat | None = None
        max_peaks: pydantic.PositiveInt = 100
        block_size: pydantic.PositiveInt = 512
        n_jobs: int = 1
        progress: bool = True

    _stateless = True

    def fit(self, X=None, y=None) -> BraggDiskFinder:
        """Check the parameters (the finder learns nothing from data)."""
        self._resolve()
        return self

    def _resolve(self) -> tuple[KernelBank, Settings, int]:
        p = self._validated()
        if p.probe is None:
            raise ValueError("BraggDiskFinder: probe=None; give a fitted ProbeTemplate")
        p.probe._check_fitted()
        probe = p.probe
        if p.kernel == "probe" and p.spacing is None:
            kernel = probe.kernel_
        else:
            kind = probe.kernel if p.kernel == "probe" else p.kernel
            kernel = probe.build_kernel(kind, p.spacing)
        radius = probe.radius_
        settings = Settings(
            edge=math.ceil(p.edge_boundary if p.edge_boundary is not None else radius),
            min_absolute=p.min_absolute_intensity,
            min_relative=p.min_relative_intensity,
            min_spacing=p.min_spacing if p.min_spacing is not None else radius,
            max_peaks=p.max_peaks,
            subpixel=_SUBPIXEL[p.subpixel],
        )
        n_jobs = joblib.effective_n_jobs(p.n_jobs)
        return make_bank(kernel, kernel_offset(probe.center_)), settings, n_jobs

    def transform(self, X) -> BraggPeaks:
        """Detect the disks of every pattern of ``X`` (a ``DataCube`` or 4D array).

        Returns
        -------
        BraggPeaks
            Raw detector positions (px), correlation intensity and quality (≈1 for a
            disk shaped like the probe) of every peak.
        """
        cube = X if isinstance(X, DataCube) else DataCube(X)
        bank, settings, n_jobs = self._resolve()
        if cube.detector_shape != bank.shape:
            raise ValueError(
                f"the probe was fitted on {bank.shape} patterns but the data has "
                f"{cube.detector_shape}; bin or crop the data (DataCube.bin/crop) or fit the "
                "probe on vacuum data of the same detector size"
            )
        p = self._validated()
        blocks = _block_ranges(cube.n_frames, p.block_size)

        def work(start, stop):
            return start, detect_block(cube.frames(start, stop), bank, settings)

        results = joblib.Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")(
            joblib.delayed(work)(a, b) for a, b in blocks
        )
        table = np.empty((0, 4))
        counts = np.zeros(cube.n_frames, dtype=np.int64)
        pieces = []
        for start, (out, cnt) in tqdm(
            results, total=len(blocks), disable=not p.progress, desc="disks", unit="block"
        ):
            counts[start : start + len(cnt)] = cnt
            mask = np.arange(out.shape[1])[None, :] < cnt[:, None]
            pieces.append(out[mask])
        if pieces:
            table = np.concatenate(pieces)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return BraggPeaks(
            table[:, 0],
            table[:, 1],
            table[:, 2],
            table[:, 3],
            offsets,
            cube.scan_shape,
            detector_shape=cube.detector_shape,
        )


def _block_ranges(n: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, n)) for s in range(0, n, block)]


# ---------------------------------------------------------------------------- BVM


class BraggVectorMap(NamedTuple):
    """A 2D histogram of peak positions: ``image[i, j]`` at ``(qx[i], qy[j])``."""

    image: np.ndarray
    qx: np.ndarray
    qy: np.ndarray


def bragg_vector_map(
    peaks: BraggPeaks,
    upsample: int = 2,
    weights: Literal["intensity", "count"] = "intensity",
    extent: float | None = None,
) -> BraggVectorMap:
    """Histogram of all peak positions with bilinear splatting, ``upsample`` bins per unit.

    For peaks in px, the map spans the detector (or ±``extent`` around the origin once
    the origin is calibrated); for Å⁻¹, ±``extent`` (default: the largest |q|).

    Examples
    --------
    >>> p = BraggPeaks.from_positions([np.array([[10.0, 20.0, 1.0, 1.0]])], scan_shape=(1, 1),
    ...                               detector_shape=(32, 32))
    >>> bvm = bragg_vector_map(p, upsample=2)
    >>> bvm.image.shape, float(bvm.image.sum()), float(bvm.qx[bvm.image.argmax() // 64])
    ((64, 64), 1.0, 10.0)
    """
    if int(upsample) != upsample or upsample < 1:
        raise ValueError(f"upsample={upsample!r} must be a positive integer")
    w = peaks.intensity if weights == "intensity" else np.ones(peaks.n_peaks)
    if peaks.centered or peaks.units != "px" or peaks.detector_shape is None:
        if extent is None:
            extent = float(np.abs(np.concatenate([peaks.qx, peaks.qy, [1e-9]])).max()) * 1.05
        n = 2 * math.ceil(extent * upsample) + 1
        axis = (np.arange(n) - n // 2) / upsample
        qx_axis = qy_axis = axis
    else:
        qx_axis = np.arange(peaks.detector_shape[0] * upsample) / upsample
        qy_axis = np.arange(peaks.detector_shape[1] * upsample) / upsample
    image = np.zeros((len(qx_axis), len(qy_axis)))
    fx = (peaks.qx - qx_axis[0]) * upsample
    fy = (peaks.qy - qy_axis[0]) * upsample
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    tx, ty = fx - ix, fy - iy
    for ox, oy, wt in (
        (0, 0, (1 - tx) * (1 - ty)),
        (1, 0, tx * (1 - ty)),
        (0, 1, (1 - tx) * ty),
        (1, 1, tx * ty),
    ):
        xi, yi = ix + ox, iy + oy
        ok = (xi >= 0) & (xi < image.shape[0]) & (yi >= 0) & (yi < image.shape[1])
        np.add.at(image, (xi[ok], yi[ok]), (w * wt)[ok])
    return BraggVectorMap(image, qx_axis, qy_axis)
