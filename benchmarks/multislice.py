"""Deterministic, cached multislice 4D-STEM data sets of strained crystals, with truth.

Run with the interpreter of the abTEM environment (``bash benchmarks/setup_abtem_venv.sh``)::

    benchmarks/.venv-abtem/bin/python benchmarks/multislice.py CASE [CASE ...] [--out DIR]

abTEM 1.0.11 (GPL-3.0) is only *called* from here; strainkit never imports it. A case whose
file(s) exist is skipped, so the directory is a cache; the same case always gives the same
numbers (no random numbers, FFTW plans chosen by estimate instead of by timing).

Physics
-------
The specimen is a crystal in zone-axis orientation, an orthogonal periodic supercell of
15 x 15 projected cells with extent L x L in (x, y) and the beam along z. Si [001] uses the
cell rotated by 45 degrees (x || [110], y || [-110], repeat a/sqrt(2) = 3.8403 A), so that
the 220 reflections g1 || x and g2 || y are 30 px from the direct beam; SrTiO3 [001] has
g1 = 100, g2 = 010 at 15 px. Each atom at its reference position r0 moves in-plane to
r0 + u(r0), where u is the smooth displacement field in ``DISPLACEMENT`` (periodic over L
in x and y, peak strains about 0.9 %, the same in every layer along z). Each unit cell
along z is cut into slices that each hold one atomic plane (Si: a/4, SrTiO3: a/2), and the
projected potential of a slice (abTEM's Lobato scattering factors) is summed from the
exact structure factor of its displaced atoms. abTEM's own ``Potential`` spreads each atom
over four pixels, which at this 0.15 A sampling puts a 12 % RMS error on the potential and
0.07 rad on the phases of its strong Fourier components, i.e. on the displacements; the
exact sum agrees with ``Potential`` on an 8 times finer grid to 0.2 %. No frozen phonons
(no thermal diffuse scattering), no inelastic scattering, no higher-order Laue zones (the
first lies beyond the band limit).

The slowly varying case ``si001_slow_series`` uses a supercell of 60 x 15 cells, 4L x L
(230.4 x 57.6 A), and the field ``SLOW_DISPLACEMENT``: periodic over 4L along x and L along
y, with exx, eyy, exy and the rotation all varying along x with the 230.4 A period (eyy and
part of exy and the rotation also change sign along y with period L, as any periodic u_y
with eyy != 0 must), peak strains about 0.9 %.

abTEM then propagates a 200 kV probe (defocus 0, no aberrations, semi-angle 2.4 mrad
unless the case says otherwise, abTEM's soft aperture edge) through the slices on a
384 x 384 grid (0.15 A), band-limited to 2/3 of Nyquist (128 px, 56 mrad), for each
probe position r_p = (i, j) * L / N of an N x N scan over the whole cell (slow case: a
1536 x 384 grid, the same 0.15 A, and a 32 x 4 scan, r_p = (i * 4L / 32, j * L / 4)).
The tilted case uses abTEM's scalar beam tilt (2, 0) mrad, which tilts the propagator
(the wave drifts by +2e-3 dz along x in each slice), not the incident wave: a specimen
tilt, the beam running 2 mrad off [001] towards +x, with the direct beam staying at the
centre of the detector.

The detector is the central 256 x 256 px of the far-field intensity, one pixel is
1/L A^-1, array axis 0 is kx (along the scan's x, axis 0), axis 1 is ky, and pixel (i, j)
has its centre at coordinate (i, j): the direct beam is centred on (128, 128), or on
(80, 80) in the small case, which keeps the central 160 x 160 px. In the slow case the
simulated pixel is 1/(4L) along kx and 1/L along ky; the intensity is binned 4:1 along kx
with weights (1/2, 1, 1, 1, 1/2) over raw pixels 4m - 2 ... 4m + 2 from the direct beam
(each raw pixel counted once in all: the sum of 4 pixels shifted by half a raw pixel), so
that binned pixel m is centred exactly on kx = m / L, the direct beam on pixel 128 and the
pixel 1/L A^-1 in both directions, as in the other cases.

The vacuum pattern is the same probe without a specimen (and without the tilt: the direct
beam where the 000 disk is when untilted), |FFT(probe)|^2 put through the same window,
binning, normalisation and crop as the data.

Truth. With the reference reciprocal basis g0 (rows g1, g2, in px), the local basis at a
point r is G(r) = g0 F(r0)^-1 (rows), i.e. g_i = F^-T g0_i, where F = I + grad u is taken
at the material point r0 that solves r0 + u(r0) = r (fixed-point iteration). The files
store G at each probe position and its average over the incident probe intensity,
sum_r |P(r - r_p)|^2 G(r) / sum_r |P|^2 on the simulation grid (periodic), which is what
the intensity centroid of every disk measures in the kinematic, thin-crystal limit. At
finite thickness the excitation error grows across each disk (Ewald-sphere curvature)
and pulls the centroid towards the direct beam: by 0.0013 px for the 220 disks of Si at
5.4 A, 0.16 px at 54 A, nearly the same at every probe position; the disk edges do not
move. The truth is the same at every thickness.

Cases (the CLI's names; N x N scan, thickness in unit cells)
-------------------------------------------------------------
si001_t54_s8_small  Si 10 cells, 8 x 8, 160 x 160 px; tests/data/multislice_si001_8x8.h5
si001_t54_s32       Si 10 cells (54.3 A), 32 x 32
si001_series_s16    Si 10, 20, 40, 60, 90 cells in one run, 16 x 16; si001_t{A}_s16.h5
si001_tilt_s16      Si 10 cells, 16 x 16, beam 2 mrad off the zone axis towards +x
si001_a50_s16       Si 10 cells, 16 x 16, semi-angle 5.0 mrad (disk radius 11.5 px)
sto001_t39_s16      SrTiO3 10 cells (39.05 A), 16 x 16
si001_slow_series   Si 10, 20, 40, 60, 90 cells, 4L x L cell, slow field, 32 x 4 scan;
                    si001_slow_t{A}_s32x4.h5
A case whose files all exist only gets the ``vacuum`` dataset added where it is missing.

File format (HDF5, one file per case and thickness)
---------------------------------------------------
data            float32 (Rx, Ry, Qx, Qy): noise-free intensity, each pattern scaled to
                sum 1 over the 256 x 256 detector before any crop, no detector blur.
truth/g         float64 (Rx, Ry, 2, 2): probe-averaged local basis; [..., 0, :] = g1
                (x, y), [..., 1, :] = g2, in px.
truth/g_point   float64 (Rx, Ry, 2, 2): the local basis at the probe position.
truth/origin    float64 (Rx, Ry, 2): centre of the 000 disk in px, in the stored array.
truth/g0        float64 (2, 2): unstrained basis (rows g1, g2) in px.
truth/hk        int64 (K, 2): (h, k) of every reflection h g1 + k g2 whose disk lies wholly
                on the stored detector and holds >= 1e-4 of the mean pattern's intensity.
vacuum          float32 (Qx, Qy): the probe's pattern without a specimen, scaled to sum 1
                over the 256 x 256 detector before any crop, like ``data``.
Root attributes: kind="multislice", case, crystal, zone, thickness_A, energy_eV,
semiangle_mrad, tilt_mrad (magnitude; tilt_xy_mrad gives x, y), dk_inv_A (A^-1 per px),
disk_radius_px, scan_step_A (probe (i, j) at (i, j) * scan_step_A), cell_A (L), d_A and
lattice_A (both [1/|g1|, 1/|g2|] in A for the unstrained crystal), displacement,
generator, abtem_version, gpts, sampling_A, slice_thickness_A, frozen_phonons.
In the slow case cell_A, scan_step_A and gpts are (x, y) pairs and detector_binning is
(4, 1); dk_inv_A is 1 / L in both directions.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import abtem
import dask
import h5py
import numpy as np
from abtem.core.energy import energy2wavelength
from abtem.integrals import ScatteringFactorProjectionIntegrals

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache" / "multislice"
ENERGY = 200e3
GPTS = 384
DETECTOR = 256
CELLS_XY = 15
STRAIN = 0.0065
DISPLACEMENT = (
    "ux = e*L/(2*pi) * (sin(X) + sin(Y) + 0.4*cos(X + Y)); "
    "uy = e*L/(2*pi) * (0.8*sin(Y) - sin(X) + 0.5*cos(X - Y)); "
    f"X = 2*pi*x/L, Y = 2*pi*y/L, e = {STRAIN}, x, y, L in A"
)
SLOW_STRAIN = 0.009
SLOW_DISPLACEMENT = (
    "ux = e*Lx/(2*pi) * sin(X) + e*L/(2*pi) * 0.5*cos(X)*sin(Y); "
    "uy = e*Lx/(2*pi) * 0.8*cos(X) + e*L/(2*pi) * 0.7*(1 + 0.4*sin(X))*sin(Y); "
    f"X = 2*pi*x/Lx, Y = 2*pi*y/L + pi/4, Lx = 4*L, e = {SLOW_STRAIN}, x, y, L in A"
)


@dataclass(frozen=True)
class Crystal:
    """A crystal in zone-axis orientation with an orthogonal projected cell.

    Attributes
    ----------
    name, zone : str
        Formula and beam direction.
    repeat : float
        Orthogonal repeat of the projected cell along x and y (A).
    height : float
        Repeat along the beam (A).
    d : float
        Spacing of the lattice planes of g1 and g2 (A).
    sites : tuple
        (symbol, fx, fy, slice) of each atom in the cell: fractional in-plane position and
        the index of the slice holding its atomic plane.
    slices : int
        Slices per repeat along the beam.
    """

    name: str
    zone: str
    repeat: float
    height: float
    d: float
    sites: tuple
    slices: int


A_SI = 5.431
A_STO = 3.905
CRYSTALS = {
    "Si": Crystal(
        "Si", "[001]", A_SI / np.sqrt(2), A_SI, A_SI / (2 * np.sqrt(2)),
        (("Si", 0, 0, 0), ("Si", 0.5, 0, 1), ("Si", 0.5, 0.5, 2), ("Si", 0, 0.5, 3)),
        4,
    ),
    "SrTiO3": Crystal(
        "SrTiO3", "[001]", A_STO, A_STO, A_STO,
        (("Sr", 0, 0, 0), ("O", 0.5, 0.5, 0), ("Ti", 0.5, 0.5, 1), ("O", 0.5, 0, 1),
         ("O", 0, 0.5, 1)),
        2,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One simulation: a crystal, its thickness(es) in unit cells and the optics.

    ``file`` is the file name, formatted with the thickness in A (rounded) as ``t``;
    ``folder`` is the default output folder relative to the repository. ``scan`` is N (an
    N x N scan) or (Nx, Ny); ``repeats`` the supercell in projected cells along x and y;
    ``binning`` the detector binning along kx; ``field`` "fast" (``DISPLACEMENT``) or
    "slow" (``SLOW_DISPLACEMENT``).
    """

    crystal: str
    cells: tuple
    scan: int | tuple
    file: str
    semiangle: float = 2.4
    tilt: tuple = (0.0, 0.0)
    crop: int = DETECTOR
    folder: str = "benchmarks/.cache/multislice"
    repeats: tuple = (CELLS_XY, CELLS_XY)
    binning: int = 1
    field: str = "fast"

    @property
    def lattice(self) -> Crystal:
        """The crystal."""
        return CRYSTALS[self.crystal]

    @property
    def extent(self) -> tuple[float, float]:
        """The supercell's sides (Lx, Ly) in A."""
        return (self.repeats[0] * self.lattice.repeat, self.repeats[1] * self.lattice.repeat)

    @property
    def gpts(self) -> tuple[int, int]:
        """Simulation grid, 0.15 A (Si) as in the 384 x 384 grid of 15 x 15 cells."""
        return (GPTS * self.repeats[0] // CELLS_XY, GPTS * self.repeats[1] // CELLS_XY)

    @property
    def scan_shape(self) -> tuple[int, int]:
        """(Nx, Ny) probe positions."""
        return (self.scan, self.scan) if isinstance(self.scan, int) else tuple(self.scan)

    @property
    def square(self) -> bool:
        """The 15 x 15 cell cases, whose attributes are scalars."""
        return self.repeats == (CELLS_XY, CELLS_XY) and self.binning == 1

    @property
    def g0(self) -> np.ndarray:
        """Unstrained reciprocal basis, rows g1 and g2, in detector px."""
        Lx, Ly = self.extent
        d = self.lattice.d
        if self.square:
            return np.eye(2) * Lx / d
        return np.diag([Lx / self.binning / d, Ly / d])


CASES = {
    "si001_t54_s8_small": Case(
        "Si", (10,), 8, "multislice_si001_8x8.h5", crop=160, folder="tests/data"
    ),
    "si001_t54_s32": Case("Si", (10,), 32, "si001_t54_s32.h5"),
    "si001_series_s16": Case("Si", (10, 20, 40, 60, 90), 16, "si001_t{t}_s16.h5"),
    "si001_tilt_s16": Case("Si", (10,), 16, "si001_tilt_s16.h5", tilt=(2.0, 0.0)),
    "si001_a50_s16": Case("Si", (10,), 16, "si001_a50_s16.h5", semiangle=5.0),
    "sto001_t39_s16": Case("SrTiO3", (10,), 16, "sto001_t39_s16.h5"),
    "si001_slow_series": Case(
        "Si",
        (10, 20, 40, 60, 90),
        (32, 4),
        "si001_slow_t{t}_s32x4.h5",
        repeats=(4 * CELLS_XY, CELLS_XY),
        binning=4,
        field="slow",
    ),
}


def displacement_gradient(
    xy: np.ndarray, extent: tuple[float, float], field: str = "fast"
) -> tuple[np.ndarray, np.ndarray]:
    """The displacement field ``DISPLACEMENT`` (or ``SLOW_DISPLACEMENT``) and its gradient.

    Parameters
    ----------
    xy : ndarray, shape (..., 2)
        Reference positions (A).
    extent : (float, float)
        The supercell (Lx, Ly) in A: L = Lx = Ly ("fast"), or Lx = 4L, Ly = L ("slow").
    field : {"fast", "slow"}
        Which field.

    Returns
    -------
    u : ndarray, shape (..., 2)
        Displacement (A).
    grad : ndarray, shape (..., 2, 2)
        ``grad[..., i, j]`` = du_i / dx_j.
    """
    if field == "slow":
        return slow_displacement_gradient(xy, extent)
    q = 2 * np.pi / extent[0]
    X, Y = q * xy[..., 0], q * xy[..., 1]
    amp = STRAIN / q
    u = amp * np.stack(
        [
            np.sin(X) + np.sin(Y) + 0.4 * np.cos(X + Y),
            0.8 * np.sin(Y) - np.sin(X) + 0.5 * np.cos(X - Y),
        ],
        axis=-1,
    )
    dux = (np.cos(X) - 0.4 * np.sin(X + Y), np.cos(Y) - 0.4 * np.sin(X + Y))
    duy = (-np.cos(X) - 0.5 * np.sin(X - Y), 0.8 * np.cos(Y) + 0.5 * np.sin(X - Y))
    grad = STRAIN * np.stack([np.stack(dux, -1), np.stack(duy, -1)], -2)
    return u, grad


def slow_displacement_gradient(
    xy: np.ndarray, extent: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``SLOW_DISPLACEMENT`` and its gradient (see ``displacement_gradient``).

    With r = Ly / Lx = 1/4: exx = e (cos X - 0.5 r sin X sin Y), eyy = 0.7 e (1 + 0.4 sin X)
    cos Y, du_x/dy = 0.5 e cos X cos Y, du_y/dx = e (-0.8 sin X + 0.28 r cos X sin Y).
    """
    Lx, Ly = extent
    qx, qy = 2 * np.pi / Lx, 2 * np.pi / Ly
    X, Y = qx * xy[..., 0], qy * xy[..., 1] + np.pi / 4
    sX, cX, sY, cY = np.sin(X), np.cos(X), np.sin(Y), np.cos(Y)
    e, r = SLOW_STRAIN, qx / qy
    u = np.stack(
        [
            e / qx * sX + e / qy * 0.5 * cX * sY,
            e / qx * 0.8 * cX + e / qy * 0.7 * (1 + 0.4 * sX) * sY,
        ],
        axis=-1,
    )
    dux = (cX - 0.5 * r * sX * sY, 0.5 * cX * cY)
    duy = (-0.8 * sX + 0.28 * r * cX * sY, 0.7 * (1 + 0.4 * sX) * cY)
    grad = e * np.stack([np.stack(dux, -1), np.stack(duy, -1)], -2)
    return u, grad


def local_basis(
    xy: np.ndarray, g0: np.ndarray, extent: tuple[float, float], field: str = "fast"
) -> np.ndarray:
    """Local reciprocal basis G = g0 F(r0)^-1 at current positions ``xy``.

    Parameters
    ----------
    xy : ndarray, shape (..., 2)
        Current (deformed) positions (A).
    g0 : ndarray, shape (2, 2)
        Reference basis, rows g1 and g2.
    extent : (float, float)
        The supercell (A).
    field : {"fast", "slow"}
        The displacement field.

    Returns
    -------
    ndarray, shape (..., 2, 2)
        Rows g1 and g2 of the local basis, in the units of ``g0``.
    """
    r0 = xy.copy()
    for _ in range(12):  # contraction by |grad u| < 0.02: 1e-20 after 12 steps
        r0 = xy - displacement_gradient(r0, extent, field)[0]
    F = np.eye(2) + displacement_gradient(r0, extent, field)[1]
    return g0 @ np.linalg.inv(F)


def slice_potentials(case: Case) -> np.ndarray:
    """Projected potential of each slice of one repeat along the beam.

    The structure factor of the displaced atoms is summed exactly and multiplied by abTEM's
    projected scattering factor (Lobato), which is what abTEM's ``Potential`` converges
    to as its sampling is refined.

    Parameters
    ----------
    case : Case
        The simulation: its crystal, supercell, grid and displacement field.

    Returns
    -------
    ndarray, shape (crystal.slices, *case.gpts), float32
        Projected potential (abTEM's units, eV A).
    """
    crystal = case.lattice
    gpts = case.gpts
    sampling = case.extent[0] / gpts[0]  # the same along y
    kx = np.fft.fftfreq(gpts[0], sampling)
    ky = np.fft.fftfreq(gpts[1], sampling)
    nx, ny = case.repeats
    cells = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij"), -1)
    integrator = ScatteringFactorProjectionIntegrals(parametrization="lobato")
    out = np.zeros((crystal.slices, *gpts))
    for symbol, fx, fy, index in crystal.sites:
        r0 = (cells.reshape(-1, 2) + (fx, fy)) * crystal.repeat
        xy = r0 + displacement_gradient(r0, case.extent, case.field)[0]
        ex = np.exp(-2j * np.pi * np.outer(xy[:, 0], kx))
        ey = np.exp(-2j * np.pi * np.outer(xy[:, 1], ky))
        structure = np.einsum("ak,al->kl", ex, ey)  # no BLAS: fixed summation order
        f = integrator.get_scattering_factor(symbol, gpts, (sampling,) * 2, "cpu")
        out[index] += np.fft.ifft2(structure * f).real / sampling**2
    return out.astype(np.float32)


def make_probe(case: Case, tilt: bool = True) -> abtem.Probe:
    """The incident probe of ``case`` on the simulation grid (``tilt=False``: untilted)."""
    return abtem.Probe(
        energy=ENERGY,
        semiangle_cutoff=case.semiangle,
        tilt=case.tilt if tilt else (0.0, 0.0),
        extent=case.extent,
        gpts=case.gpts,
    )


def probe_wave(probe: abtem.Probe) -> np.ndarray:
    """The incident probe's wave centred on pixel (0, 0), complex128 on the grid."""
    wave = probe.build(scan=abtem.CustomScan([(0.0, 0.0)]), lazy=False).array
    return np.asarray(wave).reshape(probe.gpts).astype(np.complex128)


def probe_weight(probe: abtem.Probe) -> np.ndarray:
    """Incident probe intensity centred on pixel (0, 0), normalised to sum 1."""
    intensity = np.abs(probe_wave(probe)) ** 2
    return intensity / intensity.sum()


def scan_positions(n: int | tuple, extent: float | tuple) -> np.ndarray:
    """Probe positions (nx * ny, 2) in A, x-major: position (i, j) is (i Lx / nx, j Ly / ny)."""
    nx, ny = (n, n) if isinstance(n, int) else n
    ij = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij"), -1)
    return ij.reshape(-1, 2) * np.broadcast_to(extent, 2) / (nx, ny)


def detector_window(case: Case) -> tuple[slice, slice]:
    """Raw pixels (fftshifted simulation grid) that make up the 256 x 256 detector.

    Along kx with ``case.binning`` = b > 1: b * 256 + 1 raw pixels, binned by ``bin_kx``.
    """
    b = case.binning
    cx, cy = case.gpts[0] // 2, case.gpts[1] // 2  # the direct beam (fftshift, even gpts)
    lo_x = cx - b * (DETECTOR // 2) - b // 2
    lo_y = cy - DETECTOR // 2
    width = b * DETECTOR + (1 if b > 1 else 0)
    return slice(lo_x, lo_x + width), slice(lo_y, lo_y + DETECTOR)


def bin_kx(window: np.ndarray, b: int) -> np.ndarray:
    """Bin b:1 along axis -2 (b even) with weights (1/2, 1, ..., 1, 1/2) over b + 1 pixels.

    ``window`` holds b * n + 1 pixels along axis -2; output pixel m takes raw pixels
    b m ... b m + b (the ends shared with its neighbours), centred on raw pixel b m + b / 2,
    so the direct beam (raw centre) lands on an output pixel centre.
    """
    if b == 1:
        return window
    n = (window.shape[-2] - 1) // b
    body = window[..., :-1, :].reshape(*window.shape[:-2], n, b, window.shape[-1]).sum(-2)
    return body + 0.5 * (window[..., b::b, :] - window[..., :-1:b, :])


def vacuum_pattern(case: Case) -> np.ndarray:
    """The probe's pattern without a specimen on the stored detector (float32).

    The untilted probe: the direct beam is where the 000 disk is without tilt. Same window,
    binning and normalisation (sum 1 over the 256 x 256 detector) as ``data``, then cropped.
    """
    wave = probe_wave(make_probe(case, tilt=False))
    intensity = np.fft.fftshift(np.abs(np.fft.fft2(wave)) ** 2)
    sx, sy = detector_window(case)
    pattern = bin_kx(intensity[sx, sy], case.binning)
    pattern = pattern / pattern.sum()
    lo = DETECTOR // 2 - case.crop // 2
    return pattern[lo : lo + case.crop, lo : lo + case.crop].astype(np.float32)


def run_multislice(case: Case, probe: abtem.Probe) -> np.ndarray:
    """Diffraction patterns of every probe position at every exit plane.

    Returns
    -------
    ndarray, shape (planes, Nx, Ny, DETECTOR, DETECTOR), float32
        Each pattern scaled to sum 1 over the detector.
    """
    crystal = case.lattice
    slices = slice_potentials(case)
    nz = max(case.cells)
    potential = abtem.PotentialArray(
        np.tile(slices, (nz, 1, 1)),
        slice_thickness=crystal.height / crystal.slices,
        extent=case.extent,
        exit_planes=tuple(c * crystal.slices - 1 for c in case.cells),
    )
    scan = abtem.CustomScan(scan_positions(case.scan_shape, case.extent))
    detector = abtem.PixelatedDetector(max_angle="full")
    patterns = probe.multislice(potential, scan=scan, detectors=detector, max_batch=8)
    sx, sy = detector_window(case)
    window = patterns.array[..., sx, sy]
    with dask.config.set(scheduler="threads", num_workers=os.cpu_count()):
        data = np.asarray(window.compute(), dtype=np.float64)
    data = data.reshape(len(case.cells), *case.scan_shape, *window.shape[-2:])
    data = np.stack([bin_kx(plane, case.binning) for plane in data])
    data /= data.sum(axis=(-2, -1), keepdims=True)
    return data.astype(np.float32)


def truth(case: Case, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probe-averaged and pointwise local bases at the scan positions.

    Parameters
    ----------
    case
        The simulation.
    weight : ndarray, shape ``case.gpts``
        Probe intensity centred on pixel (0, 0), summing to 1 (periodic on the supercell).

    Returns
    -------
    g, g_point : ndarray, shape (Nx, Ny, 2, 2)
    """
    L, gpts, shape = case.extent, case.gpts, case.scan_shape
    grid = scan_positions(gpts, L).reshape(*gpts, 2)
    field = local_basis(grid, case.g0, L, case.field)
    spectrum = np.fft.fft2(np.moveaxis(field, (0, 1), (-2, -1)))
    averaged = np.fft.ifft2(np.conj(np.fft.fft2(weight)) * spectrum).real
    step = (gpts[0] // shape[0], gpts[1] // shape[1])
    g = np.moveaxis(averaged, (-2, -1), (0, 1))[:: step[0], :: step[1]]
    positions = scan_positions(shape, L).reshape(*shape, 2)
    return g, local_basis(positions, case.g0, L, case.field)


def visible_reflections(
    mean: np.ndarray, origin: np.ndarray, basis: np.ndarray, g0: np.ndarray, radius: float
) -> np.ndarray:
    """Indices (h, k) of the disks wholly on the detector with >= 1e-4 of the intensity.

    Parameters
    ----------
    mean : ndarray, shape (Qx, Qy)
        Mean pattern (scaled as the stored data).
    origin : ndarray, shape (2,)
        Centre of the 000 disk (px).
    basis : ndarray, shape (..., 2, 2)
        Local bases over the scan (px): a disk must fit at each of its positions.
    g0 : ndarray, shape (2, 2)
        Reference basis (px).
    radius : float
        Disk radius (px); 1 px is added for the soft edge.
    """
    n = int(np.ceil(max(mean.shape) / np.linalg.norm(g0, axis=1).min()))
    hk = np.stack(np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij"), -1)
    hk = hk.reshape(-1, 2)
    centres = origin + hk @ g0
    shift = np.abs(hk @ (basis - g0).reshape(-1, 2, 2)).max(axis=0).max(axis=-1)
    reach = radius + 1 + shift[:, None]
    inside = np.all((centres - reach >= 0) & (centres + reach <= np.array(mean.shape) - 1), 1)
    qx, qy = np.indices(mean.shape)
    keep = []
    for (h, k), c, ok in zip(hk, centres, inside):
        disk = (qx - c[0]) ** 2 + (qy - c[1]) ** 2 <= (radius + 1) ** 2
        if ok and mean[disk].sum() >= 1e-4:
            keep.append((h, k))
    return np.array(keep, dtype=np.int64).reshape(-1, 2)


def write(path: Path, data: np.ndarray, datasets: dict, attrs: dict) -> None:
    """Write one file atomically and reproducibly (no time stamps, fixed chunks)."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w", track_order=False) as f:
        f.create_dataset(
            "data", data=data, chunks=(1, 1, *data.shape[2:]), compression="gzip",
            compression_opts=4, shuffle=True, track_times=False,
        )  # fmt: skip
        for name, value in datasets.items():
            f.create_dataset(name, data=value, track_times=False)
        for name, value in attrs.items():
            f.attrs[name] = value
    os.replace(tmp, path)


def output_paths(case: Case, out: Path | None) -> list[Path]:
    """File of each thickness of ``case``."""
    folder = out if out is not None else REPO / case.folder
    return [folder / case.file.format(t=round(c * case.lattice.height)) for c in case.cells]


def add_vacuum(case: Case, paths: list[Path]) -> list[Path]:
    """Add the ``vacuum`` dataset to the existing files that lack it; the files changed."""
    missing = []
    for path in paths:
        with h5py.File(path, "r") as f:
            if "vacuum" not in f:
                missing.append(path)
    if missing:
        vacuum = vacuum_pattern(case)
        for path in missing:
            with h5py.File(path, "r+") as f:
                f.create_dataset("vacuum", data=vacuum, track_times=False)
    return missing


def run_case(name: str, out: Path | None) -> None:
    """Simulate case ``name`` and write its file(s), unless they all exist (then add the
    ``vacuum`` dataset where it is missing)."""
    case = CASES[name]
    paths = output_paths(case, out)
    if all(p.exists() for p in paths):
        added = add_vacuum(case, paths)
        note = f" (vacuum added to {len(added)})" if added else ""
        print(f"{name}: cached{note}, {', '.join(map(str, paths))}")
        return
    start = time.perf_counter()
    L = case.extent[1]  # 1 / L is the detector pixel along kx and ky
    probe = make_probe(case)
    data = run_multislice(case, probe)
    g, g_point = truth(case, probe_weight(probe))
    lo = DETECTOR // 2 - case.crop // 2
    data = data[..., lo : lo + case.crop, lo : lo + case.crop]
    origin = np.full((*case.scan_shape, 2), DETECTOR // 2 - lo, dtype=np.float64)
    radius = case.semiangle * 1e-3 / energy2wavelength(ENERGY) * L
    vacuum = vacuum_pattern(case)
    for cells, path, frames in zip(case.cells, paths, data):
        mean = frames.mean((0, 1))
        hk = visible_reflections(mean, origin[0, 0], g_point, case.g0, radius)
        datasets = {
            "truth/g": g, "truth/g_point": g_point, "truth/origin": origin,
            "truth/g0": case.g0, "truth/hk": hk, "vacuum": vacuum,
        }  # fmt: skip
        write(path, frames, datasets, attributes(name, case, cells, radius))
    print(f"{name}: {time.perf_counter() - start:.0f} s, {', '.join(map(str, paths))}")


def attributes(name: str, case: Case, cells: int, radius: float) -> dict:
    """Root attributes of a file (see the module docstring)."""
    crystal = case.lattice
    Lx, L = case.extent
    shape = case.scan_shape
    if case.square:
        cell, step, gpts, extra = L, L / shape[0], GPTS, {}
    else:
        cell = np.array(case.extent)
        step = np.array([Lx / shape[0], L / shape[1]])
        gpts = np.array(case.gpts, dtype=np.int64)
        extra = {"detector_binning": np.array([case.binning, 1], dtype=np.int64)}
    return {
        "kind": "multislice",
        "case": name,
        "crystal": crystal.name,
        "zone": crystal.zone,
        "thickness_A": cells * crystal.height,
        "energy_eV": ENERGY,
        "semiangle_mrad": case.semiangle,
        "tilt_mrad": float(np.hypot(*case.tilt)),
        "tilt_xy_mrad": np.array(case.tilt, dtype=np.float64),
        "dk_inv_A": 1 / L,
        "disk_radius_px": radius,
        "scan_step_A": step,
        "cell_A": cell,
        "d_A": np.array([crystal.d, crystal.d]),
        "lattice_A": np.array([crystal.d, crystal.d]),
        "displacement": SLOW_DISPLACEMENT if case.field == "slow" else DISPLACEMENT,
        "generator": "benchmarks/multislice.py",
        "abtem_version": abtem.__version__,
        "gpts": gpts,
        "sampling_A": L / case.gpts[1],
        "slice_thickness_A": crystal.height / crystal.slices,
        "frozen_phonons": 0,
        **extra,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: simulate the named cases in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="+", choices=list(CASES), metavar="CASE")
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"output folder (default {CACHE.relative_to(REPO)}/; the small case: tests/data/)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE", "diagnostics.progress_bar": False})
    for name in args.cases:
        run_case(name, args.out)


if __name__ == "__main__":
    main()
