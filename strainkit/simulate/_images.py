"""The HAADF image and the defocused CBED shadow image of the same area."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from strainkit.simulate._microscope import Microscope
from strainkit.simulate._scans import _readonly, _Truth
from strainkit.simulate._validate import _finite, _integer, _pair, _shape2, _streams


@dataclass(frozen=True, repr=False, eq=False)
class ImageTruth(_Truth):
    """Ground truth of a HAADF image and its defocused CBED shadow image.

    A HAADF pixel position ``r`` appears in the shadow image at
    ``q = c_Q + M (r − c_R)`` with ``M = D_s · scale · R(φ) · P`` (``D_s`` the detector
    distortion, or the identity when the shadow is undistorted); ``affine = [M | t]``
    with ``t = c_Q − M c_R``.

    Attributes
    ----------
    rotation_deg, flip, scale : float, bool, float
        φ, P and the shadow px per HAADF px.
    c_R, c_Q : (2,)
        Corresponding points in the HAADF and the shadow image, px.
    affine : (2, 3)
        The map HAADF px -> shadow px, see :meth:`real_to_shadow`.
    centers_haadf, centers_shadow : (n, 2)
        Feature centres in each image, px.
    sigmas : (n,)
        Gaussian widths of the features in the HAADF image, px.
    amplitudes : (n,)
        Peak heights of the features in the HAADF image (before the background).
    visible : (n,) bool
        Feature lies inside the bright shadow disk, clear of its edge.
    shadow_center, shadow_radius, shadow_edge : (2,), float, float
        The bright disk: centre (px), radius in the corrected frame and edge width (px).
    shadow_disk : (Qx, Qy) float32
        The noise-free shadow image without features (same units as the shadow).
    ellipse : (float, float)
        The distortion used in the shadow ((1, 0) when undistorted).

    Examples
    --------
    >>> t = simulate_images(n_features=5, image_shape=(64, 64), dose=None).truth
    >>> np.allclose(t.real_to_shadow(t.centers_haadf), t.centers_shadow)
    True
    """

    rotation_deg: float
    flip: bool
    scale: float
    c_R: np.ndarray
    c_Q: np.ndarray
    affine: np.ndarray
    centers_haadf: np.ndarray
    centers_shadow: np.ndarray
    sigmas: np.ndarray
    amplitudes: np.ndarray
    visible: np.ndarray
    shadow_center: np.ndarray
    shadow_radius: float
    shadow_edge: float
    shadow_disk: np.ndarray
    ellipse: tuple[float, float]

    def real_to_shadow(self, points) -> np.ndarray:
        """Map HAADF pixel positions (..., 2) to shadow-image positions (..., 2).

        Examples
        --------
        >>> t = simulate_images(n_features=3, image_shape=(48, 48), dose=None).truth
        >>> np.allclose(t.real_to_shadow(t.c_R), t.c_Q)
        True
        """
        points = np.asarray(points, dtype=float)
        return points @ self.affine[:, :2].T + self.affine[:, 2]


@dataclass(frozen=True, repr=False, eq=False)
class SimulatedImages:
    """A simulated HAADF image, its defocused shadow image and the truth linking them.

    Examples
    --------
    >>> simulate_images(image_shape=(48, 48), n_features=2, dose=None)
    SimulatedImages(haadf=float32[48, 48], shadow=float32[128, 128], truth=ImageTruth)
    """

    haadf: np.ndarray
    shadow: np.ndarray
    truth: ImageTruth
    microscope: Microscope

    def __post_init__(self) -> None:
        _readonly(self.haadf)
        _readonly(self.shadow)

    def __repr__(self) -> str:
        h, s = self.haadf, self.shadow
        return (
            f"SimulatedImages(haadf={h.dtype}{list(h.shape)}, shadow={s.dtype}{list(s.shape)}, "
            "truth=ImageTruth)"
        )


def _place_features(rng, shape, n, margin, min_separation, max_tries=2000):
    """Random sequential placement with a minimum separation, away from the edges."""
    low, high = margin, np.asarray(shape) - 1.0 - margin
    if np.any(high <= low):
        raise ValueError(
            f"image_shape={shape!r} is too small for features {margin:.1f} px from the edges"
        )
    placed = np.empty((0, 2))
    for _ in range(max_tries):
        if len(placed) == n:
            return placed
        p = rng.uniform(low, high)
        if not len(placed) or np.min(np.hypot(*(placed - p).T)) >= min_separation:
            placed = np.vstack([placed, p])
    raise ValueError(
        f"could not place n_features={n} features {min_separation:.1f} px apart in an image "
        f"of shape {tuple(shape)}; lower n_features or min_separation, or enlarge image_shape"
    )


def _gaussians(shape, centers, inverse_cov, amplitudes) -> np.ndarray:
    """Sum of (elliptical) Gaussians a·exp(−½ dᵀ C⁻¹ d), evaluated at pixel centres."""
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(float)
    image = np.zeros(shape)
    for c, inv, a in zip(centers, inverse_cov, amplitudes):  # a few dozen features at most
        d = grid - c
        image += a * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    return image


def _haadf_image(shape, centers, sigmas, amplitudes, phases) -> np.ndarray:
    """Round Gaussian blobs on a weak (~0.1) low-frequency background."""
    x, y = np.meshgrid(*map(np.arange, shape), indexing="ij")
    wave_x = np.sin(2 * math.pi * x / (1.7 * shape[0]) + phases[0])
    wave_y = np.sin(2 * math.pi * y / (1.3 * shape[1]) + phases[1])
    inverse_cov = np.eye(2)[None] / sigmas[:, None, None] ** 2
    return 0.1 * (1 + 0.5 * wave_x * wave_y) + _gaussians(shape, centers, inverse_cov, amplitudes)


def _shadow_disk(shape, center, radius, edge, distortion) -> np.ndarray:
    """Soft-edged bright disk, circular in the corrected frame (flat top 1)."""
    q = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1) - center
    rho = np.hypot(*np.moveaxis(q @ np.linalg.inv(distortion).T, -1, 0))
    return 0.5 * special.erfc((rho - radius) / (math.sqrt(2) * edge))


def simulate_images(
    microscope: Microscope = Microscope(),  # noqa: B008 (a frozen dataclass, immutable)
    image_shape=(128, 128),
    shadow_shape=None,
    scale: float = 0.8,
    n_features: int = 40,
    shadow_radius: float | None = None,
    contrast: float = 0.5,
    dose: float | None = 1000.0,
    haadf_noise: float = 0.02,
    ellipse_in_shadow: bool = True,
    seed: int = 0,
    *,
    feature_sigma=(1.5, 3.0),
    min_separation: float | None = None,
    shadow_edge: float = 1.5,
) -> SimulatedImages:
    """A HAADF image of nanoparticles and the defocused CBED shadow image of the same area.

    HAADF: ``n_features`` Gaussian blobs (sigma uniform in ``feature_sigma`` px, peak
    U(0.5, 1)) at least ``min_separation`` px apart (default 4 · max sigma) and
    3 · max sigma + 2 px from the edges, on a weak low-frequency background (~0.1).
    Shadow: a bright soft-edged disk (radius ``shadow_radius`` in the corrected frame,
    default 0.42 · min(shadow_shape); distorted like the detector when
    ``ellipse_in_shadow``) times ``1 − contrast · Σ features``, each feature mapped by
    ``q = c_Q + M (r − c_R)``, ``M = D_s · scale · R(φ) P``, its covariance by
    ``M Σ Mᵀ`` (analytic elliptical Gaussians at exact positions; peaks normalised to
    the brightest feature). Rotation and flip come from ``microscope``.

    Noise: with a ``dose`` (counts per px of the bright disk) the shadow is Poisson and
    the HAADF gets Gaussian noise of ``haadf_noise`` (relative to a feature peak of 1);
    ``dose=None`` gives both noise-free. Both images are float32.

    Examples
    --------
    >>> sim = simulate_images(Microscope(rotation_deg=30.0, flip=False), n_features=4,
    ...                       image_shape=(64, 64), dose=None)
    >>> sim.truth.rotation_deg, sim.truth.flip
    (30.0, False)
    """
    m = microscope
    image_shape = _shape2("image_shape", image_shape, 8)
    shadow_shape = (
        m.detector_shape if shadow_shape is None else _shape2("shadow_shape", shadow_shape, 8)
    )
    scale = _finite("scale", scale, low=0, low_open=True)
    n_features = _integer("n_features", n_features, 1)
    if shadow_radius is None:
        shadow_radius = 0.42 * min(shadow_shape)
    shadow_radius = _finite("shadow_radius", shadow_radius, low=0, low_open=True)
    contrast = _finite("contrast", contrast, low=0, high=1)
    if dose is not None:
        dose = _finite("dose", dose, low=0, low_open=True)
    haadf_noise = _finite("haadf_noise", haadf_noise, low=0)
    sigma_lo, sigma_hi = _pair("feature_sigma", feature_sigma)
    if not 0 < sigma_lo <= sigma_hi:
        raise ValueError(f"feature_sigma={feature_sigma!r}: give (low, high) with 0 < low <= high")
    if min_separation is None:
        min_separation = 4.0 * sigma_hi
    min_separation = _finite("min_separation", min_separation, low=0)
    shadow_edge = _finite("shadow_edge", shadow_edge, low=0, low_open=True)
    seed_features, seed_noise = _streams(seed, "images", 2)
    rng = np.random.default_rng(seed_features)

    centers = _place_features(rng, image_shape, n_features, 3 * sigma_hi + 2, min_separation)
    sigmas = rng.uniform(sigma_lo, sigma_hi, n_features)
    amplitudes = rng.uniform(0.5, 1.0, n_features)
    phases = rng.uniform(0, 2 * math.pi, 2)
    c_r = (np.asarray(image_shape) - 1) / 2 + rng.uniform(-2, 2, 2)
    disk_center = (np.asarray(shadow_shape) - 1) / 2 + np.asarray(m.descan_offset)
    c_q = disk_center + rng.uniform(-2, 2, 2)
    haadf = _haadf_image(image_shape, centers, sigmas, amplitudes, phases)

    d_s = m.distortion if ellipse_in_shadow else np.eye(2)
    mapping = d_s @ (scale * m.real_to_detector)
    offset = c_q - mapping @ c_r
    centers_q = centers @ mapping.T + offset
    inverse_cov = np.linalg.inv(mapping @ mapping.T)[None] / sigmas[:, None, None] ** 2
    absorption = _gaussians(shadow_shape, centers_q, inverse_cov, amplitudes / amplitudes.max())
    disk = _shadow_disk(shadow_shape, disk_center, shadow_radius, shadow_edge, d_s)
    disk *= 1.0 if dose is None else dose
    shadow = disk * np.clip(1.0 - contrast * absorption, 0.0, None)

    # Visible: the feature (out to 4 sigma) lies on the flat top of the disk (4 edge widths in).
    distance = np.hypot(*((centers_q - disk_center) @ np.linalg.inv(d_s).T).T)
    visible = distance + 4 * scale * sigmas + 4 * shadow_edge <= shadow_radius
    if dose is not None:
        noise = np.random.default_rng(seed_noise)
        shadow = noise.poisson(shadow).astype(float)
        haadf = haadf + haadf_noise * noise.standard_normal(haadf.shape)
    truth = ImageTruth(
        rotation_deg=m.rotation_deg,
        flip=m.flip,
        scale=scale,
        c_R=c_r,
        c_Q=c_q,
        affine=np.hstack([mapping, offset[:, None]]),
        centers_haadf=centers,
        centers_shadow=centers_q,
        sigmas=sigmas,
        amplitudes=amplitudes,
        visible=visible,
        shadow_center=disk_center,
        shadow_radius=shadow_radius,
        shadow_edge=shadow_edge,
        shadow_disk=disk.astype(np.float32),
        ellipse=m.ellipse if ellipse_in_shadow else (1.0, 0.0),
    )
    return SimulatedImages(haadf.astype(np.float32), shadow.astype(np.float32), truth, m)
