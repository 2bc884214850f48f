"""Rotation (and flip) between real space and the detector, from a STEM image and a shadow image.

A defocused probe projects a shadow image of the sample onto the detector: the same area as a
STEM image (HAADF, bright field, ...), seen through the projector, so rotated by the angle φ
between real space and the detector, possibly mirrored (the x↔y swap ``P``, which can come from
how the data were written), and scaled. With the conventions of DESIGN.md a real-space vector
``v_R`` appears on the ellipse-corrected detector as ``v_Q = R(φ) P v_R``, so an image pixel
``r`` appears in the shadow image at ``q = c_Q + D s R(φ) P (r − c_R)`` (``D`` the detector's
elliptical distortion, ``s`` the shadow px per image px).

:func:`register_images` measures ``(φ, flip, s)`` and the translation in three steps:

1. The image is high-passed and lightly smoothed; the shadow is divided by its local mean
   taken inside the bright disk only (so the disk edge leaves no trace) and corrected for the
   ellipse. For each flip hypothesis the log-polar magnitude spectra of image and shadow are
   cross-correlated (Fourier–Mellin): a rotation and scaling of an image is a shift of its
   log-polar spectrum. The spectrum does not tell φ from φ + 180°, so both are kept.
2. Each candidate (flip, φ or φ + 180°, s) warps the image into the shadow frame, where an FFT
   cross-correlation, normalised over the shadow's disk, gives the translation and a score.
   ``margin`` compares the best score with that of the best clearly different candidate.
3. The best candidates are refined by least squares on the raw shadow pixels inside the disk
   (the image, not the shadow, is interpolated): the shadow is modelled as a quadratic
   background plus ``b`` times the warped image, ``b < 0`` for the usual absorption contrast
   (features bright in HAADF are dark in the shadow). Shadow and model go through the same
   linear filter inside the disk (a high-pass by the local mean and the image's smoothing,
   scaled to the shadow), so the model stays exact where the disk edge cuts features.
   The standard errors are the least-squares covariance for white noise passed through
   that filter, its variance taken from the residual: slightly conservative, as noise of
   the image counts as if it were the shadow's.

The precision needs features spread over the shadow's disk and a shadow that shows at least
about a quarter of the image; when it shows less, crop the image to about what it shows.

:class:`RotationCalibrator` is the estimator around it; its ``transform`` turns Bragg peaks
from the detector frame into the real-space scan frame, taking a change of the microscope's
scan rotation since the calibration into account.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import pydantic

from strainkit._base import Estimator, ParamsModel
from strainkit._geometry import flip_matrix, rotation_matrix
from strainkit._register import (
    _OWNER,
    RotationFit,
    _ellipse_tuple,
    _wrap_deg,
    register_images,
    shadow_disk_mask,
)
from strainkit.containers import BraggPeaks

__all__ = [
    "RotationCalibrator",
    "RotationFit",
    "effective_rotation",
    "register_images",
    "rotate_to_real",
    "shadow_disk_mask",
]


def effective_rotation(
    rotation_deg: float,
    flip: bool,
    scan_rotation_deg: float = 0.0,
    calibration_scan_rotation_deg: float = 0.0,
) -> float:
    """The rotation φ that maps the scan frame of data taken at another scan rotation.

    The scan coils turn the raster, i.e. the real-space scan frame, by the scan-rotation
    angle α relative to the sample (new scan axes = ``R(α)`` times the old ones), while the
    detector stays put. A vector with coordinates ``v_α`` in the new scan frame has
    coordinates ``R(Δα) v_α`` in the frame of the calibration (``Δα`` the change of the
    scan rotation), so it appears on the detector at ``R(φ) P R(Δα) v_α``. Without flip that
    is ``R(φ + Δα) v_α``; with flip, ``P R(Δα) = R(−Δα) P`` gives ``R(φ − Δα) P v_α``.

    Parameters
    ----------
    rotation_deg, flip : float, bool
        The calibration: φ and P at the calibration's scan rotation.
    scan_rotation_deg : float
        Scan rotation of the data to transform, degrees.
    calibration_scan_rotation_deg : float
        Scan rotation when the calibration images were recorded, degrees.

    Returns
    -------
    float
        φ for the data, degrees in [−180, 180).

    Examples
    --------
    >>> effective_rotation(10.0, False, scan_rotation_deg=30.0)
    40.0
    >>> effective_rotation(10.0, True, scan_rotation_deg=30.0)
    -20.0
    """
    delta = float(scan_rotation_deg) - float(calibration_scan_rotation_deg)
    return _wrap_deg(float(rotation_deg) + (-delta if flip else delta))


def rotate_to_real(
    qx: np.ndarray, qy: np.ndarray, rotation_deg: float, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Detector-frame vectors to the real-space scan frame: ``v_R = P⁻¹ R(−φ) v_Q``.

    Examples
    --------
    >>> vx, vy = rotate_to_real(np.array([0.0]), np.array([1.0]), 90.0, False)
    >>> vx.round(12), vy.round(12)
    (array([1.]), array([0.]))
    >>> rotate_to_real(np.array([0.0]), np.array([1.0]), 0.0, True)
    (array([1.]), array([0.]))
    """
    inverse = flip_matrix(flip).T @ rotation_matrix(-np.deg2rad(rotation_deg))
    qx, qy = np.asarray(qx, dtype=float), np.asarray(qy, dtype=float)
    return inverse[0, 0] * qx + inverse[0, 1] * qy, inverse[1, 0] * qx + inverse[1, 1] * qy


# ---------------------------------------------------------------------------- preprocessing


class RotationCalibrator(Estimator):
    """The rotation φ and flip between the real-space scan frame and the detector.

    ``fit(image, shadow)`` registers a STEM image with a defocused CBED pattern that shows
    a shadow image of the same area (see :func:`register_images` and the module docstring).
    With the conventions of DESIGN.md a real-space vector ``v_R`` appears on the
    ellipse-corrected detector as ``v_Q = R(φ) P v_R`` (``P`` the x↔y swap when ``flip_``);
    :meth:`transform` applies the inverse, ``v_R = P⁻¹ R(−φ) v_Q``, to centred Bragg peaks.
    A known calibration can be set with :meth:`from_value`.

    **Scan rotation.** The scan coils turn the raster, i.e. the real-space scan frame, by
    the scan-rotation angle α relative to the sample (the new scan axes are ``R(α)`` times
    the old ones, measured from +x toward +y), while the detector stays put. A vector with
    coordinates ``v`` in a scan frame turned by ``Δα = scan_rotation_deg −
    calibration_scan_rotation_deg`` has coordinates ``R(Δα) v`` in the calibration's scan
    frame, so it appears on the detector at ``R(φ) P R(Δα) v``. Without flip that is
    ``R(φ + Δα) v``; with flip ``P R(Δα) = R(−Δα) P`` makes it ``R(φ − Δα) P v``. So
    ``transform`` uses φ + Δα without flip and φ − Δα with flip
    (:func:`effective_rotation`). A sample feature appears turned by −Δα in the new image.
    Set ``scan_rotation_deg`` per experimental scan with ``set_params`` or on a ``clone``.

    Parameters
    ----------
    ellipse : (a, b, angle_deg) or fitted EllipticalCalibrator, optional
        The detector's elliptical distortion (semi-axes a >= b, a at ``angle_deg`` from +x
        toward +y), undone on the shadow image before registering; any object with an
        ``ellipse_ = (a, b, angle_deg)`` attribute is accepted. The correction keeps the
        minor axis, so ``scale_`` is in shadow px along the minor axis. Note that
        ``sklearn.base.clone`` un-fits an estimator given here: pass the tuple or a
        ``FrozenEstimator`` when cloning.
    contrast : {'auto', 'inverted', 'same'}
        'inverted': features bright in the image are dark in the shadow (a HAADF image
        against the bright-field shadow); 'same': a bright-field image; 'auto' picks the
        better match.
    scale_range : (float, float)
        Shadow px per image px to search.
    highpass_sigma : float, optional
        Width (image px) of the Gaussian high-pass that removes the images' smooth
        backgrounds; default ``max(4, min(image.shape) / 16)``. Make it about twice the
        size of the image's features when they are large.
    min_score : float
        A match whose score is below this warns.
    min_margin : float
        A match whose coarse score is less than ``min_margin`` times that of the best
        clearly different match (another flip, or a rotation more than 5° away) warns.
    calibration_scan_rotation_deg : float
        Scan rotation (degrees) when the image and shadow were recorded.
    scan_rotation_deg : float
        Scan rotation (degrees) of the data that :meth:`transform` is applied to.

    Attributes
    ----------
    rotation_deg_ : float
        φ in degrees, in [−180, 180), at ``calibration_scan_rotation_deg``.
    flip_ : bool
        Whether the x↔y swap P precedes the rotation.
    scale_ : float
        Shadow px (minor axis) per image px; NaN when set by value.
    offset_ : ndarray (2,) or None
        Translation t of the fitted map: image px ``r`` lies at raw shadow px
        ``affine_[:, :2] @ r + offset_``.
    affine_ : ndarray (2, 3) or None
        ``[D s R(φ) P | offset_]``, image px to raw shadow px (``D`` the ellipse).
    score_ : float
        Normalised cross-correlation of the shadow and the warped image over the shadow's
        disk (both high-passed and smoothed alike), with the contrast sign applied, in
        [−1, 1]: 0.95 or more for a clean match, below 0.5 for images that do not match.
    margin_ : float
        Coarse score of the match over that of the best clearly different one.
    rotation_std_deg_, scale_std_ : float
        Standard errors of φ (degrees) and of the scale, from the least-squares covariance.
    contrast_ : {'inverted', 'same'} or None
        The contrast relation found.

    Examples
    --------
    >>> from strainkit import simulate
    >>> sim = simulate.simulate_images(simulate.Microscope(rotation_deg=-60.0, flip=True),
    ...                                image_shape=(96, 96), n_features=25)
    >>> cal = RotationCalibrator(ellipse=(1.025, 1.0, 35.0)).fit(sim.haadf, sim.shadow)
    >>> round(cal.rotation_deg_, 1), cal.flip_, cal.rotation_std_deg_ < 0.1
    (-60.0, True, True)
    """

    class Params(ParamsModel):
        ellipse: Any = None
        contrast: Literal["auto", "inverted", "same"] = "auto"
        scale_range: tuple[pydantic.PositiveFloat, pydantic.PositiveFloat] = (0.2, 5.0)
        highpass_sigma: pydantic.PositiveFloat | None = None
        min_score: float = pydantic.Field(0.5, ge=-1.0, le=1.0)
        min_margin: float = pydantic.Field(1.5, ge=1.0)
        calibration_scan_rotation_deg: pydantic.FiniteFloat = 0.0
        scan_rotation_deg: pydantic.FiniteFloat = 0.0

        @pydantic.field_validator("ellipse")
        @classmethod
        def _check_ellipse(cls, value):
            return _ellipse_tuple(value)

        @pydantic.field_validator("scale_range")
        @classmethod
        def _check_scale_range(cls, value):
            if not value[0] < value[1]:
                raise ValueError("give (low, high) with low < high")
            return value

    def fit(self, image, shadow, *, shadow_mask=None) -> RotationCalibrator:
        """Measure rotation, flip, scale and offset from a STEM image and a shadow image.

        Parameters
        ----------
        image : ndarray (Nx, Ny)
            The STEM image (x along axis 0), at ``calibration_scan_rotation_deg``.
        shadow : ndarray (Qx, Qy)
            The defocused CBED pattern with the shadow image, raw detector px; its size
            may differ from the image's.
        shadow_mask : ndarray of bool (Qx, Qy), optional
            Where the shadow shows the sample; default: its bright disk.

        Returns
        -------
        self

        Warns
        -----
        UserWarning
            When the match is weak (``score_ < min_score``) or ambiguous
            (``margin_ < min_margin``).

        Examples
        --------
        >>> from strainkit import simulate
        >>> sim = simulate.simulate_images(simulate.Microscope(rotation_deg=100.0, flip=False),
        ...                                image_shape=(96, 96), n_features=25, scale=1.2)
        >>> cal = RotationCalibrator(ellipse=(1.025, 1.0, 35.0)).fit(sim.haadf, sim.shadow)
        >>> round(cal.rotation_deg_, 1), round(cal.scale_, 2), cal.contrast_
        (100.0, 1.2, 'inverted')
        """
        p = self._validated()
        result = register_images(
            image,
            shadow,
            shadow_mask=shadow_mask,
            ellipse=p.ellipse,
            contrast=p.contrast,
            scale_range=p.scale_range,
            highpass_sigma=p.highpass_sigma,
        )
        self.rotation_deg_ = result.rotation_deg
        self.flip_ = result.flip
        self.scale_ = result.scale
        self.offset_ = result.affine[:, 2].copy()
        self.affine_ = result.affine
        self.score_ = result.score
        self.margin_ = result.margin
        self.rotation_std_deg_ = result.rotation_std_deg
        self.scale_std_ = result.scale_std
        self.contrast_ = result.contrast
        if result.score < p.min_score or result.margin < p.min_margin:
            warnings.warn(
                f"{_OWNER}: low match score {result.score:.2f} (min_score={p.min_score}), "
                f"margin {result.margin:.2f} over the next-best distinct match "
                f"(min_margin={p.min_margin}); check the images: do they show the same "
                "area, with visible features? If the shadow shows only a small part of the "
                "image, crop the image to about that part; give contrast= if known.",
                UserWarning,
                stacklevel=2,
            )
        return self

    @classmethod
    def from_value(
        cls, rotation_deg: float, flip: bool, *, rotation_std_deg: float = 0.0, **params
    ) -> RotationCalibrator:
        """A fitted calibrator from a known rotation (degrees) and flip.

        ``params`` are the usual parameters (e.g. ``calibration_scan_rotation_deg``).
        Attributes that only a fit measures (``scale_``, ``score_``, ...) are NaN or None.

        Examples
        --------
        >>> cal = RotationCalibrator.from_value(190.0, True)
        >>> cal.rotation_deg_, cal.flip_
        (-170.0, True)
        """
        cal = cls(**params)
        cal._validated()
        try:
            angle = float(rotation_deg)
            std = float(rotation_std_deg)
        except (TypeError, ValueError):
            raise ValueError(
                f"{_OWNER}.from_value: rotation_deg={rotation_deg!r} and rotation_std_deg="
                f"{rotation_std_deg!r} must be numbers (degrees)"
            ) from None
        if not (math.isfinite(angle) and math.isfinite(std) and std >= 0):
            raise ValueError(
                f"{_OWNER}.from_value: need a finite rotation_deg and rotation_std_deg >= 0, "
                f"got {rotation_deg!r} and {rotation_std_deg!r}"
            )
        if not isinstance(flip, bool | np.bool_):
            raise ValueError(f"{_OWNER}.from_value: flip={flip!r}: give True or False")
        nan = float("nan")
        cal.rotation_deg_ = _wrap_deg(angle)
        cal.flip_ = bool(flip)
        cal.scale_ = nan
        cal.offset_ = None
        cal.affine_ = None
        cal.score_ = nan
        cal.margin_ = nan
        cal.rotation_std_deg_ = std
        cal.scale_std_ = nan
        cal.contrast_ = None
        return cal

    @property
    def effective_rotation_deg(self) -> float:
        """φ used by :meth:`transform`: ``rotation_deg_`` for the data's scan rotation.

        Examples
        --------
        >>> cal = RotationCalibrator.from_value(10.0, False, scan_rotation_deg=5.0)
        >>> cal.effective_rotation_deg
        15.0
        """
        self._check_fitted()
        p = self._validated()
        return effective_rotation(
            self.rotation_deg_, self.flip_, p.scan_rotation_deg, p.calibration_scan_rotation_deg
        )

    def transform(self, peaks: BraggPeaks) -> BraggPeaks:
        """Turn centred peaks from the detector frame into the real-space scan frame.

        ``v_R = P⁻¹ R(−φ) v_Q`` with φ = :attr:`effective_rotation_deg`. Units (px or
        Å⁻¹) are kept; ``frame`` becomes 'real' and 'rotation' is added to
        ``calibrations``.

        Parameters
        ----------
        peaks : BraggPeaks
            Peaks in the detector frame, centred on the pattern origin (after
            ``OriginCalibrator``; ideally also ellipse-corrected).

        Returns
        -------
        BraggPeaks

        Examples
        --------
        >>> from strainkit import BraggPeaks
        >>> peaks = BraggPeaks.from_positions([np.array([[0.0, 10.0, 1.0, 1.0]])], (1, 1),
        ...                                   calibrations=("origin",))
        >>> out = RotationCalibrator.from_value(90.0, False).transform(peaks)
        >>> out.frame, out.calibrations, out.qx.round(6), out.qy.round(6)
        ('real', ('origin', 'rotation'), array([10.]), array([0.]))
        """
        self._check_fitted()
        if not isinstance(peaks, BraggPeaks):
            raise TypeError(f"{_OWNER}.transform needs BraggPeaks, got {type(peaks).__name__}")
        if peaks.frame == "real":
            raise ValueError(
                f"{_OWNER}.transform: the peaks are already in the real-space frame "
                f"(calibrations {peaks.calibrations}); the rotation is applied only once"
            )
        if not peaks.centered:
            raise ValueError(
                f"{_OWNER}.transform: the peaks are not centred on the pattern origin "
                f"(calibrations {peaks.calibrations}); apply OriginCalibrator first, e.g. "
                "peaks = OriginCalibrator().fit_transform(peaks)"
            )
        angle = self.effective_rotation_deg
        qx, qy = rotate_to_real(peaks.qx, peaks.qy, angle, self.flip_)
        metadata = dict(peaks.metadata)
        metadata["rotation"] = {"rotation_deg": angle, "flip": bool(self.flip_)}
        return peaks.with_coords(qx, qy, calibration="rotation", frame="real", metadata=metadata)
