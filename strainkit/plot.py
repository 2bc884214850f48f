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

__all__ = ["plot_bragg_vector_map", "plot_origin", "plot_rotation", "plot_strain"]


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


# (field, title, unit, scale to the displayed unit) of each panel of plot_strain
_STRAIN_PANELS = {
    "strain": (
        ("exx", "εxx", "%", 100.0),
        ("eyy", "εyy", "%", 100.0),
        ("exy", "εxy", "%", 100.0),
        ("theta_deg", "θ", "°", 1.0),
    ),
    "sigma": (
        ("sigma_exx", "σ(εxx)", "%", 100.0),
        ("sigma_eyy", "σ(εyy)", "%", 100.0),
        ("sigma_exy", "σ(εxy)", "%", 100.0),
        ("sigma_theta_deg", "σ(θ)", "°", 1.0),
    ),
    "lattice": (
        ("a", "a", "Å", 1.0),
        ("b", "b", "Å", 1.0),
        ("gamma_deg", "γ", "°", 1.0),
    ),
}


def _robust_limits(values: np.ndarray, symmetric: bool, percentile: float = 99.0):
    """Colour limits from the finite values: ±(percentile of |v|) or (100−p, p) percentiles."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        span = float(np.percentile(np.abs(finite), percentile))
        span = span if span > 0 else 1.0
        return -span, span
    lo, hi = (float(v) for v in np.percentile(finite, [100.0 - percentile, percentile]))
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    return lo, hi


def _arrow(ax, tail, vector, label: str, label_at: float, color: str, lw: float) -> None:
    """An arrow from ``tail`` along ``(down, across)`` in axes fraction, labelled on the way.

    +x (array axis 0) runs down the image and +y across, so the arrow head is at
    ``tail + (across, −down)`` in axes fraction; the label sits ``label_at`` times as far.
    """
    down, across = vector
    ax.annotate(
        "",
        xy=(tail[0] + across, tail[1] - down),
        xytext=tail,
        xycoords="axes fraction",
        arrowprops=dict(arrowstyle="->", color=color, lw=lw),
    )
    ax.text(
        tail[0] + label_at * across,
        tail[1] - label_at * down,
        label,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize="small",
        color=color,
        bbox=dict(boxstyle="round,pad=0.1", fc="w", ec="none", alpha=0.7),
    )


def _frame_arrows(ax, frame: str) -> None:
    """Arrows in the lower-left corner showing +x (down, array axis 0) and +y (across)."""
    _arrow(ax, (0.1, 0.3), (0.2, 0.0), "x", 1.25, "k", 1.2)
    _arrow(ax, (0.1, 0.3), (0.0, 0.2), "y", 1.25, "k", 1.2)
    ax.text(0.02, 0.98, f"{frame} frame", transform=ax.transAxes, fontsize="x-small", va="top")


def _lattice_arrows(ax, reference_g: np.ndarray, frame_angle_deg: float) -> None:
    """Arrows in the lower-right corner along the reference g1 and g2, in the map's axes."""
    phi = np.deg2rad(frame_angle_deg)
    # components along the output axes (rotated by φ from the frame's axes)
    rot = np.array([[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]])
    g = rot @ np.asarray(reference_g, float)
    g = g / np.abs(g).max() * 0.14
    for col, (name, color) in enumerate((("g1", "tab:green"), ("g2", "tab:purple"))):
        _arrow(ax, (0.78, 0.22), g[:, col], name, 1.3, color, 1.4)


def plot_strain(strain_map, ax=None, kind: str = "strain"):
    """Maps of strain, its standard errors or the lattice parameters of a StrainMap.

    ``kind='strain'`` shows εxx, εyy, εxy (%) and θ (°) with a diverging colour map over a
    symmetric range (± the 99th percentile of the absolute values, so a few outliers do not
    wash out the map); ``'sigma'`` shows the four standard errors in the same units with a
    sequential colour map; ``'lattice'`` shows a, b (Å) and γ (°). Masked and NaN positions
    are drawn grey. x is array axis 0 and runs down, y runs across; arrows in a corner of
    the first panel show the directions of x and y of the map's frame and, when the map
    holds its reference lattice (``reference_g``), arrows in the other corner show the
    directions of the reference g1 and g2 in the same axes.

    Parameters
    ----------
    strain_map : StrainMap
    ax : array of 4 matplotlib axes (3 for ``kind='lattice'``), optional
        Axes to draw into; a new figure in one row when None.
    kind : {'strain', 'sigma', 'lattice'}

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For an unknown ``kind``, a map without standard errors (``'sigma'``) or without
        lattice parameters (``'lattice'``), or the wrong number of axes.

    Examples
    --------
    >>> from strainkit.containers import StrainMap
    >>> x = np.linspace(-0.01, 0.01, 12).reshape(3, 4)
    >>> x[0, 0] = np.nan  # a position without a measurement
    >>> mask = np.isfinite(x)
    >>> strain = StrainMap(exx=x, eyy=-x, exy=0.5 * x, theta_deg=10 * x, mask=mask,
    ...                    reference_g=[[0.25, 0.0], [0.0, 0.25]])
    >>> fig = plot_strain(strain)
    >>> [a.get_title() for a in fig.axes[:4]]
    ['εxx (%)', 'εyy (%)', 'εxy (%)', 'θ (°)']
    >>> fig.axes[0].get_ylabel(), fig.axes[0].get_xlabel()
    ('x (scan)', 'y (scan)')
    """
    import matplotlib as mpl

    if kind not in _STRAIN_PANELS:
        raise ValueError(f"plot_strain: kind={kind!r} is not one of {sorted(_STRAIN_PANELS)}")
    panels = _STRAIN_PANELS[kind]
    missing = [name for name, *_ in panels if getattr(strain_map, name, None) is None]
    if kind == "lattice" and missing:
        raise ValueError(
            "plot_strain: kind='lattice' needs absolute lattice parameters (a, b, gamma_deg), "
            "but this StrainMap has none; calibrate the pixel size (PixelCalibrator) so that "
            "the peaks are in Å⁻¹"
        )
    if kind == "sigma" and missing:
        raise ValueError(
            f"plot_strain: kind='sigma' needs the standard errors {missing}, which this "
            "StrainMap does not hold"
        )
    if ax is None:
        import matplotlib.pyplot as plt

        fig, grid = plt.subplots(
            1, len(panels), figsize=(4.2 * len(panels), 3.6), layout="constrained", squeeze=False
        )
        axes = list(grid[0])
    else:
        fig, axes = _axes(ax, len(panels))
    symmetric = kind == "strain"
    cmap = mpl.colormaps["RdBu_r" if symmetric else "viridis"].with_extremes(bad="0.6")
    mask = np.asarray(strain_map.mask, bool)
    for a, (name, label, unit, scale) in zip(axes, panels):
        values = np.asarray(getattr(strain_map, name), float) * scale
        shown = np.ma.masked_invalid(np.where(mask, values, np.nan))
        vmin, vmax = _robust_limits(shown.filled(np.nan), symmetric)
        im = a.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        bar = fig.colorbar(im, ax=a)
        bar.set_label(f"{label} ({unit})")
        _label_image(a, f"{label} ({unit})")
    _frame_arrows(axes[0], getattr(strain_map, "frame", "real"))
    if getattr(strain_map, "reference_g", None) is not None:
        _lattice_arrows(axes[0], strain_map.reference_g, strain_map.frame_angle_deg)
    return fig
