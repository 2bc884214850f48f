"""Fourier helpers: subpixel shifts of frame stacks and DFT-upsampled correlation peaks.

The upsampling evaluates the band-limited interpolation of a correlation exactly on a
fine grid around a peak, by two small matrix products with the spectrum (no zero-padded
FFT, no rounding to a half-pixel grid first).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

__all__ = ["dft_upsample", "refine_peak", "shift_frames"]


def _ramp(n: int, shift: np.ndarray, rfft: bool = False) -> np.ndarray:
    """exp(-2πi k s / n) for each shift s (rows) and frequency k (columns)."""
    k = sfft.rfftfreq(n) if rfft else sfft.fftfreq(n)
    return np.exp(-2j * np.pi * np.outer(shift, k))


def shift_frames(frames: np.ndarray, shifts: np.ndarray, workers: int = 1) -> np.ndarray:
    """Shift each frame of a (n, Qx, Qy) stack by its own subpixel (dx, dy), periodically.

    Examples
    --------
    >>> frame = np.zeros((1, 8, 8)); frame[0, 2, 3] = 1.0
    >>> out = shift_frames(frame, np.array([[1.0, -1.0]]))
    >>> tuple(int(v) for v in np.unravel_index(out[0].argmax(), (8, 8)))
    (3, 2)
    """
    n, nx, ny = frames.shape
    shifts = np.asarray(shifts, dtype=float).reshape(n, 2)
    spec = sfft.rfft2(frames, workers=workers)
    spec *= _ramp(nx, shifts[:, 0])[:, :, None]
    spec *= _ramp(ny, shifts[:, 1], rfft=True)[:, None, :]
    return sfft.irfft2(spec, s=(nx, ny), workers=workers)


def dft_upsample(
    spectrum: np.ndarray, center: tuple[float, float], upsample: int, half_width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse DFT of a full 2D ``spectrum`` on a fine grid around ``center``.

    Returns the real values on the grid and its x and y coordinates (px).

    Examples
    --------
    >>> img = np.zeros((16, 16)); img[5, 7] = 1.0
    >>> vals, xs, ys = dft_upsample(np.fft.fft2(img), (5, 7), upsample=4, half_width=1)
    >>> float(vals.max()), float(xs[vals.argmax(axis=0)[4]])
    (1.0, 5.0)
    """
    nx, ny = spectrum.shape
    steps = np.arange(-round(half_width * upsample), round(half_width * upsample) + 1) / upsample
    xs, ys = center[0] + steps, center[1] + steps
    ex = np.exp(2j * np.pi * np.outer(xs, sfft.fftfreq(nx)))
    ey = np.exp(2j * np.pi * np.outer(sfft.fftfreq(ny), ys))
    values = (ex @ spectrum @ ey).real / (nx * ny)
    return values, xs, ys


def _parabola_vertex(m: float, c: float, p: float) -> float:
    denom = m - 2.0 * c + p
    return 0.0 if denom >= 0 else 0.5 * (m - p) / denom


def refine_peak(spectrum: np.ndarray, peak: tuple[int, int], upsample: int = 32) -> np.ndarray:
    """Subpixel maximum of a correlation near integer ``peak``, from its full spectrum.

    Two passes of DFT upsampling (×4 over ±1.5 px, then ``upsample`` over ±1 coarse step)
    and a parabola through the finest grid's maximum and its neighbours.

    Examples
    --------
    >>> y, x = np.mgrid[:32, :32]
    >>> img = np.exp(-((y - 10.3) ** 2 + (x - 20.6) ** 2) / 8)
    >>> np.round(refine_peak(np.fft.fft2(img), (10, 21)), 3)
    array([10.3, 20.6])
    """
    center = np.asarray(peak, dtype=float)
    for factor, half in ((4, 1.5), (upsample, 1.0 / 4 + 1.0 / upsample)):
        vals, xs, ys = dft_upsample(spectrum, tuple(center), factor, half)
        i, j = np.unravel_index(np.argmax(vals), vals.shape)
        center = np.array([xs[i], ys[j]])
        if 0 < i < len(xs) - 1 and 0 < j < len(ys) - 1:
            di = _parabola_vertex(vals[i - 1, j], vals[i, j], vals[i + 1, j])
            dj = _parabola_vertex(vals[i, j - 1], vals[i, j], vals[i, j + 1])
            center = center + np.array([di, dj]) / factor
    return center
