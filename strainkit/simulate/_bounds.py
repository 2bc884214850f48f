"""Cramér–Rao bounds on the disk centres of a simulated pattern."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strainkit.simulate._crystal import (
    CrystalTruth,
    simulate_crystal,
)
from strainkit.simulate._render import _TABLE, _disk_arrays, _disk_jacobian, render_pattern
from strainkit.simulate._scans import SimulatedScan, _Truth
from strainkit.simulate._validate import _shape2


@dataclass(frozen=True, repr=False, eq=False)
class DiskCenterBound(_Truth):
    """Cramér–Rao bound on the centre of each disk of one pattern.

    Attributes
    ----------
    covariance : (n, 2, 2)
        Lower bound on the covariance of an unbiased centre estimate, px².
    rms : (n,)
        ``sqrt(trace(covariance))``: bound on the 2D RMS centre error, px.
    counts : (n,)
        Expected electrons in each disk (on the detector).
    hk, order : (n, 2), (n,) or None
        Reflection indices and max(|h|, |k|), for crystal patterns.

    Examples
    --------
    >>> b = disk_center_crb((32, 32), [[15.5, 15.5]], [1.0], dose=1e4)
    >>> b.rms.shape, b.covariance.shape
    ((1,), (1, 2, 2))
    """

    covariance: np.ndarray
    rms: np.ndarray
    counts: np.ndarray
    hk: np.ndarray | None = None
    order: np.ndarray | None = None


def _unit_disk_jacobians(shape, centers, radius, edge_width, oversample, psf_sigma):
    """(n, 3, pixels): each unit disk and its derivatives by its centre, through the PSF."""
    jac = np.zeros((len(centers), 3, *shape))
    _disk_jacobian(jac, centers, float(radius), float(edge_width), int(oversample), _TABLE)
    if psf_sigma > 0:
        jac = ndimage.gaussian_filter(jac, (0, 0, psf_sigma, psf_sigma), mode="constant")
    return jac.reshape(len(centers), 3, -1)


def disk_center_crb(
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
    dose: float,
) -> DiskCenterBound:
    """Cramér–Rao bound on each disk centre for the pattern :func:`render_pattern` models.

    The expected counts ``μ`` are those of :func:`render_pattern` with the same keywords
    (``Microscope.render_kwargs()`` supplies them). For Poisson counts the Fisher
    information of parameters a, b is ``Σ_pixels ∂μ/∂a ∂μ/∂b / μ``. Each disk has three
    parameters, its centre (x, y) and its amplitude (a nuisance); all other disks, the
    radius, edge width and background are taken as known. The derivatives are analytic
    (the radial derivative of 0.5·erfc is a Gaussian), averaged over the same sub-pixel
    grid as the rendering and blurred by the same PSF.

    Parameters
    ----------
    shape, centers, amplitudes
        Detector shape, disk centres (n, 2) px and relative amplitudes (n,).
    radius, edge_width, oversample, origin, background_fraction, background_width, psf_sigma
        As in :func:`render_pattern`.
    dose : float
        Expected electrons per pattern (required: the bound scales as 1/sqrt(dose)).

    Returns
    -------
    DiskCenterBound
        NaN for a disk with no counts on the detector.

    Examples
    --------
    >>> b1 = disk_center_crb((32, 32), [[15.5, 15.5]], [1.0], dose=1e4)
    >>> b4 = disk_center_crb((32, 32), [[15.5, 15.5]], [1.0], dose=4e4)
    >>> round(float(b1.rms[0] / b4.rms[0]), 9)
    2.0
    """
    if dose is None:
        raise ValueError(
            "disk_center_crb needs dose=<expected electrons per pattern>; the "
            "bound depends on the counts"
        )
    kwargs = dict(
        radius=radius,
        edge_width=edge_width,
        oversample=oversample,
        origin=origin,
        background_fraction=background_fraction,
        background_width=background_width,
        psf_sigma=psf_sigma,
        dose=dose,
    )
    mu = render_pattern(shape, centers, amplitudes, **kwargs).ravel()
    centers, amplitudes = _disk_arrays(centers, amplitudes)
    jac = _unit_disk_jacobians(
        _shape2("shape", shape), centers, radius, edge_width, oversample, psf_sigma
    )
    total = np.sum(amplitudes[:, None] * jac[:, 0])
    if not total > 0:
        raise ValueError("disk_center_crb: no disk light falls on the detector; check centers")
    # Same normalisation as render_pattern: relative units -> expected counts.
    per_unit = dose * (1.0 - background_fraction) / total
    jac[:, 1:] *= (per_unit * amplitudes)[:, None, None]
    weight = np.divide(1.0, mu, np.zeros_like(mu), where=mu > 0)
    fisher = np.einsum("kap,kbp->kab", jac * weight, jac)
    counts = per_unit * amplitudes * jac[:, 0].sum(axis=1)
    covariance = np.full((len(centers), 2, 2), np.nan)
    ok = (counts > 0) & (np.linalg.det(fisher) > 0)
    covariance[ok] = np.linalg.inv(fisher[ok])[:, 1:, 1:]  # parameters: amplitude, x, y
    rms = np.sqrt(np.trace(covariance, axis1=1, axis2=2))
    return DiskCenterBound(covariance=covariance, rms=rms, counts=counts)


def crystal_disk_crb(
    sim: SimulatedScan,
    position=(0, 0),
    *,
    mean_amplitudes: bool = False,
    dose: float | None = None,
) -> DiskCenterBound:
    """Cramér–Rao bounds on the disk centres of one position of :func:`simulate_crystal`.

    Parameters
    ----------
    sim : SimulatedScan
        A crystal scan.
    position : (int, int)
        Scan position (rx, ry).
    mean_amplitudes : bool
        Use the mean amplitudes (``truth.envelope``, no modulation) instead of the
        position's actual amplitudes.
    dose : float, optional
        Electrons per pattern; default ``sim.microscope.dose``.

    Returns
    -------
    DiskCenterBound
        With ``hk`` and ``order`` set.

    Examples
    --------
    >>> b = crystal_disk_crb(simulate_crystal(scan_shape=(1, 2)), mean_amplitudes=True)
    >>> bool(np.nanmean(b.rms[b.order == 1]) < np.nanmean(b.rms[b.order == 2]))
    True
    """
    if not isinstance(getattr(sim, "truth", None), CrystalTruth):
        raise ValueError("crystal_disk_crb needs a scan from simulate_crystal")
    t, m = sim.truth, sim.microscope
    try:
        i, j = (int(v) for v in position)
    except (TypeError, ValueError):
        raise ValueError(f"position={position!r}: give (rx, ry) scan indices") from None
    if not (0 <= i < t.exx.shape[0] and 0 <= j < t.exx.shape[1]):
        raise ValueError(f"position={position!r} lies outside the scan {t.exx.shape}")
    kwargs = m.render_kwargs()
    kwargs["dose"] = m.dose if dose is None else dose
    amplitudes = t.envelope if mean_amplitudes else t.amplitudes[i, j]
    bound = disk_center_crb(
        m.detector_shape, t.centers[i, j], amplitudes, origin=t.origins[i, j], **kwargs
    )
    return DiskCenterBound(bound.covariance, bound.rms, bound.counts, hk=t.hk, order=t.order)


def _lattice_covariance(hk, disk_covariance, distortion) -> np.ndarray:
    """Bound on the covariance of (g1x, g1y, g2x, g2y), px, from the disks' bounds.

    Each centre is ``c = o + D (h g1 + k g2)``; the disks' Fisher informations, summed
    through that linear model, give the information on (origin, g1, g2).
    """
    info = np.zeros((6, 6))
    for (h, k), cov in zip(hk, disk_covariance):
        if not np.isfinite(cov).all():
            continue  # a disk with no light on the detector
        jac = np.hstack([np.eye(2), h * distortion, k * distortion])  # d c / d (o, g1, g2)
        info += jac.T @ np.linalg.inv(cov) @ jac
    return np.linalg.inv(info)[2:, 2:]


def _to_real(m) -> np.ndarray:
    """Corrected detector px -> real-space frame, Å⁻¹: ``v_R = P⁻¹ R(−φ) v_Q · pixel size``."""
    from strainkit._geometry import flip_matrix, rotation_matrix

    return m.pixel_size * flip_matrix(m.flip).T @ rotation_matrix(np.deg2rad(-m.rotation_deg))


def _propagate(lattice_cov_px, g_px, g0_px, m) -> dict[str, float]:
    """Strain, rotation and relative lattice-parameter bounds from the lattice's bound."""
    from strainkit.strain import strain_from_lattice

    to_real = _to_real(m)
    # (g1x, g1y, g2x, g2y) -> real frame: the same 2x2 map on each vector
    t4 = np.kron(np.eye(2), to_real)
    cov = t4 @ lattice_cov_px @ t4.T
    out = strain_from_lattice(
        (to_real @ g_px)[None], to_real @ g0_px, cov[None], lattice_parameters=True
    )
    return {
        "exx": float(out["sigma_exx"][0]),
        "eyy": float(out["sigma_eyy"][0]),
        "exy": float(out["sigma_exy"][0]),
        "theta_deg": float(out["sigma_theta_deg"][0]),
        "a_rel": float(out["sigma_a"][0] / out["a"][0]),
        "b_rel": float(out["sigma_b"][0] / out["b"][0]),
    }


def strain_precision_bound(
    microscope=None,
    lattice=None,
    *,
    max_order: int = 3,
    intensity_sigma: float = 21.0,
    central_beam: float = 1.0,
) -> dict[str, float]:
    """Cramér–Rao bound on the strain and rotation of one position, for planning a dose.

    The pattern is that of :func:`simulate_crystal` (unstrained, mean amplitudes) for the
    given microscope (dose, probe radius and edge, PSF, background, ellipse, pixel size,
    rotation, flip) and lattice. Each disk centre ``c = o + D (h g1 + k g2)`` (``D`` the
    elliptical distortion) carries the Fisher information of :func:`disk_center_crb` (its
    amplitude a nuisance); summed over the disks through that linear model they give the
    information on (origin, g1, g2), whose inverse is propagated to (exx, eyy, exy, θ) in
    the real-space frame with the exact strain of DESIGN.md (reference known exactly).
    Overlap between disks' tails is neglected.

    Parameters
    ----------
    microscope : Microscope, optional
        Default ``Microscope()`` (2e5 e⁻/pattern).
    lattice : Lattice, optional
        Default ``Lattice()`` (|g| = 16 px).
    max_order, intensity_sigma, central_beam
        As in :func:`simulate_crystal`.

    Returns
    -------
    dict
        ``exx``, ``eyy``, ``exy`` (dimensionless) and ``theta_deg``: standard deviations;
        ``a_rel``, ``b_rel``: relative standard deviations of the lattice parameters;
        ``n_disks``.

    Examples
    --------
    >>> from strainkit.simulate import Microscope
    >>> low = strain_precision_bound(Microscope(dose=5e4))
    >>> high = strain_precision_bound(Microscope(dose=2e5))
    >>> round(low["exx"] / high["exx"], 6)  # four times the dose halves the error
    2.0
    """
    from strainkit.simulate._microscope import Microscope

    m = microscope if microscope is not None else Microscope()
    if m.dose is None:
        raise ValueError("strain_precision_bound needs a Microscope with a dose (e⁻/pattern)")
    kwargs = {} if lattice is None else {"lattice": lattice}
    sim = simulate_crystal(
        m,
        scan_shape=(1, 1),
        max_order=max_order,
        intensity_sigma=intensity_sigma,
        central_beam=central_beam,
        modulation=0.0,
        **kwargs,
    )
    t = sim.truth
    bound = crystal_disk_crb(sim, (0, 0), mean_amplitudes=True)
    lattice_cov = _lattice_covariance(t.hk, bound.covariance, m.distortion)
    g0 = np.stack([t.g1_px[0, 0], t.g2_px[0, 0]], axis=-1)
    out = _propagate(lattice_cov, g0, g0, m)
    out["n_disks"] = int(np.isfinite(bound.rms).sum())
    return out


def crystal_strain_crb(sim: SimulatedScan, positions=None) -> dict[str, np.ndarray]:
    """Per-position Cramér–Rao bound on the strain, rotation and lattice parameters.

    At each position, the Fisher information of the counts with respect to every disk
    centre (its amplitude a nuisance; the position's actual, modulated amplitudes and
    strained disk positions; :func:`crystal_disk_crb`) is summed through
    ``c = o + D (h g1 + k g2)`` into the information on (origin, g1, g2), whose inverse
    is propagated to (exx, eyy, exy, θ) in the real-space frame (exact strain of
    DESIGN.md, reference ``truth.G0`` known exactly) and to the relative errors of the
    lattice parameters ``a = |a1|``, ``b = |a2|``. This is the bound that an estimator's
    RMS error over a map is compared against; :func:`strain_precision_bound` is the
    same for one unstrained position with mean amplitudes, for planning.

    Parameters
    ----------
    sim : SimulatedScan
        A crystal scan from :func:`simulate_crystal`.
    positions : (Rx, Ry) bool array, optional
        Where to compute the bound (about 30 ms a position); default everywhere.

    Returns
    -------
    dict
        ``exx``, ``eyy``, ``exy`` (dimensionless), ``theta_deg``, ``a_rel``, ``b_rel``
        (σ(a)/a, σ(b)/b): arrays of the scan shape, NaN where not computed.

    Examples
    --------
    >>> sim = simulate_crystal(scan_shape=(1, 2))
    >>> b = crystal_strain_crb(sim)
    >>> b["exx"].shape, bool(2e-4 < b["exx"][0, 0] < 5e-4)
    ((1, 2), True)
    """
    if not isinstance(getattr(sim, "truth", None), CrystalTruth):
        raise ValueError("crystal_strain_crb needs a scan from simulate_crystal")
    t, m = sim.truth, sim.microscope
    if m.dose is None:
        raise ValueError("crystal_strain_crb needs a scan simulated with a dose (e⁻/pattern)")
    shape = t.exx.shape
    where = np.ones(shape, bool) if positions is None else np.asarray(positions, bool)
    if where.shape != shape:
        raise ValueError(
            f"positions has shape {where.shape}; give a boolean mask of the scan shape {shape}"
        )
    names = ("exx", "eyy", "exy", "theta_deg", "a_rel", "b_rel")
    out = {name: np.full(shape, np.nan) for name in names}
    # The reference lattice on the corrected detector, px: G0 mapped like every g.
    g0 = np.linalg.solve(_to_real(m), t.G0)
    for i, j in zip(*np.nonzero(where)):
        bound = crystal_disk_crb(sim, (i, j))
        cov = _lattice_covariance(t.hk, bound.covariance, m.distortion)
        g = np.stack([t.g1_px[i, j], t.g2_px[i, j]], axis=-1)
        for name, value in _propagate(cov, g, g0, m).items():
            out[name][i, j] = value
    return out
