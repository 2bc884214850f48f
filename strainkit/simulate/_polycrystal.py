"""The polycrystal calibration scan: Friedel pairs of spots on the rings of a crystal."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strainkit.crystal import Crystal, fcc
from strainkit.simulate._microscope import Microscope
from strainkit.simulate._scans import SimulatedScan, _render_scan, _Truth
from strainkit.simulate._validate import _finite, _integer, _shape2, _streams

_GOLD = fcc(4.078)


@dataclass(frozen=True, repr=False, eq=False)
class PolycrystalTruth(_Truth):
    """Ground truth of a polycrystal (calibration) scan; spots in CSR layout.

    The spots of position ``p = rx * Ry + ry`` are ``offsets[p]:offsets[p + 1]``. The
    central beam is not among the spots; it sits at ``origins``.

    Attributes
    ----------
    origins : (Rx, Ry, 2)
        Raw-detector position of the central beam, px.
    offsets : (Rx·Ry + 1,) int
        CSR offsets into the spot arrays.
    centers : (m, 2)
        Raw-detector spot centres, px.
    centers_corrected : (m, 2)
        Spot offsets from the origin in the corrected frame, px (on a circle of the ring's
        radius).
    ring : (m,) int
        Index of each spot's ring.
    amplitudes : (m,)
        Flat-top amplitudes, relative units (central beam: ``central_beam``).
    ring_d : (r,)
        d-spacing of each ring, Å.
    ring_radii : (r,)
        Ring radius in the corrected frame, px: ``1 / (d · pixel_size)``.
    ring_hkl : (r, 3) int
        A representative reflection of each ring.
    counts_per_amplitude : (Rx, Ry)
        Expected counts of a whole disk of unit amplitude.
    central_beam, pixel_size, ellipse
        Knobs used.

    Examples
    --------
    >>> t = simulate_polycrystal(scan_shape=(2, 2)).truth
    >>> t.ring_hkl
    array([[1, 1, 1],
           [2, 0, 0],
           [2, 2, 0]])
    """

    origins: np.ndarray
    offsets: np.ndarray
    centers: np.ndarray
    centers_corrected: np.ndarray
    ring: np.ndarray
    amplitudes: np.ndarray
    ring_d: np.ndarray
    ring_radii: np.ndarray
    ring_hkl: np.ndarray
    counts_per_amplitude: np.ndarray
    central_beam: float
    pixel_size: float
    ellipse: tuple[float, float]


def _fitting_rings(m: Microscope, crystal: Crystal, origins: np.ndarray, min_separation: float):
    """Rings whose disks stay on the detector at every origin, after the distortion."""
    margin = m.probe_radius + 3 * m.edge_width + 2
    shape = np.asarray(m.detector_shape) - 1.0
    room = np.minimum(origins.reshape(-1, 2), shape - origins.reshape(-1, 2)).min(axis=0) - margin
    # A circle of radius r becomes an ellipse reaching r·sqrt((D Dᵀ)_ii) along axis i.
    stretch = np.sqrt(np.diag(m.distortion @ m.distortion.T))
    r_max = float(np.min(room / stretch))
    if r_max <= min_separation:
        raise ValueError(
            "no diffraction ring fits on the detector with these knobs; use a larger "
            "detector_shape, a larger pixel_size or a smaller probe_radius"
        )
    refl = crystal.reflections(d_min=1.0 / (r_max * m.pixel_size))
    radii = 1.0 / (refl.d * m.pixel_size)
    # Spots closer to the central beam than the minimum separation could never be placed.
    keep = (radii <= r_max) & (radii >= min_separation)
    if not keep.any():
        raise ValueError(
            f"no ring of {crystal.name or 'the crystal'} fits between {min_separation:.1f} and "
            f"{r_max:.1f} px; change pixel_size or the crystal"
        )
    return refl.d[keep], radii[keep], refl.hkl[keep], refl.structure_factor[keep]


def _place_pairs(rng, n_pairs, radii, base, min_separation, max_tries):
    """Friedel pairs at random azimuths, no two disks (nor the centre) closer than allowed."""
    placed = [(0.0, 0.0)]
    spots, rings, amps = [], [], []
    for ring in np.repeat(np.arange(len(radii)), n_pairs):
        r = radii[ring]
        for _ in range(max_tries):
            phi = rng.uniform(0.0, 2.0 * math.pi)
            x, y = r * math.cos(phi), r * math.sin(phi)
            if all(
                min(math.hypot(x - a, y - b), math.hypot(x + a, y + b)) >= min_separation
                for a, b in placed
            ):
                amp = base[ring] * rng.uniform(0.5, 1.5)
                placed += [(x, y), (-x, -y)]
                spots += [(x, y), (-x, -y)]
                rings += [ring, ring]
                amps += [amp, amp]
                break
    return spots, rings, amps


def _polycrystal_spots(rng, n_pos, pairs_per_ring, radii, base, min_separation, max_tries):
    """CSR offsets, corrected-frame offsets, ring index and amplitude of every spot."""
    n_pairs = rng.poisson(pairs_per_ring, size=(n_pos, len(radii)))
    placed = [
        _place_pairs(rng, n_pairs[p], radii, base, min_separation, max_tries) for p in range(n_pos)
    ]
    counts = [len(spots) for spots, _, _ in placed]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    corrected = np.array([s for spots, _, _ in placed for s in spots], dtype=float).reshape(-1, 2)
    ring = np.array([r for _, rings, _ in placed for r in rings], dtype=np.int64)
    amps = np.array([a for _, _, amp in placed for a in amp], dtype=float)
    return offsets, corrected, ring, amps


def _with_central_beam(origins, central_beam, centers, amps, offsets):
    """Render lists in CSR layout with the central beam first in each frame."""
    n_pos = len(origins)
    render_offsets = offsets + np.arange(n_pos + 1)
    render_centers = np.empty((len(centers) + n_pos, 2))
    render_amps = np.empty(len(centers) + n_pos)
    is_spot = np.ones(len(render_amps), dtype=bool)
    is_spot[render_offsets[:-1]] = False
    render_centers[~is_spot], render_amps[~is_spot] = origins, central_beam
    render_centers[is_spot], render_amps[is_spot] = centers, amps
    return render_centers, render_amps, render_offsets


def simulate_polycrystal(
    microscope: Microscope = Microscope(),  # noqa: B008 (a frozen dataclass, immutable)
    scan_shape=(20, 20),
    crystal: Crystal = _GOLD,
    pairs_per_ring: float = 1.5,
    seed: int = 0,
    *,
    central_beam: float = 1.0,
    spot_amplitude: float = 0.6,
    intensity_sigma: float = 60.0,
    max_tries: int = 50,
) -> SimulatedScan:
    """A polycrystal calibration scan: Friedel pairs of spots on the crystal's rings.

    Rings: every allowed d-spacing of ``crystal`` whose ring (radius ``1/(d·pixel_size)``
    px in the corrected frame) keeps its disks on the detector at every scan position
    after distortion and descan, with a margin of ``probe_radius + 3 edge_width + 2`` px.
    Per position and ring, Poisson(``pairs_per_ring``) pairs (+g, −g) at uniform random
    azimuths. A spot's amplitude is ``spot_amplitude · |F|²/max|F|² ·
    exp(−r²/(2 intensity_sigma²)) · U(0.5, 1.5)`` (a random grain factor, equal for the
    pair). Azimuths are rejection-sampled so that no two disks (central beam included)
    are closer than ``2 probe_radius + 4 edge_width + 1`` px in the corrected frame; a
    pair that does not fit after ``max_tries`` draws is dropped.

    Examples
    --------
    >>> sim = simulate_polycrystal(scan_shape=(3, 3), seed=1)
    >>> t = sim.truth
    >>> np.allclose(np.hypot(*t.centers_corrected.T), t.ring_radii[t.ring])
    True
    """
    m = microscope
    scan_shape = _shape2("scan_shape", scan_shape)
    if not isinstance(crystal, Crystal):
        raise ValueError(f"crystal={crystal!r}: give a strainkit.crystal.Crystal, e.g. fcc(4.078)")
    pairs_per_ring = _finite("pairs_per_ring", pairs_per_ring, low=0)
    central_beam = _finite("central_beam", central_beam, low=0)
    spot_amplitude = _finite("spot_amplitude", spot_amplitude, low=0)
    sigma = _finite("intensity_sigma", intensity_sigma, low=0, low_open=True)
    max_tries = _integer("max_tries", max_tries, 1)
    seed_jitter, seed_spots, seed_noise = _streams(seed, "polycrystal", 3)
    origins = m.origins(scan_shape, m.descan_jitter, np.random.default_rng(seed_jitter))
    min_sep = 2 * m.probe_radius + 4 * m.edge_width + 1
    ring_d, radii, ring_hkl, f2 = _fitting_rings(m, crystal, origins, min_sep)
    base = spot_amplitude * f2 / f2.max() * np.exp(-(radii**2) / (2 * sigma**2))

    n_pos = scan_shape[0] * scan_shape[1]
    offsets, corrected, ring, amps = _polycrystal_spots(
        np.random.default_rng(seed_spots), n_pos, pairs_per_ring, radii, base, min_sep, max_tries
    )
    flat_origins = origins.reshape(-1, 2)
    centers = np.repeat(flat_origins, np.diff(offsets), axis=0) + corrected @ m.distortion.T
    render_centers, render_amps, render_offsets = _with_central_beam(
        flat_origins, central_beam, centers, amps, offsets
    )
    data, per_amp = _render_scan(
        m,
        scan_shape,
        render_centers,
        render_amps,
        render_offsets,
        origins,
        m.background_fraction,
        seed_noise,
    )
    truth = PolycrystalTruth(
        origins=origins,
        offsets=offsets,
        centers=centers,
        centers_corrected=corrected,
        ring=ring,
        amplitudes=amps,
        ring_d=ring_d,
        ring_radii=radii,
        ring_hkl=ring_hkl,
        counts_per_amplitude=per_amp,
        central_beam=central_beam,
        pixel_size=m.pixel_size,
        ellipse=m.ellipse,
    )
    return SimulatedScan(data, truth, m)
