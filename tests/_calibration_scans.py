"""Simulated calibration scans shared by the origin, ellipse and pixel tests (cached once
per test session, so that test files run together simulate each scan only once)."""

import functools

import strainkit as sk
from strainkit import simulate


@functools.cache
def vacuum_probe() -> sk.ProbeTemplate:
    """The probe template fitted on a simulated 8 x 8 vacuum scan (default microscope)."""
    vac = simulate.simulate_vacuum(scan_shape=(8, 8), seed=4)
    return sk.ProbeTemplate().fit(sk.DataCube(vac.data))


def find_peaks(data) -> sk.BraggPeaks:
    """Raw-detector peaks of a simulated scan (BraggDiskFinder with the vacuum probe)."""
    return sk.BraggDiskFinder(probe=vacuum_probe(), progress=False).transform(sk.DataCube(data))


@functools.cache
def polycrystal(ratio: float, angle: float, scan: int, seed: int = 0):
    """(truth, raw peaks) of a gold polycrystal scan with the ellipse (ratio, angle), the
    default microscope otherwise (2e5 e-/pattern, 1 px PSF, plane descan)."""
    microscope = simulate.Microscope(ellipse=(ratio, angle))
    sim = simulate.simulate_polycrystal(microscope, scan_shape=(scan, scan), seed=seed)
    return sim.truth, find_peaks(sim.data)
