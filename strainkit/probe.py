"""The vacuum probe template and the correlation kernels built from it.

``ProbeTemplate.fit`` averages vacuum patterns after aligning each one to subpixel
precision (every pattern counts, none is dropped), fits a soft-edged disk to the average
to measure its centre, radius and edge width, and builds the correlation kernel used by
:class:`strainkit.BraggDiskFinder`:

* ``'poisson'`` (default): the logarithm of the template (floored at 3 % of its top),
  which weights each pixel of the disk edge as the Poisson likelihood of a shift does,
  so that the correlation maximum is about as precise as the counts allow;
* ``'flat'``: the template itself (the matched filter of an isolated disk in white noise);
* ``'edge'``: minus the Laplacian of the smoothed template, which correlates intensity
  gradients (disk edges) of pattern and template;
* ``'zero_sum'``: the template minus a broad uniform disk of equal sum, so a background
  that varies linearly or quadratically across a disk neither adds to nor shifts its
  peak; it ends before the neighbouring disks when their spacing is known.

Kernels are centred within half a pixel of pixel (0, 0) (wrapped); the fractional offset
(:func:`kernel_offset`) is added back to correlation maxima to give disk centres.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic
import scipy.fft as sfft
from scipy import ndimage, optimize, special

from strainkit._base import Estimator, ParamsModel
from strainkit._fourier import refine_peak, shift_frames
from strainkit.containers import DataCube

__all__ = [
    "ProbeTemplate",
    "average_aligned",
    "disk_model",
    "fit_disk",
    "kernel_offset",
    "make_kernel",
    "support_radius",
]

KERNELS = ("poisson", "flat", "edge", "zero_sum")
# Relative level under which the Poisson kernel stops growing: about the ratio of the
# diffuse background to a disk's flat top in ordinary patterns.
POISSON_FLOOR = 0.03


def disk_model(shape, center, radius, edge_width, amplitude=1.0, background=0.0) -> np.ndarray:
    """A soft-edged disk ``b + a · 0.5 erfc((ρ − R)/(√2 w))`` sampled at pixel centres.

    Examples
    --------
    >>> m = disk_model((16, 16), (7.5, 7.5), 4.0, 0.5)
    >>> float(m[7, 7]), float(m[0, 0]) < 1e-6
    (1.0, True)
    """
    x = np.arange(shape[0])[:, None] - center[0]
    y = np.arange(shape[1])[None, :] - center[1]
    rho = np.hypot(x, y)
    return background + amplitude * 0.5 * special.erfc((rho - radius) / (np.sqrt(2) * edge_width))


def _rough_center(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and radius of the bright disk from its half-maximum region (robust start)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.0)
    low, high = np.percentile(smooth, 5), smooth.max()
    inside = smooth > low + 0.5 * (high - low)
    labels, n = ndimage.label(inside)
    if n == 0:
        raise ValueError("no bright disk found in the vacuum pattern")
    sizes = ndimage.sum_labels(inside, labels, index=np.arange(1, n + 1))
    blob = labels == (1 + int(np.argmax(sizes)))
    center = np.array(ndimage.center_of_mass(blob))
    return center, float(np.sqrt(blob.sum() / np.pi))


def fit_disk(image: np.ndarray) -> dict[str, float]:
    """Fit a soft-edged disk to an image: centre, radius, edge width, amplitude, background.

    A least-squares fit of :func:`disk_model` over the disk and its surroundings,
    started from the half-maximum region, so that it is robust to a background and to
    intensity outside the disk (unlike a centre of mass).

    Examples
    --------
    >>> img = disk_model((48, 48), (20.3, 25.6), 7.2, 0.8, amplitude=100, background=5)
    >>> fit = fit_disk(img)
    >>> [round(fit[k], 3) for k in ("center_x", "center_y", "radius", "edge_width")]
    [20.3, 25.6, 7.2, 0.8]
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise ValueError("fit_disk needs a finite 2D image")
    (cx, cy), r0 = _rough_center(image)
    half = int(np.ceil(r0 * 1.6 + 4))
    x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, image.shape[0])
    y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, image.shape[1])
    window = image[x0:x1, y0:y1]
    background = float(np.median(np.concatenate([window[0], window[-1], window[:, 0]])))
    amplitude = float(np.percentile(window, 99)) - background

    def residual(p):
        return (disk_model(window.shape, p[:2], p[2], p[3], p[4], p[5]) - window).ravel()

    start = [cx - x0, cy - y0, r0, 1.0, amplitude, background]
    lower = [0, 0, 0.5, 0.05, 0, -np.inf]
    upper = [window.shape[0], window.shape[1], 2 * half, 0.5 * half + 1, np.inf, np.inf]
    fit = optimize.least_squares(residual, start, bounds=(lower, upper), x_scale="jac")
    cxf, cyf, radius, edge, amp, bg = fit.x
    return {
        "center_x": float(cxf + x0),
        "center_y": float(cyf + y0),
        "radius": float(radius),
        "edge_width": float(edge),
        "amplitude": float(amp),
        "background": float(bg),
    }


def _wrapped_radius(shape: tuple[int, int], origin=(0.0, 0.0)) -> np.ndarray:
    """Distance of each pixel from ``origin`` (near pixel (0, 0)) on the periodic detector."""
    i, j = np.arange(shape[0]), np.arange(shape[1])
    x = np.where(i < shape[0] / 2, i, i - shape[0])[:, None] - origin[0]
    y = np.where(j < shape[1] / 2, j, j - shape[1])[None, :] - origin[1]
    return np.hypot(x, y)


def _soft_step(rho: np.ndarray, edge: float, width: float) -> np.ndarray:
    return 0.5 * special.erfc((rho - edge) / (np.sqrt(2) * width))


def support_radius(radius: float, edge_width: float, spacing: float | None) -> float:
    """Radius of the zero-sum kernel's negative disk: ``R + 4w``, less with close disks.

    Its soft edge should stay clear of the neighbouring disks, which start at about
    ``s − R − 2w`` from a disk's centre for a disk spacing ``s``; so the radius is at most
    ``s − R − 3w``, but never less than ``R`` (disks that close overlap anyway).

    Examples
    --------
    >>> support_radius(6.0, 0.5, None)
    8.0
    >>> support_radius(6.0, 0.5, 14.0)
    6.5
    >>> support_radius(6.0, 1.0, 14.0)
    6.0
    """
    outer = radius + 4.0 * edge_width
    if spacing is not None:
        outer = min(outer, max(spacing - radius - 3.0 * edge_width, radius))
    return outer


def make_kernel(
    template: np.ndarray,
    center: tuple[float, float],
    radius: float,
    edge_width: float,
    kind: str = "zero_sum",
    spacing: float | None = None,
    background: float = 0.0,
    floor: float = POISSON_FLOOR,
) -> np.ndarray:
    """The correlation kernel of a probe template, centred within ½ px of pixel (0, 0).

    ``'flat'`` is the background-free template within ``R + 2.5w`` (sum 1). ``'zero_sum'``
    subtracts from it a uniform soft disk of radius :func:`support_radius` with the same
    sum, so the kernel sums to zero and, being symmetric, a background that varies
    linearly or quadratically across a disk neither adds to nor shifts its peak; the
    negative part is spread thinly over the disk and just beyond it, where it costs
    little precision, and ends before the neighbouring disks. ``'edge'`` is minus the
    Laplacian of the smoothed template: correlating with it correlates the intensity
    gradients of pattern and template (also zero-sum).

    Parameters
    ----------
    template : ndarray (Qx, Qy)
    center : (float, float)
        Disk centre in the template (px).
    radius, edge_width : float
        Disk radius and edge width (px).
    kind : {'poisson', 'flat', 'edge', 'zero_sum'}
    spacing : float, optional
        Smallest distance between disks (px); limits the zero-sum kernel's reach.
    background : float
        Template background level, removed first.
    floor : float
        The ``'poisson'`` kernel is ``log(t / max(t) + floor)`` (less its value off the
        disk): the Poisson log-likelihood of a disk of plateau ``A`` on a background ``B``
        when ``floor = B / A``.

    Examples
    --------
    >>> t = disk_model((64, 64), (30.2, 33.7), 6.0, 0.5)
    >>> k = make_kernel(t, (30.2, 33.7), 6.0, 0.5, kind="zero_sum", spacing=16)
    >>> abs(float(k.sum())) < 1e-12, kernel_offset((30.2, 33.7))
    (True, array([ 0.2, -0.3]))
    """
    if kind not in KERNELS:
        raise ValueError(f"kind={kind!r} is not a kernel; use one of {KERNELS}")
    # Roll by whole pixels only: a subpixel Fourier shift of a disk that is not
    # band-limited would ring. The fractional part stays in the kernel (see kernel_offset).
    whole = np.round(np.asarray(center, dtype=float)).astype(int)
    frac = np.asarray(center, dtype=float) - whole
    centered = np.roll(template - background, tuple(-whole), axis=(0, 1))
    rho = _wrapped_radius(template.shape, frac)
    # Keep the disk and its edge; beyond it the vacuum average is only noise.
    disk = centered * _soft_step(rho, radius + 2.5 * edge_width, edge_width)
    disk /= disk.sum()
    if kind == "flat":
        return disk
    if kind == "poisson":
        top = np.clip(disk / disk.max(), 0.0, None)
        mask = _soft_step(rho, radius + 2.5 * edge_width, edge_width)
        if not floor > 0:
            raise ValueError(f"floor={floor!r}: the Poisson kernel needs a floor > 0")
        log = (np.log(top + floor) - np.log(floor)) * mask
        return log / log.sum()
    if kind == "edge":
        edge = -ndimage.gaussian_laplace(disk, edge_width, mode="wrap")
        return edge - edge.mean()
    negative = _soft_step(rho, support_radius(radius, edge_width, spacing), edge_width)
    return disk - negative / negative.sum()


def kernel_offset(center: tuple[float, float]) -> np.ndarray:
    """Where a kernel of :func:`make_kernel` has its centre: the fractional part of ``center``.

    A correlation maximum at ``s`` means a disk centred at ``s + kernel_offset(center)``.

    Examples
    --------
    >>> kernel_offset((63.3, 64.8))
    array([ 0.3, -0.2])
    """
    c = np.asarray(center, dtype=float)
    return c - np.round(c)


def _as_frames(X, mask) -> DataCube:
    """A DataCube view of the vacuum input (a cube, a 2D pattern, or a 4D array)."""
    if isinstance(X, DataCube):
        cube = X
    else:
        arr = np.asarray(X)
        cube = DataCube(arr[None, None] if arr.ndim == 2 else arr)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != cube.scan_shape:
            raise ValueError(
                f"mask has shape {mask.shape} but the scan is {cube.scan_shape}; give one "
                "boolean per scan position (True = vacuum)"
            )
        if not mask.any():
            raise ValueError("mask marks no scan position as vacuum; mark at least one")
    return cube


def _selected_blocks(cube: DataCube, mask, block_size: int):
    flat = None if mask is None else np.asarray(mask, bool).ravel()
    for start, frames in cube.iter_blocks(block_size):
        if flat is not None:
            frames = frames[flat[start : start + len(frames)]]
        if len(frames):
            yield np.asarray(frames, dtype=np.float64)


def average_aligned(cube: DataCube, mask=None, block_size: int = 64) -> tuple[np.ndarray, int]:
    """Average vacuum frames after subpixel alignment on the first-pass mean.

    Pass 1 centres each frame on its half-maximum disk and averages; pass 2 registers
    every frame to that mean by DFT-upsampled cross-correlation and averages the shifted
    frames. Returns the aligned mean and the number of frames used.

    Examples
    --------
    >>> frames = np.stack([disk_model((32, 32), (15 + d, 16 - d), 5, 0.5) for d in (0, 0.4)])
    >>> mean, n = average_aligned(DataCube(frames[:, None]))
    >>> n, round(fit_disk(mean)["center_x"], 2)
    (2, 15.0)
    """
    rough_sum, centers = None, []
    for frames in _selected_blocks(cube, mask, block_size):
        c = np.array([_rough_center(f)[0] for f in frames])
        centers.append(c)
        ref_pt = centers[0][0]
        aligned = shift_frames(frames, ref_pt - c)
        rough_sum = aligned.sum(0) if rough_sum is None else rough_sum + aligned.sum(0)
    if rough_sum is None:
        raise ValueError("no vacuum frames to average")
    ref_spec = np.conj(sfft.fft2(rough_sum))
    total, count = np.zeros_like(rough_sum), 0
    for frames in _selected_blocks(cube, mask, block_size):
        spec = sfft.fft2(frames)
        shifts = np.empty((len(frames), 2))
        for k in range(len(frames)):
            cross = spec[k] * ref_spec
            peak = np.unravel_index(np.argmax(sfft.ifft2(cross).real), cross.shape)
            shift = refine_peak(cross, peak, upsample=32)
            shifts[k] = (shift + np.array(cross.shape) / 2) % cross.shape - np.array(
                cross.shape
            ) / 2
        total += shift_frames(frames, -shifts).sum(0)
        count += len(frames)
    return total / count, count


class ProbeTemplate(Estimator):
    """The vacuum probe: an aligned average, its measured disk and a correlation kernel.

    Parameters
    ----------
    kernel : {'poisson', 'flat', 'zero_sum', 'edge'}
        Correlation kernel built from the template (see the module docstring).
    spacing : float or None
        Smallest distance between Bragg disks in px, when known: it keeps the zero-sum
        kernel's negative part away from the neighbouring disks.
    align : bool
        Align every vacuum pattern to subpixel precision before averaging.
    block_size : int
        Frames read at a time.

    Attributes
    ----------
    template_ : ndarray (Qx, Qy)
        The aligned mean vacuum pattern.
    center_ : tuple of float
        Disk centre in ``template_`` (px), from a soft-disk fit.
    radius_, edge_width_ : float
        Disk radius and edge width (px), from the same fit.
    background_ : float
        Fitted background level of ``template_``.
    kernel_ : ndarray (Qx, Qy)
        Correlation kernel centred on pixel (0, 0).
    n_frames_ : int
        Number of vacuum patterns averaged.

    Examples
    --------
    >>> from strainkit import simulate
    >>> vac = simulate.simulate_vacuum(scan_shape=(3, 3), seed=1)
    >>> probe = ProbeTemplate().fit(DataCube(vac.data))
    >>> round(probe.radius_, 1), probe.n_frames_
    (6.0, 9)
    """

    class Params(ParamsModel):
        kernel: Literal["poisson", "flat", "zero_sum", "edge"] = "poisson"
        spacing: pydantic.PositiveFloat | None = None
        align: bool = True
        block_size: pydantic.PositiveInt = 256

    def fit(self, X, y=None, *, mask=None) -> ProbeTemplate:
        """Average the vacuum patterns of ``X`` and build the kernel.

        Parameters
        ----------
        X : DataCube, 2D pattern or 4D array
            A vacuum scan, a single vacuum pattern, or a sample scan with ``mask``.
        mask : array of bool (Rx, Ry), optional
            Scan positions over vacuum, when ``X`` is a sample scan.
        """
        p = self._validated()
        cube = _as_frames(X, mask)
        if p.align:
            template, n = average_aligned(cube, mask, min(p.block_size, 64))
        else:
            frames = list(_selected_blocks(cube, mask, p.block_size))
            n = sum(len(f) for f in frames)
            template = sum(f.sum(0) for f in frames) / n
        self._set_template(template, n, p)
        return self

    def _set_template(self, template: np.ndarray, n: int, p) -> None:
        disk = fit_disk(template)
        self.template_ = template
        self.center_ = (disk["center_x"], disk["center_y"])
        self.radius_ = disk["radius"]
        self.edge_width_ = disk["edge_width"]
        self.background_ = disk["background"]
        self.n_frames_ = int(n)
        self.kernel_ = make_kernel(
            template,
            self.center_,
            self.radius_,
            self.edge_width_,
            p.kernel,
            p.spacing,
            self.background_,
        )

    @classmethod
    def synthetic(
        cls, radius: float, edge_width: float, shape: tuple[int, int], **params
    ) -> ProbeTemplate:
        """A fitted template of an ideal soft-edged disk, when no vacuum data exists.

        Examples
        --------
        >>> probe = ProbeTemplate.synthetic(6.0, 0.5, (128, 128), kernel="flat")
        >>> probe.center_, round(probe.radius_, 3)
        ((64.0, 64.0), 6.0)
        """
        probe = cls(**params)
        p = probe._validated()
        center = (shape[0] // 2, shape[1] // 2)
        probe._set_template(disk_model(shape, center, radius, edge_width), 0, p)
        return probe

    def build_kernel(
        self, kind: str | None = None, spacing: float | None = None, floor: float = POISSON_FLOOR
    ) -> np.ndarray:
        """A kernel of another kind, disk spacing or Poisson floor, from the fitted template.

        Examples
        --------
        >>> probe = ProbeTemplate.synthetic(6.0, 0.5, (64, 64))
        >>> probe.build_kernel("flat").sum().round(6)
        np.float64(1.0)
        """
        self._check_fitted()
        p = self._validated()
        return make_kernel(
            self.template_,
            self.center_,
            self.radius_,
            self.edge_width_,
            kind or p.kernel,
            spacing if spacing is not None else p.spacing,
            self.background_,
            floor,
        )
