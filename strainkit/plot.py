"""Quality-control figures for the calibrations (matplotlib; nothing is computed here).

Every function draws into the axes it is given (``ax=``) or into a new figure, and
returns the figure. Images are shown with x (array axis 0) running down and y (axis 1)
across, and the axes say so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from strainkit._geometry import distortion_matrix
from strainkit.containers import BraggPeaks
from strainkit.disks import bragg_vector_map

__all__ = ["plot_bragg_vector_map", "plot_origin", "plot_rotation"]


def _axes(ax, n: int, size=(4.0, 3.6)):
    """``n`` axes: the ones given, or those of a new figure in one row."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, n, figsize=(size[0] * n, size[1]), squeeze=False)
        return fig, list(axes[0])
    axes = list(np.ravel(ax)) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
    if len(axes) != n:
        raise ValueError(f"this figure needs {n} axes, got {len(axes)}; pass ax=None for new ones")
    return axes[0].figure, axes


def _label_image(ax, title: str, xlabel: str = "y (scan)", ylabel: str = "x (scan)") -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def plot_origin(calibrator, ax=None):
    """Origin maps: measured, fitted and residual, for x and y (six panels).

    Parameters
    ----------
    calibrator : OriginCalibrator
        A fitted origin calibrator.
    ax : array of 6 matplotlib axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from strainkit.origin import OriginCalibrator
    >>> from strainkit.containers import BraggPeaks
    >>> rows = [np.array([[60.0 + i, 64.0 + j, 1.0, 1.0]]) for i in range(3) for j in range(3)]
    >>> peaks = BraggPeaks.from_positions(rows, scan_shape=(3, 3), detector_shape=(128, 128))
    >>> fig = plot_origin(OriginCalibrator(search_radius=10).fit(peaks))
    >>> len(fig.axes) >= 6
    True
    """
    calibrator._check_fitted()
    fig, axes = _axes(ax, 6)
    measured, fitted = calibrator.origin_measured_, calibrator.origin_
    for c, name in enumerate(("x", "y")):
        residual = measured[..., c] - fitted[..., c]
        lo = np.nanmin([np.nanmin(measured[..., c]), np.nanmin(fitted[..., c])])
        hi = np.nanmax([np.nanmax(measured[..., c]), np.nanmax(fitted[..., c])])
        for k, (title, data) in enumerate(
            (
                (f"origin {name}, measured (px)", measured[..., c]),
                (f"origin {name}, fitted (px)", fitted[..., c]),
            )
        ):
            a = axes[3 * c + k]
            im = a.imshow(data, vmin=lo, vmax=hi, cmap="viridis")
            fig.colorbar(im, ax=a)
            _label_image(a, title)
        span = np.nanmax(np.abs(residual)) if np.isfinite(residual).any() else 1.0
        a = axes[3 * c + 2]
        im = a.imshow(residual, cmap="RdBu_r", vmin=-span, vmax=span)
        fig.colorbar(im, ax=a)
        _label_image(a, f"origin {name}, measured − fitted (px)")
    return fig


def plot_bragg_vector_map(
    peaks: BraggPeaks, ellipse=None, ax=None, upsample: int = 2, rings: bool = True
):
    """The Bragg vector map (square-root scale) with the fitted rings drawn over it.

    Parameters
    ----------
    peaks : BraggPeaks
        Centred peaks (after the origin calibration), with or without the ellipse
        correction applied.
    ellipse : EllipticalCalibrator, optional
        A fitted calibrator whose rings are drawn: ellipses on uncorrected peaks,
        circles on corrected ones.
    ax : matplotlib axes, optional
    upsample : int
        Bins per pixel of the map.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> rows = [np.array([[10.0, 0.0, 1.0, 1.0], [-10.0, 0.0, 1.0, 1.0]])]
    >>> peaks = BraggPeaks.from_positions(rows, scan_shape=(1, 1), calibrations=("origin",))
    >>> fig = plot_bragg_vector_map(peaks)
    >>> fig.axes[0].get_xlabel()
    'qy (px)'
    """
    fig, (a,) = _axes(ax, 1, size=(5.0, 4.6))
    bvm = bragg_vector_map(peaks, upsample=upsample)
    # the central beam outshines every spot: clip at a high percentile of the occupied bins
    occupied = bvm.image[bvm.image > 0]
    top = np.percentile(occupied, 99.0) if occupied.size else 1.0
    a.imshow(
        np.sqrt(np.clip(bvm.image, 0, top)),
        cmap="gray_r",
        extent=(bvm.qy[0], bvm.qy[-1], bvm.qx[-1], bvm.qx[0]),
    )
    unit = "px" if peaks.units == "px" else "Å⁻¹"
    a.set_xlabel(f"qy ({unit})")
    a.set_ylabel(f"qx ({unit})")
    a.set_title("Bragg vector map")
    if ellipse is not None and rings:
        ellipse._check_fitted()
        ratio, minor, angle = ellipse.ellipse_
        corrected = "ellipse" in peaks.calibrations
        shape = np.eye(2) if corrected else distortion_matrix(ratio, minor, angle)
        t = np.linspace(0, 2 * np.pi, 361)
        for r in ellipse.ring_radii_:
            q = shape @ np.stack([r * np.cos(t), r * np.sin(t)])
            a.plot(q[1], q[0], lw=0.8, color="tab:red")
        a.plot([], [], color="tab:red", lw=0.8, label="fitted rings")
        a.legend(loc="upper right", fontsize="small")
    return fig


def plot_rotation(calibrator, image: np.ndarray, shadow: np.ndarray, ax=None):
    """The STEM image beside the shadow image mapped back into the image's frame.

    With a right calibration the two panels show the same features in the same places
    (the shadow's contrast may be inverted).

    Parameters
    ----------
    calibrator : RotationCalibrator
        Fitted on ``image`` and ``shadow``.
    image, shadow : 2D arrays
    ax : two matplotlib axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from strainkit import simulate
    >>> from strainkit.rotation import RotationCalibrator
    >>> sim = simulate.simulate_images(image_shape=(96, 96), n_features=20, seed=3)
    >>> cal = RotationCalibrator().fit(sim.haadf, sim.shadow)
    >>> fig = plot_rotation(cal, sim.haadf, sim.shadow)
    >>> [a.get_title() for a in fig.axes[:2]]
    ['STEM image', 'shadow image, mapped back']
    """
    calibrator._check_fitted()
    if getattr(calibrator, "affine_", None) is None:
        raise ValueError(
            "this RotationCalibrator was set by value (from_value): it holds no image "
            "registration to show; fit it on an image and a shadow image"
        )
    fig, axes = _axes(ax, 2)
    affine = np.asarray(calibrator.affine_)
    back = ndimage.affine_transform(
        np.asarray(shadow, float),
        affine[:, :2],
        offset=affine[:, 2],
        output_shape=np.shape(image),
        order=1,
        cval=np.nan,
    )
    axes[0].imshow(image, cmap="gray")
    _label_image(axes[0], "STEM image", "y (px)", "x (px)")
    axes[1].imshow(back, cmap="gray")
    _label_image(axes[1], "shadow image, mapped back", "y (px)", "x (px)")
    flip = "with" if calibrator.flip_ else "no"
    fig.suptitle(f"rotation {calibrator.rotation_deg_:.2f}°, {flip} flip")
    return fig
