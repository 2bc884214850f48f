"""Synthetic 4D-STEM data with exact ground truth, for tests, benchmarks and the demo.

Everything follows the conventions of :mod:`strainkit._geometry` (see DESIGN.md):

* Detector pixel (i, j) has its centre at coordinate (i, j), in pixel-index units; x is
  array axis 0. The detector centre of a 128 x 128 detector is (63.5, 63.5).
* The *corrected* detector frame is the raw detector with the elliptical distortion
  removed (the minor axis is kept). A corrected offset ``v`` from the pattern origin
  appears on the raw detector at ``origin + D @ v``, ``D = distortion_matrix(ratio, 1, angle)``.
  The pixel size (Å⁻¹ per px) applies in the corrected frame.
* A real-space vector ``v_R`` (Å or Å⁻¹) appears in the corrected frame as ``R(φ) P v_R``
  (rotation, then the x↔y swap ``P`` when ``flip``).
* Strain: ``G = F⁻ᵀ G0``, ε = (F + Fᵀ)/2 − I, θ = (F₁₀ − F₀₁)/2.

A disk is the soft-edged profile ``0.5 erfc((ρ − R) / (√2 w))`` averaged over an
``oversample`` x ``oversample`` grid inside each pixel (pixel integration). Its flat top
equals its amplitude and its integral is ``amplitude · π (R² + w²)``. The detector then
blurs each pattern with a Gaussian point-spread function, ``Microscope.psf_sigma``
(1 px by default, a realistic detector; 0 turns it off), before the noise.

Every random draw comes from ``np.random.default_rng`` on a child of
``SeedSequence(seed)`` that is specific to the scan kind and to the purpose (descan
jitter, intensities, noise), so one scan's size or knobs never change another scan.

The code lives in private modules, by what it does: ``_microscope`` (the instrument),
``_render`` (numba disk renderer, background, expected pattern), ``_scans`` (whole scans,
noise, truth records, vacuum), ``_crystal``, ``_polycrystal``, ``_images`` (HAADF and
shadow), ``_bounds`` (Cramér–Rao bounds), ``_demo`` (workflow and demo files) and
``_validate`` (knob checks, random streams). Import from ``strainkit.simulate``.

Examples
--------
>>> from strainkit import simulate
>>> sim = simulate.simulate_crystal(scan_shape=(2, 3))
>>> sim.data.shape, sim.data.dtype
((2, 3, 128, 128), dtype('uint16'))
>>> sim.truth.hk.shape
(49, 2)
"""

from __future__ import annotations

from strainkit.simulate._bounds import (
    DiskCenterBound,
    crystal_disk_crb,
    crystal_strain_crb,
    disk_center_crb,
    strain_precision_bound,
)
from strainkit.simulate._crystal import CrystalTruth, Lattice, StrainField, simulate_crystal
from strainkit.simulate._demo import Workflow, read_truth, simulate_workflow, write_demo
from strainkit.simulate._images import ImageTruth, SimulatedImages, simulate_images
from strainkit.simulate._microscope import Microscope
from strainkit.simulate._polycrystal import PolycrystalTruth, simulate_polycrystal
from strainkit.simulate._render import render_background, render_disks, render_pattern
from strainkit.simulate._scans import SimulatedScan, VacuumTruth, simulate_vacuum

__all__ = [
    "CrystalTruth",
    "DiskCenterBound",
    "ImageTruth",
    "Lattice",
    "Microscope",
    "PolycrystalTruth",
    "SimulatedImages",
    "SimulatedScan",
    "StrainField",
    "VacuumTruth",
    "Workflow",
    "crystal_disk_crb",
    "crystal_strain_crb",
    "disk_center_crb",
    "read_truth",
    "render_background",
    "render_disks",
    "render_pattern",
    "simulate_crystal",
    "simulate_images",
    "simulate_polycrystal",
    "simulate_vacuum",
    "simulate_workflow",
    "strain_precision_bound",
    "write_demo",
]
