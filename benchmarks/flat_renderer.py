"""Flat-disk 4D-STEM renderer with exact truth and its own Cramér–Rao bound.

Written from the physics, independently of strainkit (it imports only numpy, scipy and
h5py), to test strainkit's disk finder and strain pipeline on data it did not draw.

Run: ``python benchmarks/flat_renderer.py flat_square flat_hex flat_oblique [--seed N]
[--out DIR]`` writes ``{case}_seed{seed}.h5`` (default ``benchmarks/.cache/flat/``);
``python benchmarks/flat_renderer.py --selftest`` runs the checks (centroid, analytic
against finite-difference Fisher information, Monte-Carlo ML against the bound).

Conventions
-----------
* Pattern pixel ``P[i, j]`` is centred at detector coordinate ``q = (qx, qy) = (i, j)`` px.
  The model is point-sampled at pixel centres: no pixel integration, no PSF.
* Vectors are columns in the formulas and rows in arrays. A basis array ``B`` (2, 2) holds
  two reciprocal vectors as rows, ``B[0] = b1 = (x, y)``, ``B[1] = b2``.
* The real-space deformation ``F`` (undistorted frame) maps lattice vectors ``a -> F a``,
  so reciprocal vectors map ``g -> F^-T g``; for row arrays ``G = g0 F^-1``. It is built
  from the strain as ``F = I + [[exx, exy - theta], [exy + theta, eyy]]``, so that
  ``eps = sym(F) - I`` and ``theta = (F[1, 0] - F[0, 1]) / 2`` (rad, x towards y) exactly.
* Elliptic distortion ``E``, a symmetric stretch of ``ratio`` along ``angle``: the detector
  shows at ``q`` the undistorted pattern at ``q' = o + E^-1 (q - o)``. A reflection at
  ``o + g`` in the undistorted pattern is seen at ``o + E g``. The detector-frame basis is
  ``D_i = E G_i`` (rows ``D = G E^T = g0 F^-1 E^T``) and the disk centres are
  ``c_hk = o + h D1 + k D2``.
* Detector-frame strain: with the unstrained detector basis ``D0 = g0 E^T`` fixed,
  ``D_i = F_rel^-T D0_i`` defines ``F_rel = D^-1 D0`` (row arrays), equal to ``E^-T F E^T``,
  and ``(exx, eyy, exy, theta)`` of ``F_rel`` as above. This is what ``truth/crb_strain``
  bounds and ``truth/strain_detector`` holds.

Model (intensity per incident electron at pixel q, position r)::

    M(q) = s * [ sum_hk A_hk P(|E^-1 (q - c_hk)|) + B0 (1 + |E^-1 (q - o)|^2 / q0^2)^(-p/2) ]
    P(rho) = erfc((rho - R) / (sqrt(2) w)) / 2

with ``s`` one constant per file making the scan-averaged pattern sum 1. Expected counts
are ``dose * M``; ``counts`` are Poisson draws of them, clipped to 65535 for uint16.

File layout (HDF5)
------------------
``data`` float32 (Rx, Ry, Qx, Qy): ``M``; ``counts`` uint16 (attr ``dose``);
``truth/g`` = ``truth/g_point`` (Rx, Ry, 2, 2): ``D``; ``truth/origin`` (Rx, Ry, 2);
``truth/g0`` (2, 2): ``D0``; ``truth/hk`` (K, 2); ``truth/centres`` (Rx, Ry, K, 2);
``truth/F`` (Rx, Ry, 2, 2); ``truth/ellipse``: ``E``; ``truth/crb_lattice``
(Rx, Ry, 6, 6): covariance bound of ``(ox, oy, D1x, D1y, D2x, D2y)``;
``truth/crb_strain`` (Rx, Ry, 4): std bound of ``(exx, eyy, exy, theta)`` of ``F_rel``
(both at attr ``crb_dose``, also a root attr; every position, attr ``crb_step`` = 1).
Extras: ``truth/amplitudes`` (K,) ``A_hk``, ``truth/F_detector`` (``F_rel``),
``truth/strain_detector`` (Rx, Ry, 4). The bound treats ``o`` and ``D`` as unknown, every
``A_hk`` as a nuisance parameter (Schur complement), and ``B0``, ``q0``, ``p``, ``R``, ``w``,
``E`` as known; the background moves with ``o`` and so carries a little origin information.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
from scipy.optimize import minimize
from scipy.special import erfc

DEFAULT_OUT = Path(__file__).resolve().parent / ".cache" / "flat"
N_LATTICE = 6  # (ox, oy, D1x, D1y, D2x, D2y)
STRAIN_NAMES = ("exx", "eyy", "exy", "theta")


@dataclass(frozen=True)
class CaseSpec:
    """Parameters of one benchmark case (lengths in detector px, angles in degrees).

    Attributes
    ----------
    name : str
        Case name.
    scan : tuple of int
        Scan shape (Rx, Ry).
    g_len : tuple of float
        Undistorted unstrained lengths of g1 and g2.
    angle : float
        Angle from g1 to g2.
    phi0 : float
        Direction of g1 from the detector x axis.
    detector : tuple of int
        Pattern shape (Qx, Qy).
    radius, edge : float
        Disk radius R and erfc edge width w.
    dose : float
        Expected electrons per pattern.
    amp_sigma, amp_jitter : float
        Amplitudes ``exp(-|g|^2 / amp_sigma^2) (1 + amp_jitter N(0, 1))``.
    bg_rel, bg_q0, bg_power : float
        Background ``B0`` relative to the mean first-order amplitude, ``q0`` and ``p``.
    ellipse_ratio, ellipse_angle : float
        Stretch ratio of ``E`` and the direction it stretches.
    strain_peak : float
        Scale of the strain components (about their peak magnitude).
    descan_px : float
        Scale of the origin's excursion over the scan.
    hk_max : int
        Reflections ``|h|, |k| <= hk_max`` are candidates.
    """

    name: str
    scan: tuple[int, int] = (32, 32)
    g_len: tuple[float, float] = (20.0, 20.0)
    angle: float = 90.0
    phi0: float = 7.0
    detector: tuple[int, int] = (128, 128)
    radius: float = 6.0
    edge: float = 0.6
    dose: float = 2e5
    amp_sigma: float = 40.0
    amp_jitter: float = 0.03
    bg_rel: float = 0.05
    bg_q0: float = 8.0
    bg_power: float = 2.0
    ellipse_ratio: float = 1.025
    ellipse_angle: float = 30.0
    strain_peak: float = 0.01
    descan_px: float = 2.0
    hk_max: int = 3


CASES = {
    "flat_square": CaseSpec("flat_square", g_len=(20.0, 20.0), angle=90.0, phi0=7.0),
    "flat_hex": CaseSpec("flat_hex", g_len=(20.0, 20.0), angle=60.0, phi0=13.0),
    "flat_oblique": CaseSpec("flat_oblique", g_len=(18.0, 22.0), angle=75.0, phi0=-11.0),
}


@dataclass(frozen=True, eq=False)
class Optics:
    """Everything that forms a pattern except the lattice, origin and amplitudes.

    Attributes
    ----------
    shape : tuple of int
        Pattern shape (Qx, Qy).
    radius, edge : float
        Disk radius R and erfc edge width w, px (undistorted frame).
    ellipse : ndarray, shape (2, 2)
        Distortion ``E``.
    bg_level, bg_q0, bg_power : float
        Background ``B0``, ``q0`` (px) and ``p``; ``bg_level = 0`` for none.
    """

    shape: tuple[int, int] = (128, 128)
    radius: float = 6.0
    edge: float = 0.6
    ellipse: np.ndarray = field(default_factory=lambda: np.eye(2))
    bg_level: float = 0.0
    bg_q0: float = 8.0
    bg_power: float = 2.0

    @property
    def half_window(self) -> int:
        """Half-width of the square window rendered around a disk, px (tails < 1e-9)."""
        stretch = np.linalg.norm(self.ellipse, 2)
        return int(np.ceil(stretch * (self.radius + 7.0 * self.edge)))

    @property
    def size(self) -> int:
        """Number of detector pixels."""
        return self.shape[0] * self.shape[1]


# ---------------------------------------------------------------------------- geometry


def rotation(angle: float) -> np.ndarray:
    """Counter-clockwise rotation matrix of ``angle`` degrees."""
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    return np.array([[c, -s], [s, c]])


def ellipse_matrix(ratio: float, angle: float) -> np.ndarray:
    """Symmetric stretch ``E`` by ``ratio`` along direction ``angle`` (deg), 1 across it."""
    rot = rotation(angle)
    return rot @ np.diag([ratio, 1.0]) @ rot.T


def unstrained_basis(spec: CaseSpec) -> np.ndarray:
    """Undistorted unstrained reciprocal basis ``g0`` (rows g1, g2), px."""
    dirs = np.deg2rad([spec.phi0, spec.phi0 + spec.angle])
    return np.asarray(spec.g_len)[:, None] * np.stack([np.cos(dirs), np.sin(dirs)], 1)


def strain_field(scan: tuple[int, int], peak: float) -> np.ndarray:
    """Smooth strain ``(exx, eyy, exy, theta)`` over the scan, shape (Rx, Ry, 4).

    Rows ``rx < Rx / 4`` (and the first row after them) are exactly unstrained; below, a
    smoothstep switches on a Gaussian ``exx``, a ramp in ``eyy``, a sine in ``exy`` and a
    Gaussian plus a ramp in ``theta``, each peaking at about ``peak``.

    Parameters
    ----------
    scan : tuple of int
        Scan shape (Rx, Ry).
    peak : float
        Strain scale.

    Returns
    -------
    ndarray
        Strain components, last axis ``(exx, eyy, exy, theta)``.
    """
    rx, ry = np.meshgrid(np.arange(scan[0]), np.arange(scan[1]), indexing="ij")
    start = scan[0] / 4.0
    t = np.clip((rx - np.ceil(start)) / max(scan[0] - 1 - np.ceil(start), 1), 0.0, 1.0)
    v = ry / max(scan[1] - 1, 1)
    ramp = np.clip(t / 0.35, 0.0, 1.0)
    on = ramp**2 * (3.0 - 2.0 * ramp)
    on[rx < start] = 0.0

    def bump(t0, v0, width):
        return np.exp(-((t - t0) ** 2 + (v - v0) ** 2) / (2.0 * width**2))

    exx = peak * bump(0.6, 0.3, 0.2)
    eyy = 0.8 * peak * (2.0 * v - 1.0)
    exy = 0.6 * peak * np.sin(2.0 * np.pi * (v + 0.5 * t))
    theta = -peak * bump(0.8, 0.7, 0.2) + 0.3 * peak * t
    return np.stack([exx, eyy, exy, theta], -1) * on[..., None]


def deformation(strain: np.ndarray) -> np.ndarray:
    """``F = I + [[exx, exy - theta], [exy + theta, eyy]]`` from (..., 4) strain."""
    exx, eyy, exy, theta = np.moveaxis(strain, -1, 0)
    f = np.empty((*strain.shape[:-1], 2, 2))
    f[..., 0, 0] = 1.0 + exx
    f[..., 1, 1] = 1.0 + eyy
    f[..., 0, 1] = exy - theta
    f[..., 1, 0] = exy + theta
    return f


def strain_of(f: np.ndarray) -> np.ndarray:
    """``(exx, eyy, exy, theta)`` of deformations ``f`` (..., 2, 2): inverse of
    :func:`deformation`."""
    return np.stack(
        [
            f[..., 0, 0] - 1.0,
            f[..., 1, 1] - 1.0,
            0.5 * (f[..., 0, 1] + f[..., 1, 0]),
            0.5 * (f[..., 1, 0] - f[..., 0, 1]),
        ],
        -1,
    )


def strain_from_basis(basis: np.ndarray, basis0: np.ndarray) -> np.ndarray:
    """Strain of ``F_rel = D^-1 D0`` (row bases), i.e. ``D_i = F_rel^-T D0_i``.

    Parameters
    ----------
    basis : ndarray, shape (..., 2, 2)
        Local basis ``D`` (rows).
    basis0 : ndarray, shape (2, 2)
        Reference basis ``D0`` (rows).

    Returns
    -------
    ndarray, shape (..., 4)
        ``(exx, eyy, exy, theta)``.
    """
    return strain_of(np.linalg.solve(basis, np.broadcast_to(basis0, basis.shape)))


def descan(scan: tuple[int, int], shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth known origin ``o`` over the scan (ramps, a sine, a cross term), (Rx, Ry, 2)."""
    rx, ry = np.meshgrid(np.arange(scan[0]), np.arange(scan[1]), indexing="ij")
    u = rx / max(scan[0] - 1, 1) - 0.5
    v = ry / max(scan[1] - 1, 1) - 0.5
    ox = shape[0] / 2 - 0.37 + scale * (0.9 * u + 0.2 * np.sin(2.0 * np.pi * v))
    oy = shape[1] / 2 + 0.21 + scale * (-0.6 * v + 1.2 * u * v + 0.15 * np.cos(np.pi * u))
    return np.stack([ox, oy], -1)


def candidate_hk(hk_max: int) -> np.ndarray:
    """All ``(h, k)`` with ``|h|, |k| <= hk_max``, shape (n, 2)."""
    r = np.arange(-hk_max, hk_max + 1)
    return np.stack(np.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)


def select_reflections(
    origin: np.ndarray, basis: np.ndarray, hk_max: int, optics: Optics
) -> np.ndarray:
    """Reflections whose disk is wholly on the detector at every scan position.

    A disk qualifies when its centre stays ``>= R ||E|| + 3`` px from every detector edge
    (pixel centres 0 and Q - 1) over the whole scan.

    Parameters
    ----------
    origin : ndarray, shape (Rx, Ry, 2)
    basis : ndarray, shape (Rx, Ry, 2, 2)
        Detector-frame bases ``D``.
    hk_max : int
    optics : Optics

    Returns
    -------
    ndarray of int, shape (K, 2)
    """
    hk = candidate_hk(hk_max)
    centres = origin[..., None, :] + hk @ basis
    margin = optics.radius * np.linalg.norm(optics.ellipse, 2) + 3.0
    top = np.asarray(optics.shape) - 1.0 - margin
    ok = ((centres >= margin) & (centres <= top)).all(axis=(0, 1, 3))
    return hk[ok]


def disk_amplitudes(
    hk: np.ndarray, g0: np.ndarray, sigma: float, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """``A_hk = exp(-|h g1 + k g2|^2 / sigma^2) (1 + jitter N(0, 1))`` (undistorted g0)."""
    g2 = ((hk @ g0) ** 2).sum(-1)
    amps = np.exp(-g2 / sigma**2) * (1.0 + jitter * rng.standard_normal(len(hk)))
    centre = np.flatnonzero((hk == 0).all(1))
    others = np.delete(amps, centre)
    if centre.size and others.size and amps[centre[0]] <= others.max():
        raise ValueError("the central disk must be the brightest")
    return amps


# ---------------------------------------------------------------------------- rendering


def disk_profile(rho: np.ndarray, radius: float, edge: float) -> np.ndarray:
    """Flat-top profile ``erfc((rho - R) / (sqrt(2) w)) / 2``."""
    return 0.5 * erfc((rho - radius) / (np.sqrt(2.0) * edge))


def disk_slope(rho: np.ndarray, radius: float, edge: float) -> np.ndarray:
    """``d P / d rho = -exp(-(rho - R)^2 / (2 w^2)) / (sqrt(2 pi) w)``."""
    return -np.exp(-0.5 * ((rho - radius) / edge) ** 2) / (np.sqrt(2.0 * np.pi) * edge)


def disk_windows(centres: np.ndarray, optics: Optics):
    """Square pixel windows around disk centres.

    Parameters
    ----------
    centres : ndarray, shape (K, 2)
    optics : Optics

    Returns
    -------
    q : ndarray, shape (K, W, W, 2)
        Pixel coordinates.
    flat : ndarray of int, shape (K, W, W)
        Flat pixel indices (0 where outside).
    inside : ndarray of bool, shape (K, W, W)
        Pixel lies on the detector.
    """
    offsets = np.arange(-optics.half_window, optics.half_window + 1)
    base = np.rint(centres).astype(int)
    ix = base[:, 0, None, None] + offsets[None, :, None]
    iy = base[:, 1, None, None] + offsets[None, None, :]
    ix, iy = np.broadcast_arrays(ix, iy)
    nx, ny = optics.shape
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    flat = np.where(inside, ix * ny + iy, 0)
    return np.stack([ix, iy], -1).astype(float), flat, inside


def disk_terms(centres: np.ndarray, optics: Optics, gradient: bool = False) -> dict:
    """Unit-amplitude disk profiles (and their centre derivatives) on their windows.

    Parameters
    ----------
    centres : ndarray, shape (K, 2)
        Detector-frame centres ``c``.
    optics : Optics
    gradient : bool
        Also return ``dP/dc = -E^-T P'(rho) v / rho`` with ``v = E^-1 (q - c)``.

    Returns
    -------
    dict
        ``flat``, ``inside`` (see :func:`disk_windows`), ``profile`` (K, W, W) (0 off the
        detector) and, with ``gradient``, ``dprofile`` (K, W, W, 2).
    """
    q, flat, inside = disk_windows(centres, optics)
    einv = np.linalg.inv(optics.ellipse)
    v = (q - centres[:, None, None, :]) @ einv.T
    rho = np.hypot(v[..., 0], v[..., 1])
    out = {"flat": flat, "inside": inside}
    out["profile"] = disk_profile(rho, optics.radius, optics.edge) * inside
    if gradient:
        slope = disk_slope(rho, optics.radius, optics.edge) * inside
        unit = v / np.maximum(rho, 1e-12)[..., None]
        out["dprofile"] = -(slope[..., None] * unit) @ einv
    return out


def pixel_grid(shape: tuple[int, int]) -> np.ndarray:
    """Pixel-centre coordinates, shape (Qx, Qy, 2)."""
    return np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1)


def background(origin: np.ndarray, optics: Optics, gradient: bool = False):
    """Power-law background ``B0 (1 + |u|^2 / q0^2)^(-p/2)``, ``u = E^-1 (q - o)``.

    Parameters
    ----------
    origin : ndarray, shape (2,)
    optics : Optics
    gradient : bool
        Also return ``dB/do = p B0 / q0^2 (1 + |u|^2/q0^2)^(-p/2-1) E^-T u``.

    Returns
    -------
    level : ndarray, shape (Qx * Qy,)
    dlevel : ndarray, shape (Qx * Qy, 2)
        Only with ``gradient``.
    """
    einv = np.linalg.inv(optics.ellipse)
    u = (pixel_grid(optics.shape).reshape(-1, 2) - origin) @ einv.T
    base = 1.0 + (u**2).sum(-1) / optics.bg_q0**2
    level = optics.bg_level * base ** (-optics.bg_power / 2.0)
    if not gradient:
        return level
    weight = (
        optics.bg_power * optics.bg_level / optics.bg_q0**2 * base ** (-optics.bg_power / 2 - 1)
    )
    return level, (weight[:, None] * u) @ einv


def scatter(flat: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Sum window ``values`` into a flat image of ``size`` pixels."""
    return np.bincount(flat.ravel(), values.ravel(), minlength=size)


def render_pattern(
    origin: np.ndarray, basis: np.ndarray, hk: np.ndarray, amps: np.ndarray, optics: Optics
) -> np.ndarray:
    """Noise-free pattern (unscaled ``M / s``) for one scan position.

    Parameters
    ----------
    origin : ndarray, shape (2,)
        Origin ``o``, px.
    basis : ndarray, shape (2, 2)
        Detector-frame basis ``D`` (rows).
    hk : ndarray of int, shape (K, 2)
    amps : ndarray, shape (K,)
        Disk plateaus ``A_hk``.
    optics : Optics

    Returns
    -------
    ndarray, shape (Qx, Qy)
    """
    terms = disk_terms(origin + hk @ basis, optics)
    image = scatter(terms["flat"], amps[:, None, None] * terms["profile"], optics.size)
    if optics.bg_level:
        image += background(origin, optics)
    return image.reshape(optics.shape)


# ---------------------------------------------------------------------------- Fisher


def lattice_design(hk: np.ndarray) -> np.ndarray:
    """``dc_hk / d(ox, oy, D1x, D1y, D2x, D2y) = [I, h I, k I]``, shape (K, 2, 6)."""
    eye = np.eye(2)
    return np.concatenate(
        [
            np.broadcast_to(eye, (len(hk), 2, 2)),
            hk[:, 0, None, None] * eye,
            hk[:, 1, None, None] * eye,
        ],
        axis=2,
    )


def lattice_fisher(
    origin: np.ndarray, basis: np.ndarray, hk: np.ndarray, amps: np.ndarray, optics: Optics
):
    """Analytic Fisher information of ``(ox, oy, D1x, D1y, D2x, D2y, A_1..A_K)`` per unit
    expected count scale (multiply by ``dose * s``), ``sum_q dM dM^T / M``.

    Disk windows are taken as disjoint for the products of two disks' derivatives (their
    overlap lies > 6 w outside both edges, where the profiles are < 1e-9).

    Parameters
    ----------
    origin, basis, hk, amps, optics
        As :func:`render_pattern`.

    Returns
    -------
    pattern : ndarray, shape (Qx, Qy)
        The unscaled pattern.
    fisher : ndarray, shape (6 + K, 6 + K)
    """
    terms = disk_terms(origin + hk @ basis, optics, gradient=True)
    flat, prof = terms["flat"], terms["profile"]
    image = scatter(flat, amps[:, None, None] * prof, optics.size)
    level, dlevel = background(origin, optics, gradient=True)
    image += level
    positive = image > 0
    inv_all = np.where(positive, 1.0 / np.where(positive, image, 1.0), 0.0)
    inv = inv_all[flat] * terms["inside"]
    da = amps[:, None, None, None] * terms["dprofile"]  # dM/dc_k on window k
    db = dlevel[flat] * terms["inside"][..., None]  # dM/do from the background
    wa = da * inv[..., None]
    s_aa = np.einsum("kxyi,kxyj->kij", wa, da)
    s_ab = np.einsum("kxyi,kxyj->kij", wa, db)
    s_ad = np.einsum("kxyi,kxy->ki", wa, prof)
    s_bd = np.einsum("kxyi,kxy->ki", db * inv[..., None], prof)
    s_dd = np.einsum("kxy,kxy->k", prof * inv, prof)
    s_bb = (dlevel * inv_all[:, None]).T @ dlevel
    design = lattice_design(hk)
    pick_o = np.eye(2, N_LATTICE)
    cross = np.einsum("kia,kij->aj", design, s_ab) @ pick_o
    lat = np.einsum("kia,kij,kjb->ab", design, s_aa, design) + cross + cross.T
    lat += pick_o.T @ s_bb @ pick_o
    mixed = np.einsum("kia,ki->ak", design, s_ad) + pick_o.T @ s_bd.T
    fisher = np.block([[lat, mixed], [mixed.T, np.diag(s_dd)]])
    return image.reshape(optics.shape), fisher


def numeric_fisher(
    origin: np.ndarray,
    basis: np.ndarray,
    hk: np.ndarray,
    amps: np.ndarray,
    optics: Optics,
    step: float = 1e-4,
) -> np.ndarray:
    """Fisher information as :func:`lattice_fisher`, from central differences of
    :func:`render_pattern` (a check of the analytic derivatives)."""
    params = np.concatenate([origin, basis.ravel(), amps])

    def render(p):
        return render_pattern(p[:2], p[2:6].reshape(2, 2), hk, p[6:], optics).ravel()

    jac = np.empty((params.size, optics.size))
    for i in range(params.size):
        dp = np.zeros_like(params)
        dp[i] = step
        jac[i] = (render(params + dp) - render(params - dp)) / (2.0 * step)
    model = render(params)
    inv = np.where(model > 0, 1.0 / np.where(model > 0, model, 1.0), 0.0)
    return (jac * inv) @ jac.T


def schur(fisher: np.ndarray, n: int) -> np.ndarray:
    """Effective information of the first ``n`` parameters, the rest as nuisance."""
    a, b, d = fisher[:n, :n], fisher[:n, n:], fisher[n:, n:]
    if d.size == 0:
        return a
    return a - b @ np.linalg.solve(d, b.T)


def strain_jacobian(basis: np.ndarray, basis0: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Central-difference Jacobian of :func:`strain_from_basis` with respect to
    ``(ox, oy, D1x, D1y, D2x, D2y)`` (origin columns are zero), shape (..., 4, 6)."""
    jac = np.zeros((*basis.shape[:-2], 4, N_LATTICE))
    for i in range(4):
        db = np.zeros(4)
        db[i] = step
        db = db.reshape(2, 2)
        hi = strain_from_basis(basis + db, basis0)
        lo = strain_from_basis(basis - db, basis0)
        jac[..., :, 2 + i] = (hi - lo) / (2.0 * step)
    return jac


# ---------------------------------------------------------------------------- cases


def case_streams(case: str, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (amplitude, noise) generators for a case and seed."""
    seq = np.random.SeedSequence([seed, zlib.crc32(case.encode())])
    amp, noise = seq.spawn(2)
    return np.random.default_rng(amp), np.random.default_rng(noise)


def case_setup(case: str, seed: int = 0, scan: int | None = None, dose: float | None = None):
    """Geometry, truth and optics of a case, without rendering.

    Parameters
    ----------
    case : str
        A key of :data:`CASES`.
    seed : int
        Seed of the amplitude jitter and the noise.
    scan : int, optional
        Square scan size overriding the case's.
    dose : float, optional
        Dose overriding the case's.

    Returns
    -------
    dict
        ``spec``, ``optics``, ``g0`` (undistorted), ``basis0`` (``D0``), ``strain``, ``F``,
        ``basis`` (``D``), ``origin``, ``hk``, ``centres``, ``amps``, ``noise_rng``.
    """
    spec = CASES[case]
    if scan is not None:
        spec = replace(spec, scan=(scan, scan))
    if dose is not None:
        spec = replace(spec, dose=dose)
    amp_rng, noise_rng = case_streams(case, seed)
    ellipse = ellipse_matrix(spec.ellipse_ratio, spec.ellipse_angle)
    optics = Optics(spec.detector, spec.radius, spec.edge, ellipse, 0.0, spec.bg_q0, spec.bg_power)
    g0 = unstrained_basis(spec)
    strain = strain_field(spec.scan, spec.strain_peak)
    f = deformation(strain)
    basis = g0 @ np.linalg.inv(f) @ ellipse.T
    origin = descan(spec.scan, spec.detector, spec.descan_px)
    hk = select_reflections(origin, basis, spec.hk_max, optics)
    amps = disk_amplitudes(hk, g0, spec.amp_sigma, spec.amp_jitter, amp_rng)
    glen = np.linalg.norm(hk @ g0, axis=1)
    first = (glen > 0) & (glen <= 1.05 * glen[glen > 0].min())
    optics = replace(optics, bg_level=spec.bg_rel * amps[first].mean())
    return {
        "spec": spec,
        "optics": optics,
        "g0": g0,
        "basis0": g0 @ ellipse.T,
        "strain": strain,
        "F": f,
        "basis": basis,
        "origin": origin,
        "hk": hk,
        "centres": origin[..., None, :] + hk @ basis,
        "amps": amps,
        "noise_rng": noise_rng,
    }


def simulate_case(case: str, seed: int = 0, scan: int | None = None, dose: float | None = None):
    """Render a case: noise-free data, counts, truth and the Cramér–Rao bounds.

    Parameters
    ----------
    case, seed, scan, dose
        As :func:`case_setup`.

    Returns
    -------
    dict
        :func:`case_setup`'s entries plus ``data`` (float32, per electron), ``counts``
        (uint16), ``scale`` (``s``), ``clipped`` (number of counts clipped at 65535),
        ``crb_lattice`` (Rx, Ry, 6, 6), ``crb_strain`` (Rx, Ry, 4), ``F_detector`` and
        ``strain_detector``.
    """
    c = case_setup(case, seed, scan, dose)
    spec, optics = c["spec"], c["optics"]
    nrx, nry = spec.scan
    raw = np.empty((nrx, nry, *optics.shape))
    info = np.empty((nrx, nry, N_LATTICE, N_LATTICE))
    for rx in range(nrx):
        for ry in range(nry):
            raw[rx, ry], fisher = lattice_fisher(
                c["origin"][rx, ry], c["basis"][rx, ry], c["hk"], c["amps"], optics
            )
            info[rx, ry] = schur(fisher, N_LATTICE)
    scale = 1.0 / raw.sum(axis=(2, 3)).mean()
    data = (raw * scale).astype(np.float32)
    del raw
    counts = np.empty(data.shape, np.uint16)
    clipped = 0
    for rx in range(nrx):
        draw = c["noise_rng"].poisson(spec.dose * data[rx].astype(np.float64))
        clipped += int((draw > 65535).sum())
        counts[rx] = np.minimum(draw, 65535)
    cov = np.linalg.inv(info * spec.dose * scale)
    jac = strain_jacobian(c["basis"], c["basis0"])
    cov_strain = jac @ cov @ np.swapaxes(jac, -1, -2)
    e = optics.ellipse
    c.update(
        data=data,
        counts=counts,
        scale=scale,
        clipped=clipped,
        crb_lattice=cov,
        crb_strain=np.sqrt(np.diagonal(cov_strain, axis1=-2, axis2=-1)),
        F_detector=np.linalg.inv(e).T @ c["F"] @ e.T,
        strain_detector=strain_from_basis(c["basis"], c["basis0"]),
    )
    return c


def write_case(c: dict, path: Path, seed: int) -> None:
    """Write a :func:`simulate_case` result to HDF5 (layout in the module docstring)."""
    spec, optics = c["spec"], c["optics"]
    dose = float(spec.dose)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=c["data"])
        f.create_dataset("counts", data=c["counts"]).attrs["dose"] = dose
        t = f.create_group("truth")
        t["g"] = c["basis"]
        t["g_point"] = c["basis"]
        t["origin"] = c["origin"]
        t["g0"] = c["basis0"]
        t["hk"] = c["hk"].astype(np.int64)
        t["centres"] = c["centres"]
        t["F"] = c["F"]
        t["ellipse"] = optics.ellipse
        t["amplitudes"] = c["amps"]
        t["F_detector"] = c["F_detector"]
        t["strain_detector"] = c["strain_detector"]
        for name in ("crb_lattice", "crb_strain"):
            t[name] = c[name]
            t[name].attrs.update(crb_dose=dose, crb_step=1)
        t["crb_lattice"].attrs["order"] = "ox, oy, D1x, D1y, D2x, D2y"
        t["crb_strain"].attrs["order"] = "exx, eyy, exy, theta_rad"
        f.attrs.update(
            kind="flat-renderer",
            case=spec.name,
            seed=seed,
            dose=dose,
            crb_dose=dose,
            crb_step=1,
            radius_px=spec.radius,
            edge_px=spec.edge,
            detector=list(spec.detector),
            scale=c["scale"],
            clipped_counts=c["clipped"],
            background=json.dumps(
                {
                    "B0": optics.bg_level,
                    "B0_per_electron": optics.bg_level * c["scale"],
                    "B0_rel_first_order": spec.bg_rel,
                    "q0_px": spec.bg_q0,
                    "p": spec.bg_power,
                }
            ),
            lattice=json.dumps(
                {
                    "g1_px": spec.g_len[0],
                    "g2_px": spec.g_len[1],
                    "angle_deg": spec.angle,
                    "g1_direction_deg": spec.phi0,
                    "hk_max": spec.hk_max,
                    "amp_sigma_px": spec.amp_sigma,
                    "amp_jitter": spec.amp_jitter,
                }
            ),
            ellipse=json.dumps({"ratio": spec.ellipse_ratio, "angle_deg": spec.ellipse_angle}),
            generator="benchmarks/flat_renderer.py",
        )


def render_case(
    case: str,
    seed: int = 0,
    out: str | Path = DEFAULT_OUT,
    scan: int | None = None,
    dose: float | None = None,
) -> Path:
    """Render a case and write ``{out}/{case}_seed{seed}.h5``.

    Parameters
    ----------
    case : str
        ``flat_square``, ``flat_hex`` or ``flat_oblique``.
    seed : int
        Noise and amplitude-jitter seed.
    out : str or Path
        Output folder.
    scan, dose : optional
        Overrides of the scan size and the dose.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(out) / f"{case}_seed{seed}.h5"
    write_case(simulate_case(case, seed, scan, dose), path, seed)
    return path


# ---------------------------------------------------------------------------- checks


def check_centroid(n: int = 64, seed: int = 0) -> float:
    """Largest error (px) of the intensity-weighted centroid of an isolated noise-free disk
    without background and with ``E = I``, over ``n`` random sub-pixel centres."""
    optics = Optics(shape=(40, 40))
    grid = pixel_grid(optics.shape)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for centre in 19.5 + rng.random((n, 2)):
        image = render_pattern(centre, np.zeros((2, 2)), np.zeros((1, 2), int), np.ones(1), optics)
        centroid = (image[..., None] * grid).sum((0, 1)) / image.sum()
        worst = max(worst, float(np.abs(centroid - centre).max()))
    return worst


def check_fisher(case: str = "flat_oblique", scan: int = 8) -> float:
    """Largest relative difference of the lattice CRB std (amplitudes as nuisance) between
    the analytic and the finite-difference Fisher information at one strained position."""
    c = case_setup(case, scan=scan)
    pos = (3 * scan // 4, scan // 3)
    args = (c["origin"][pos], c["basis"][pos], c["hk"], c["amps"], c["optics"])
    _, analytic = lattice_fisher(*args)
    numeric = numeric_fisher(*args)
    std_a = np.sqrt(np.diag(np.linalg.inv(schur(analytic, N_LATTICE))))
    std_n = np.sqrt(np.diag(np.linalg.inv(schur(numeric, N_LATTICE))))
    return float(np.abs(std_a / std_n - 1.0).max())


def fit_disk(counts: np.ndarray, start: np.ndarray, optics: Optics) -> np.ndarray:
    """Poisson maximum-likelihood ``(cx, cy, A)`` of one disk (no background)."""
    flat_counts = counts.ravel()

    def nll(p):
        terms = disk_terms(p[None, :2], optics, gradient=True)
        lam = scatter(terms["flat"], p[2] * terms["profile"], optics.size) + 1e-12
        ratio = 1.0 - flat_counts / lam
        grad_c = [
            scatter(terms["flat"], p[2] * terms["dprofile"][..., i], optics.size) for i in (0, 1)
        ]
        grad_a = scatter(terms["flat"], terms["profile"], optics.size)
        value = lam.sum() - flat_counts @ np.log(lam)
        return value, np.array([ratio @ grad_c[0], ratio @ grad_c[1], ratio @ grad_a])

    res = minimize(nll, start, jac=True, method="BFGS", options={"gtol": 1e-8})
    return res.x


def check_crb_montecarlo(n_draws: int = 200, disk_counts: float = 3000.0, seed: int = 0):
    """Monte-Carlo ML position errors of an isolated disk against its Cramér–Rao bound.

    Parameters
    ----------
    n_draws : int
        Noisy draws.
    disk_counts : float
        Expected counts in the disk.
    seed : int

    Returns
    -------
    dict
        ``bound`` (std per axis, px), ``rms`` (per axis), ``ratio`` (pooled RMS over RMS
        bound), ``bias`` (px).
    """
    optics = Optics(shape=(32, 32))
    hk = np.zeros((1, 2), int)
    centre = np.array([15.37, 16.21])
    unit = render_pattern(centre, np.zeros((2, 2)), hk, np.ones(1), optics)
    amp = disk_counts / unit.sum()
    _, fisher = lattice_fisher(centre, np.zeros((2, 2)), hk, np.array([amp]), optics)
    keep = [0, 1, N_LATTICE]
    bound = np.sqrt(np.diag(np.linalg.inv(schur(fisher[np.ix_(keep, keep)], 2))))
    rng = np.random.default_rng(seed)
    grid = pixel_grid(optics.shape)
    errors = np.empty((n_draws, 2))
    for i in range(n_draws):
        counts = rng.poisson(amp * unit).astype(float)
        start = np.r_[
            (counts[..., None] * grid).sum((0, 1)) / counts.sum(), counts.sum() / unit.sum()
        ]
        errors[i] = fit_disk(counts, start, optics)[:2] - centre
    rms = np.sqrt((errors**2).mean(0))
    ratio = np.sqrt((errors**2).mean() / (bound**2).mean())
    return {"bound": bound, "rms": rms, "ratio": float(ratio), "bias": errors.mean(0)}


def check_strain_truth(case: str = "flat_hex", scan: int = 16) -> float:
    """Largest difference between the strain of ``D^-1 D0`` and of ``E^-T F E^T``."""
    c = case_setup(case, scan=scan)
    e = c["optics"].ellipse
    direct = strain_of(np.linalg.inv(e).T @ c["F"] @ e.T)
    return float(np.abs(strain_from_basis(c["basis"], c["basis0"]) - direct).max())


def selftest(n_draws: int = 200) -> None:
    """Run and print the checks."""
    t0 = time.perf_counter()
    print(
        f"centroid, isolated disk, E=I, 64 sub-pixel centres: max error {check_centroid():.2e} px"
    )
    print(
        f"analytic vs finite-difference Fisher, lattice CRB std: max rel diff {check_fisher():.1e}"
    )
    print(f"strain of D^-1 D0 vs E^-T F E^T: max diff {check_strain_truth():.1e}")
    for counts in (3000.0, 300.0):
        mc = check_crb_montecarlo(n_draws, counts)
        print(
            f"ML ({n_draws} draws, {counts:g} counts/disk): bound {mc['bound'].round(4)} px, "
            f"RMS {mc['rms'].round(4)} px, RMS/bound {mc['ratio']:.3f}, bias {mc['bias'].round(4)}"
        )
    print(f"selftest {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> None:
    """Command line: render cases, or ``--selftest``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", metavar="CASE", help=", ".join(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--scan", type=int, default=None, help="square scan size override")
    parser.add_argument("--dose", type=float, default=None, help="dose override")
    parser.add_argument("--selftest", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if args.selftest:
        selftest()
    for case in args.cases:
        t0 = time.perf_counter()
        c = simulate_case(case, args.seed, args.scan, args.dose)
        path = args.out / f"{case}_seed{args.seed}.h5"
        write_case(c, path, args.seed)
        crb = np.nanmedian(c["crb_strain"].reshape(-1, 4), 0)
        sums = c["data"].sum(axis=(2, 3), dtype=np.float64)
        print(
            f"{path}: {path.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f} s, "
            f"K={len(c['hk'])}, max count {c['counts'].max()}, clipped {c['clipped']}, "
            f"max |pattern sum - 1| {np.abs(sums - 1).max():.1e}, median CRB "
            + ", ".join(f"{n} {v:.1e}" for n, v in zip(STRAIN_NAMES, crb))
        )
    if not args.cases and not args.selftest:
        parser.print_usage(sys.stderr)


if __name__ == "__main__":
    main()
