"""Test data with known truth for the accuracy benchmarks, from three renderers.

Every case comes as a :class:`Case`: the 4D patterns (with detector PSF and Poisson noise
applied here, from a seed), a vacuum pattern for the probe template, the true local
reciprocal basis at every position in detector px (rows g1, g2; for multislice data the
average over the probe's intensity, which a disk's first moment measures), the reference
region, and the Cramér–Rao bound of the strain where the renderer provides one.

* ``simulator``: :func:`strainkit.simulate.simulate_crystal` (flat disks drawn the way
  strainkit's kernels assume), with no ellipse, rotation or flip, so that the detector
  frame is the real-space frame and the bound's components are the map's.
* ``flat``: ``benchmarks/flat_renderer.py``, an independently written flat-disk renderer
  (point-sampled erfc edges, a power-law background, an elliptical distortion, uint16).
* ``multislice``: ``benchmarks/multislice.py`` (abTEM, dynamical scattering).

The two file-based kinds share one HDF5 layout (see those scripts' docstrings):
``data`` (noise-free intensity per incident electron), ``truth/g``, ``truth/g0``,
``truth/origin``, ``truth/hk`` and, for the flat renderer, ``truth/centres`` and
``truth/crb_strain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from strainkit import simulate
from strainkit.probe import disk_model

CACHE = Path(__file__).resolve().parent / ".cache"


@dataclass
class Case:
    """One data set with its truth, ready for the pipeline."""

    name: str
    frames: np.ndarray  # (Rx, Ry, Qx, Qy)
    vacuum: np.ndarray  # (Qx, Qy) or (n, Qx, Qy): vacuum patterns for the probe template
    g: np.ndarray  # (Rx, Ry, 2, 2) true local basis in detector px, rows g1, g2
    g0: np.ndarray  # (2, 2) unstrained basis, rows
    reference: np.ndarray  # (Rx, Ry) bool: the reference region
    bound: dict | None = None  # std bound of exx, eyy, exy, theta (rad) per position
    centres: np.ndarray | None = None  # (Rx, Ry, K, 2) true disk centres
    hk: np.ndarray | None = None  # (K, 2)
    info: dict = field(default_factory=dict)


def _noisy(mean: np.ndarray, dose: float | None, seed: int, dtype=np.float32) -> np.ndarray:
    """Poisson counts of ``mean`` (per electron) at ``dose`` electrons per pattern."""
    if dose is None:
        return mean.astype(np.float32)
    rng = np.random.default_rng(seed)
    return rng.poisson(mean * dose).astype(dtype)


def _blur(frames: np.ndarray, psf: float) -> np.ndarray:
    """A Gaussian detector PSF of ``psf`` px (σ), applied to every frame."""
    if not psf:
        return frames
    return ndimage.gaussian_filter(frames, (0, 0, psf, psf), mode="constant")


def reference_rows(shape: tuple[int, int], fraction: float = 0.25) -> np.ndarray:
    """The first ``fraction`` of the scan rows."""
    ref = np.zeros(shape, bool)
    ref[: max(1, round(shape[0] * fraction))] = True
    return ref


def simulator_case(
    scan: int = 32, dose: float | None = 2e5, seed: int = 11, bound_step: int = 2
) -> Case:
    """strainkit's own simulator in the real-space frame, with the strain bound."""
    scope = simulate.Microscope(ellipse=(1.0, 0.0), rotation_deg=0.0, flip=False, dose=dose)
    sim = simulate.simulate_crystal(scope, scan_shape=(scan, scan), seed=seed)
    t = sim.truth
    # detector-frame basis: the centres are exactly origin + h g1 + k g2
    hk1 = np.c_[np.ones(len(t.hk)), t.hk]
    rows = t.centers.reshape(scan * scan, len(t.hk), 2)
    sol = np.linalg.pinv(hk1) @ rows  # (n, 3, 2): origin, g1, g2
    g = sol[:, 1:].reshape(scan, scan, 2, 2)
    ref = np.asarray(t.reference_mask, bool)
    where = np.zeros((scan, scan), bool)
    where[::bound_step, ::bound_step] = True
    bound = None
    if dose is not None:
        b = simulate.crystal_strain_crb(sim, positions=where)
        bound = {k: b[k] for k in ("exx", "eyy", "exy")}
        bound["theta"] = np.deg2rad(b["theta_deg"])
    vac = simulate.simulate_vacuum(scope, scan_shape=(4, 4), seed=seed + 1).data
    return Case(
        name=f"simulator dose={_dose(dose)}",
        frames=np.asarray(sim.data),
        vacuum=np.asarray(vac, float).reshape(-1, *vac.shape[2:]),
        g=g,
        g0=g[ref].mean(0),
        reference=ref,
        bound=bound,
        centres=t.centers,
        hk=t.hk,
        info={"kind": "simulator", "dose": dose},
    )


def _dose(dose: float | None) -> str:
    return "inf" if dose is None else f"{dose:.0e}".replace("+0", "")


def file_case(
    path: str | Path, psf: float = 0.0, dose: float | None = None, seed: int = 0
) -> Case:
    """A flat-renderer or multislice file, with a detector PSF (σ px) and a dose applied.

    The vacuum pattern is the file's ``vacuum`` dataset when it has one (multislice: the
    probe without a specimen), else a point-sampled soft disk of the file's disk radius
    and edge, blurred by the same PSF.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        mean = f["data"][()].astype(np.float64)
        attrs = dict(f.attrs)
        truth = {k: f["truth"][k][()] for k in f["truth"]}
        vacuum = f["vacuum"][()].astype(np.float64) if "vacuum" in f else None
    shape = mean.shape[2:]
    if vacuum is None:
        radius = float(attrs.get("disk_radius_px", attrs.get("radius_px", 6.0)))
        edge = float(attrs.get("edge_px", 0.3))
        centre = truth["origin"].reshape(-1, 2).mean(0)
        vacuum = disk_model(shape, centre, radius, edge)
        vacuum /= vacuum.sum()
    frames = _noisy(_blur(mean, psf), dose, seed, np.uint16 if dose else np.float32)
    vac = _noisy(_blur(np.broadcast_to(vacuum, (1, 16, *shape)), psf), dose, seed + 1)
    scan = mean.shape[:2]
    bound = None
    if "crb_strain" in truth and dose is not None:
        crb = truth["crb_strain"] * np.sqrt(float(attrs["crb_dose"]) / dose)
        bound = dict(zip(("exx", "eyy", "exy", "theta"), np.moveaxis(crb, -1, 0)))
    kind = attrs.get("kind", "?")
    label = path.stem.replace("_seed", " s")
    return Case(
        name=f"{label} psf={psf:g} dose={_dose(dose)}",
        frames=frames,
        vacuum=vac.reshape(-1, *shape),
        g=truth["g"],
        g0=truth["g0"],
        reference=reference_rows(scan),
        bound=bound,
        centres=truth.get("centres"),
        hk=truth.get("hk"),
        info={"kind": kind, "dose": dose, "psf": psf, **attrs},
    )
