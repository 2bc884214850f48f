"""The strained single crystal: lattice, strain field, truth and scan."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strainkit._geometry import deformation_from_strain, reciprocal_from_real
from strainkit.simulate._microscope import Microscope
from strainkit.simulate._render import _CUT
from strainkit.simulate._scans import SimulatedScan, _render_scan, _Truth
from strainkit.simulate._validate import _finite, _integer, _shape2, _streams

_DEFAULT_SPACING = 1.0 / (16 * 0.014)


@dataclass(frozen=True)
class Lattice:
    """A 2D real-space lattice: |a1| = a, |a2| = b (Å), angle gamma between them.

    ``orientation_deg`` is the angle of a1 from real-space +x toward +y. The defaults give
    a square lattice whose first-order reflections are 16 px from the origin at the
    default pixel size (0.014 Å⁻¹/px).

    Examples
    --------
    >>> lat = Lattice(a=4.0, b=4.0, orientation_deg=0.0)
    >>> lat.real
    array([[4.0...e+00, 2.4...e-16],
           [0.0...e+00, 4.0...e+00]])
    >>> lat.reciprocal @ [1, 0]
    array([ 2.5...e-01, -1.5...e-17])
    """

    a: float = _DEFAULT_SPACING
    b: float = _DEFAULT_SPACING
    gamma: float = 90.0
    orientation_deg: float = 10.0

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "a", _finite("Lattice a", self.a, low=0, low_open=True))
        put(self, "b", _finite("Lattice b", self.b, low=0, low_open=True))
        gamma = _finite(
            "Lattice gamma", self.gamma, low=0, high=180, low_open=True, high_open=True
        )
        put(self, "gamma", gamma)
        put(self, "orientation_deg", _finite("Lattice orientation_deg", self.orientation_deg))

    @property
    def real(self) -> np.ndarray:
        """A0: columns a1, a2 in the real-space frame, Å.

        Examples
        --------
        >>> Lattice(a=2.0, b=3.0, orientation_deg=0.0).real.round(12)
        array([[2., 0.],
               [0., 3.]])
        """
        o, g = np.deg2rad(self.orientation_deg), np.deg2rad(self.gamma)
        a1 = self.a * np.array([math.cos(o), math.sin(o)])
        a2 = self.b * np.array([math.cos(o + g), math.sin(o + g)])
        return np.stack([a1, a2], axis=1)

    @property
    def reciprocal(self) -> np.ndarray:
        """G0: columns g1, g2 in the real-space frame, Å⁻¹ (no factor 2π).

        Examples
        --------
        >>> Lattice(a=2.0, b=4.0, orientation_deg=0.0).reciprocal.round(12) + 0.0
        array([[0.5 , 0.  ],
               [0.  , 0.25]])
        """
        return reciprocal_from_real(self.real)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class StrainField:
    """A smooth strain and rotation map, exactly zero in a reference band of rows.

    The reference region is the rows ``rx < reference_fraction * Rx``. Outside it each
    component rises smoothly from 0 to its maximum (the value given here), with a
    different spatial pattern per component, so the components are not proportional:

    * exx: a smoothstep ramp along x, reaching its maximum on the last row;
    * eyy: the same ramp times (0.25 + 0.75 · smoothstep along y), maximum at (Rx-1, Ry-1);
    * exy: a C¹ bump (1 − r²/ρ²)² centred in the strained region, scaled so its largest
      value on the scan grid is the maximum;
    * theta: the ramp times (1 − 0.75 · smoothstep along y), maximum at (Rx-1, 0).

    The maxima are reached exactly when the scan has at least two columns. A scan with no
    row beyond the reference band (e.g. a single row) is all reference, with zero strain.

    Parameters
    ----------
    exx, eyy, exy : float
        Extreme strain components (``exy`` is the tensor component; tension positive).
    theta_deg : float
        Extreme lattice rotation, degrees.
    reference_fraction : float
        Fraction of the rows, from the first, that are unstrained; in (0, 1).

    Examples
    --------
    >>> exx, eyy, exy, theta, ref = StrainField().evaluate((8, 4))
    >>> ref[:, 0]
    array([ True,  True, False, False, False, False, False, False])
    >>> float(exx.max()), float(eyy.min()), float(exx[ref].max())
    (0.02, -0.01, 0.0)
    """

    exx: float = 0.02
    eyy: float = -0.01
    exy: float = 0.005
    theta_deg: float = 0.3
    reference_fraction: float = 0.25

    def __post_init__(self) -> None:
        for name in ("exx", "eyy", "exy", "theta_deg"):
            bound = 90.0 if name == "theta_deg" else 0.5
            value = _finite(f"StrainField {name}", getattr(self, name), low=-bound, high=bound)
            object.__setattr__(self, name, value)
        fraction = _finite(
            "StrainField reference_fraction",
            self.reference_fraction,
            low=0,
            high=1,
            low_open=True,
            high_open=True,
        )
        object.__setattr__(self, "reference_fraction", fraction)

    def evaluate(self, scan_shape) -> tuple[np.ndarray, ...]:
        """(exx, eyy, exy, theta_rad, reference_mask), each of shape ``scan_shape``.

        Examples
        --------
        >>> fields = StrainField(theta_deg=1.0).evaluate((6, 3))
        >>> [f.shape for f in fields][0], round(float(np.rad2deg(fields[3].max())), 12)
        ((6, 3), 1.0)
        """
        rx, ry = _shape2("scan_shape", scan_shape)
        n_ref = math.ceil(self.reference_fraction * rx)
        if n_ref >= rx:
            # Too few rows for a strained region (e.g. a single row): all reference.
            zero = np.zeros((rx, ry))
            return zero, zero.copy(), zero.copy(), zero.copy(), np.ones((rx, ry), dtype=bool)
        x, y = np.meshgrid(np.arange(rx), np.arange(ry), indexing="ij")
        # u is 0 on every reference row and 1 on the last row; v runs 0..1 along y.
        u = np.clip((x - (n_ref - 1)) / (rx - n_ref), 0.0, 1.0)
        v = y / (ry - 1) if ry > 1 else np.zeros_like(u)
        ramp = _smoothstep(u)
        r2 = ((u - 0.65) ** 2 + (v - 0.35) ** 2) / 0.6**2
        bump = np.where(r2 < 1.0, (1.0 - r2) ** 2, 0.0)
        return (
            self.exx * ramp,
            self.eyy * ramp * (0.25 + 0.75 * _smoothstep(v)),
            self.exy * bump / bump.max(),
            np.deg2rad(self.theta_deg) * ramp * (1.0 - 0.75 * _smoothstep(v)),
            x < n_ref,
        )


@dataclass(frozen=True, repr=False, eq=False)
class CrystalTruth(_Truth):
    """Ground truth of a single-crystal scan. Raw px unless stated; n = number of disks.

    Attributes
    ----------
    origins : (Rx, Ry, 2)
        Raw-detector position of the (0, 0) beam.
    hk : (n, 2) int
        Reflection indices; row 0 is the central beam (0, 0).
    centers : (Rx, Ry, n, 2)
        Raw-detector disk centres, ``origin + D @ (h g1_px + k g2_px)``.
    amplitudes : (Rx, Ry, n)
        Flat-top amplitudes, relative units (the envelope times the modulation).
    envelope : (n,)
        Mean amplitude of each reflection (no modulation).
    inside : (Rx, Ry, n) bool
        Whether the disk lies wholly on the detector.
    F : (Rx, Ry, 2, 2)
        Deformation gradient.
    exx, eyy, exy, theta : (Rx, Ry)
        Strain components and rotation (radians); see :attr:`theta_deg`.
    reference_mask : (Rx, Ry) bool
        The unstrained reference region.
    A0, G0 : (2, 2)
        Reference real lattice (Å) and reciprocal lattice (Å⁻¹), columns, real-space frame.
    g1, g2 : (Rx, Ry, 2)
        Local reciprocal lattice vectors in the real-space frame, Å⁻¹.
    g1_px, g2_px : (Rx, Ry, 2)
        The same on the corrected detector, px: ``R(φ) P g / pixel_size``.
    counts_per_amplitude : (Rx, Ry)
        Expected counts of a whole disk of unit amplitude (before noise).
    pixel_size, ellipse, rotation_deg, flip
        The microscope's calibration knobs.

    Examples
    --------
    >>> t = simulate_crystal(scan_shape=(2, 2)).truth
    >>> t.centers.shape, t.F.shape
    ((2, 2, 49, 2), (2, 2, 2, 2))
    """

    origins: np.ndarray
    hk: np.ndarray
    centers: np.ndarray
    amplitudes: np.ndarray
    envelope: np.ndarray
    inside: np.ndarray
    F: np.ndarray
    exx: np.ndarray
    eyy: np.ndarray
    exy: np.ndarray
    theta: np.ndarray
    reference_mask: np.ndarray
    A0: np.ndarray
    G0: np.ndarray
    g1: np.ndarray
    g2: np.ndarray
    g1_px: np.ndarray
    g2_px: np.ndarray
    counts_per_amplitude: np.ndarray
    pixel_size: float
    ellipse: tuple[float, float]
    rotation_deg: float
    flip: bool

    @property
    def theta_deg(self) -> np.ndarray:
        """Lattice rotation in degrees.

        Examples
        --------
        >>> float(simulate_crystal(scan_shape=(4, 2)).truth.theta_deg.max())
        0.3
        """
        return np.rad2deg(self.theta)

    @property
    def order(self) -> np.ndarray:
        """Order max(|h|, |k|) of each reflection, shape (n,).

        Examples
        --------
        >>> np.bincount(simulate_crystal(scan_shape=(2, 2)).truth.order)
        array([ 1,  8, 16, 24])
        """
        return np.abs(self.hk).max(axis=1)

    @property
    def disk_counts(self) -> np.ndarray:
        """Expected counts of each disk if wholly on the detector, (Rx, Ry, n).

        Examples
        --------
        >>> t = simulate_crystal(scan_shape=(2, 2), modulation=0.0).truth
        >>> bool(9000 < t.disk_counts[0, 0, 1] < 15000)
        True
        """
        return self.amplitudes * self.counts_per_amplitude[..., None]


def _reflections(max_order: int) -> np.ndarray:
    """All (h, k) with max(|h|, |k|) <= max_order, central beam first, by order then h, k."""
    n = np.arange(-max_order, max_order + 1)
    hk = np.stack(np.meshgrid(n, n, indexing="ij"), -1).reshape(-1, 2)
    order = np.abs(hk).max(axis=1)
    return hk[np.lexsort((hk[:, 1], hk[:, 0], order))]


def _inside(m: Microscope, centers: np.ndarray) -> np.ndarray:
    margin = m.probe_radius + _CUT * m.edge_width
    shape = np.asarray(m.detector_shape)
    return np.all((centers - margin >= -0.5) & (centers + margin <= shape - 0.5), axis=-1)


def simulate_crystal(
    microscope: Microscope = Microscope(),  # noqa: B008 (a frozen dataclass, immutable)
    scan_shape=(64, 64),
    lattice: Lattice = Lattice(),
    strain: StrainField = StrainField(),
    max_order: int = 3,
    intensity_sigma: float = 21.0,
    central_beam: float = 1.0,
    modulation: float = 0.2,
    seed: int = 0,
) -> SimulatedScan:
    """A strained single-crystal scan: a square grid of Bragg disks that follows F(r).

    At each position the local reciprocal lattice is ``G = F⁻ᵀ G0`` (real-space frame),
    on the corrected detector ``g_px = R(φ) P G / pixel_size`` and the raw centre of
    reflection (h, k) is ``origin + D @ (h g1_px + k g2_px)``. The origin follows the
    descan (plus ``microscope.descan_jitter``).

    Parameters
    ----------
    microscope : Microscope
        The instrument.
    scan_shape : (int, int)
        Scan positions (Rx, Ry).
    lattice : Lattice
        The unstrained real-space lattice.
    strain : StrainField
        The strain and rotation map.
    max_order : int
        Reflections with max(|h|, |k|) <= max_order, (2 max_order + 1)² disks.
    intensity_sigma : float
        Gaussian envelope (px, corrected frame) of the amplitudes,
        ``exp(-|g_px|² / (2 sigma²))`` with the reference |g|.
    central_beam : float
        Amplitude of the (0, 0) disk.
    modulation : float
        Random amplitude factor ``1 + modulation · U(-1, 1)`` per position and reflection
        (not on the central beam); in [0, 1].
    seed : int
        Random seed.

    Returns
    -------
    SimulatedScan
        With :class:`CrystalTruth`.

    Examples
    --------
    >>> sim = simulate_crystal(Microscope(dose=None), scan_shape=(4, 2), modulation=0.0)
    >>> t = sim.truth
    >>> float(t.exx[t.reference_mask].max()), float(t.exx.max())
    (0.0, 0.02)
    """
    scan_shape = _shape2("scan_shape", scan_shape)
    max_order = _integer("max_order", max_order, 1)
    sigma = _finite("intensity_sigma", intensity_sigma, low=0, low_open=True)
    central_beam = _finite("central_beam", central_beam, low=0)
    modulation = _finite("modulation", modulation, low=0, high=1)
    seed_jitter, seed_amp, seed_noise = _streams(seed, "crystal", 3)
    m = microscope
    origins = m.origins(scan_shape, m.descan_jitter, np.random.default_rng(seed_jitter))

    exx, eyy, exy, theta, reference = strain.evaluate(scan_shape)
    f = deformation_from_strain(exx, eyy, exy, theta)
    g0 = lattice.reciprocal
    g = np.swapaxes(np.linalg.inv(f), -1, -2) @ g0  # G = F⁻ᵀ G0
    to_px = m.real_to_detector / m.pixel_size
    g_px = to_px @ g
    hk = _reflections(max_order)
    centers = origins[..., None, :] + np.einsum("xyij,nj->xyni", m.distortion @ g_px, hk)
    envelope = np.exp(-np.sum((hk @ (to_px @ g0).T) ** 2, axis=1) / (2 * sigma**2))
    envelope[0] = central_beam
    factor = 1.0 + modulation * np.random.default_rng(seed_amp).uniform(-1, 1, centers.shape[:3])
    factor[..., 0] = 1.0
    amplitudes = envelope * factor

    n_pos, n = scan_shape[0] * scan_shape[1], len(hk)
    data, per_amp = _render_scan(
        m,
        scan_shape,
        np.ascontiguousarray(centers.reshape(-1, 2)),
        np.ascontiguousarray(amplitudes.reshape(-1)),
        np.arange(n_pos + 1, dtype=np.int64) * n,
        origins,
        m.background_fraction,
        seed_noise,
    )
    truth = CrystalTruth(
        origins=origins,
        hk=hk,
        centers=centers,
        amplitudes=amplitudes,
        envelope=envelope,
        inside=_inside(m, centers),
        F=f,
        exx=exx,
        eyy=eyy,
        exy=exy,
        theta=theta,
        reference_mask=reference,
        A0=lattice.real,
        G0=g0,
        g1=g[..., 0],
        g2=g[..., 1],
        g1_px=g_px[..., 0],
        g2_px=g_px[..., 1],
        counts_per_amplitude=per_amp,
        pixel_size=m.pixel_size,
        ellipse=m.ellipse,
        rotation_deg=m.rotation_deg,
        flip=m.flip,
    )
    return SimulatedScan(data, truth, m)
