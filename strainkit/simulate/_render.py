"""The numba disk renderer, the diffuse background and the expected (noise-free) pattern."""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy import ndimage, special

from strainkit.simulate._validate import _finite, _integer, _pair, _shape2

# The disk profile is cut at ±6 edge widths, where 0.5·erfc(6/√2) < 1e-9 of the amplitude.
_CUT = 6.0
# The profile is tabulated in units of the edge width and interpolated linearly; with
# this step the interpolation error is below 3e-8 of the amplitude, and a table lookup
# is several times cheaper than erfc in the innermost loop.
_INV_STEP = 1024.0
_TABLE = 0.5 * special.erfc(
    np.arange(-_CUT, _CUT + 3.0 / _INV_STEP, 1.0 / _INV_STEP) / math.sqrt(2)
)


@numba.njit(cache=True)
def _profile(t, table):
    """0.5·erfc(t/√2) from the table, t in edge widths; 1 and 0 beyond the cut."""
    if t >= _CUT:
        return 0.0
    if t <= -_CUT:
        return 1.0
    x = (t + _CUT) * _INV_STEP
    i = int(x)
    return table[i] + (x - i) * (table[i + 1] - table[i])


@numba.njit(cache=True)
def _window(c, reach, n):
    """First and last pixel index within ``reach`` of ``c``, clipped to [0, n - 1]."""
    return max(math.floor(c - reach), 0), min(math.ceil(c + reach), n - 1)


@numba.njit(cache=True)
def _add_disk(frame, cx, cy, amp, radius, edge, oversample, table):
    nx, ny = frame.shape
    reach = radius + _CUT * edge + 1.0
    step = 1.0 / oversample
    start = -0.5 + 0.5 * step
    # Pixels whose every sub-sample lies beyond the cut need no sub-sampling.
    spread = (0.5 - 0.5 * step) * math.sqrt(2.0) + 1e-9
    outer = radius + _CUT * edge + spread
    inner = radius - _CUT * edge - spread
    inv_edge = 1.0 / edge
    norm = amp / (oversample * oversample)
    i0, i1 = _window(cx, reach, nx)
    j0, j1 = _window(cy, reach, ny)
    for i in range(i0, i1 + 1):
        dx = i - cx
        for j in range(j0, j1 + 1):
            dy = j - cy
            rho = math.sqrt(dx * dx + dy * dy)
            if rho >= outer:
                continue
            if rho <= inner:
                frame[i, j] += amp
                continue
            total = 0.0
            for u in range(oversample):
                x = dx + start + u * step
                for v in range(oversample):
                    y = dy + start + v * step
                    total += _profile((math.sqrt(x * x + y * y) - radius) * inv_edge, table)
            frame[i, j] += total * norm


@numba.njit(cache=True)
def _lorentzian_frame(frame, ox, oy, inv_w2):
    for i in range(frame.shape[0]):
        dx2 = (i - ox) * (i - ox)
        for j in range(frame.shape[1]):
            frame[i, j] = 1.0 / (1.0 + (dx2 + (j - oy) * (j - oy)) * inv_w2)


# Blocks of frames run in parallel threads; single frames run serially, because waking
# the thread pool costs more than rendering one frame. (Separate functions, not one
# function jitted twice: numba's cache index does not tell parallel from serial.)
@numba.njit(cache=True, parallel=True)
def _render_csr(out, centers, amps, offsets, radius, edge, oversample, table):
    """Add the disks offsets[f]:offsets[f+1] to frame f, frames in parallel."""
    for f in numba.prange(out.shape[0]):
        for k in range(offsets[f], offsets[f + 1]):
            _add_disk(
                out[f], centers[k, 0], centers[k, 1], amps[k], radius, edge, oversample, table
            )


@numba.njit(cache=True)
def _render_serial(frame, centers, amps, radius, edge, oversample, table):
    for k in range(len(amps)):
        _add_disk(frame, centers[k, 0], centers[k, 1], amps[k], radius, edge, oversample, table)


@numba.njit(cache=True, parallel=True)
def _lorentzian_block(out, origins, width):
    for f in numba.prange(out.shape[0]):
        _lorentzian_frame(out[f], origins[f, 0], origins[f, 1], 1.0 / (width * width))


@numba.njit(cache=True, parallel=True)
def _disk_jacobian(out, centers, radius, edge, oversample, table):
    """out[k] = (profile, d/dcx, d/dcy) of unit disk k; the derivative of 0.5·erfc is −φ."""
    nx, ny = out.shape[2], out.shape[3]
    reach = radius + _CUT * edge + 1.0
    step = 1.0 / oversample
    start = -0.5 + 0.5 * step
    norm = 1.0 / (oversample * oversample)
    gauss = norm / (math.sqrt(2.0 * math.pi) * edge)
    for k in numba.prange(centers.shape[0]):
        cx, cy = centers[k, 0], centers[k, 1]
        i0, i1 = _window(cx, reach, nx)
        j0, j1 = _window(cy, reach, ny)
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                value, gx, gy = 0.0, 0.0, 0.0
                for u in range(oversample):
                    x = i - cx + start + u * step
                    for v in range(oversample):
                        y = j - cy + start + v * step
                        r = math.sqrt(x * x + y * y)
                        t = (r - radius) / edge
                        value += _profile(t, table)
                        if abs(t) < _CUT and r > 0:
                            g = math.exp(-0.5 * t * t) / r
                            gx += g * x
                            gy += g * y
                out[k, 0, i, j] = value * norm
                out[k, 1, i, j] = gx * gauss
                out[k, 2, i, j] = gy * gauss


def _disk_arrays(centers, amplitudes) -> tuple[np.ndarray, np.ndarray]:
    centers = np.ascontiguousarray(centers, dtype=float)
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers has shape {centers.shape}; give (n_disks, 2) px coordinates")
    amplitudes = np.ascontiguousarray(np.broadcast_to(amplitudes, len(centers)), dtype=float)
    if not (np.isfinite(centers).all() and np.isfinite(amplitudes).all()):
        raise ValueError("centers and amplitudes must be finite")
    return centers, amplitudes


def _disk_knobs(radius, edge_width, oversample) -> tuple[float, float, int]:
    radius = _finite("radius", radius, low=0, low_open=True)
    edge_width = _finite("edge_width", edge_width, low=0, low_open=True)
    return radius, edge_width, _integer("oversample", oversample, 1)


def render_disks(
    shape,
    centers,
    amplitudes,
    radius: float,
    edge_width: float,
    oversample: int = 2,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of soft-edged disks on a detector of ``shape``; amplitude = flat-top value.

    Each disk is ``a · 0.5 erfc((ρ − R)/(√2 w))`` averaged over ``oversample``² sub-pixel
    points per pixel, computed only within ``R + 6w + 1`` px of its centre and clipped at
    the detector edge.

    Parameters
    ----------
    shape : (int, int)
        Detector shape.
    centers : array_like, shape (n, 2)
        Disk centres in px (pixel (i, j) is centred at (i, j)).
    amplitudes : array_like, shape (n,) or scalar
        Flat-top values.
    radius, edge_width : float
        Disk radius and edge width in px.
    oversample : int
        Sub-pixel grid per axis.
    out : ndarray, optional
        C-contiguous float64 frame of ``shape``; the disks are added to it.

    Returns
    -------
    ndarray
        The frame (``out`` when given).

    Examples
    --------
    >>> frame = render_disks((32, 32), [[15.5, 15.5]], [2.0], radius=6.0, edge_width=0.5)
    >>> float(frame.max()), round(float(frame.sum()), 3)
    (2.0, 227.765)
    """
    shape = _shape2("shape", shape)
    centers, amplitudes = _disk_arrays(centers, amplitudes)
    radius, edge_width, oversample = _disk_knobs(radius, edge_width, oversample)
    if out is None:
        out = np.zeros(shape)
    elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {shape}")
    _render_serial(out, centers, amplitudes, radius, edge_width, oversample, _TABLE)
    return out


def render_background(shape, origin, width: float = 20.0) -> np.ndarray:
    """Diffuse background 1 / (1 + (q/q0)²) around ``origin``, normalised to sum 1.

    Evaluated at pixel centres (the profile is smooth on the pixel scale).

    Examples
    --------
    >>> bg = render_background((64, 64), (31.5, 31.5), width=10.0)
    >>> round(float(bg.sum()), 12), bool(bg[31, 31] == bg.max())
    (1.0, True)
    """
    shape = _shape2("shape", shape)
    origin = np.array([_pair("origin", origin)])
    width = _finite("width", width, low=0, low_open=True)
    out = np.empty(shape)
    _lorentzian_frame(out, origin[0, 0], origin[0, 1], 1.0 / width**2)
    return out / out.sum()


def _expected_frames(disks, origins, *, fraction, width, psf_sigma, dose, disk_area):
    """Rendered disks (relative units) -> expected frames; also counts per unit amplitude.

    The disks and the background are blurred separately (blur is linear) so that, after
    normalisation, the background is exactly ``fraction`` of each frame and the frame
    sums to ``dose``. Without a dose the disks keep their relative units. ``disks`` is a
    scratch buffer: it is scaled in place and returned.
    """
    blur = (0.0, psf_sigma, psf_sigma)
    if psf_sigma > 0:
        disks = ndimage.gaussian_filter(disks, blur, mode="constant")
    disk_sum = disks.sum(axis=(1, 2))
    if dose is None:
        scale = np.ones_like(disk_sum)
    else:
        scale = np.divide(
            dose * (1.0 - fraction), disk_sum, np.zeros_like(disk_sum), where=disk_sum > 0
        )
    frames = disks
    frames *= scale[:, None, None]
    if fraction > 0:
        background = np.empty_like(disks)
        if len(disks) > 1:
            _lorentzian_block(background, np.ascontiguousarray(origins, dtype=float), width)
        else:
            _lorentzian_frame(background[0], origins[0][0], origins[0][1], 1.0 / width**2)
        if psf_sigma > 0:
            background = ndimage.gaussian_filter(background, blur, mode="constant")
        wanted = (
            fraction / (1 - fraction) * disk_sum
            if dose is None
            else np.full_like(disk_sum, dose * fraction)
        )
        background *= (wanted / background.sum(axis=(1, 2)))[:, None, None]
        frames += background
    return frames, scale * disk_area


def render_pattern(
    shape,
    centers,
    amplitudes,
    *,
    radius: float = 6.0,
    edge_width: float = 0.5,
    oversample: int = 2,
    origin=None,
    background_fraction: float = 0.0,
    background_width: float = 20.0,
    psf_sigma: float = 0.0,
    dose: float | None = None,
) -> np.ndarray:
    """The noise-free expected pattern: disks, diffuse background and detector blur.

    Normalisation: disk amplitudes are relative. With a ``dose`` the whole frame is scaled
    to sum to ``dose`` (expected electrons), of which the background is exactly
    ``background_fraction``. Without a dose the disks keep their amplitudes (flat top =
    amplitude) and the background is added so that it is ``background_fraction`` of the
    total. Disks and background are blurred by the PSF (``mode='constant'``) before the
    normalisation. ``Microscope.render_kwargs()`` gives all keywords for one instrument.

    Examples
    --------
    >>> mu = render_pattern((64, 64), [[31.5, 31.5], [31.5, 47.5]], [1.0, 0.5],
    ...                     origin=(31.5, 31.5), background_fraction=0.1, dose=1e4)
    >>> round(float(mu.sum()), 6)
    10000.0
    """
    shape = _shape2("shape", shape)
    centers, amplitudes = _disk_arrays(centers, amplitudes)
    radius, edge_width, oversample = _disk_knobs(radius, edge_width, oversample)
    fraction = _finite("background_fraction", background_fraction, low=0, high=1, high_open=True)
    psf_sigma = _finite("psf_sigma", psf_sigma, low=0)
    if dose is not None:
        dose = _finite("dose", dose, low=0, low_open=True)
    if origin is None:
        if fraction > 0:
            raise ValueError("render_pattern: a background needs its origin=(x, y) in px")
        origin = (0.0, 0.0)
    disks = render_disks(shape, centers, amplitudes, radius, edge_width, oversample)[None]
    frames, _ = _expected_frames(
        disks,
        np.array([_pair("origin", origin)]),
        fraction=fraction,
        width=_finite("background_width", background_width, low=0, low_open=True),
        psf_sigma=psf_sigma,
        dose=dose,
        disk_area=math.pi * (radius**2 + edge_width**2),
    )
    return frames[0]
