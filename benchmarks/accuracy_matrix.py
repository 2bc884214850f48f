"""Strain accuracy across renderers, detector PSF, dose, thickness and lattice: one table.

Each row runs the same pipeline on one data set with known truth
(:mod:`_cases`): a probe template from its vacuum patterns, ``BraggDiskFinder`` (the
``--subpixel`` estimators compared), ``OriginCalibrator`` fitted on the scan,
``LatticeFitter`` with the true unstrained basis as its start, and ``StrainCalculator``
against the reference region (the top quarter of the rows). The truth is the same
``StrainCalculator`` applied to the true local lattice (for multislice data, averaged
over the probe intensity), so the reference's definition cancels.

Columns, per component exx, eyy, exy and θ (rad): the RMS error over the valid
positions, its ratio to the RMS of the Cramér–Rao bound where the renderer has one, and
the slope of measured against true; then the fraction of positions with |error| < 2σ
(all four components pooled), the valid fraction, and the mean relative error of |g1|,
|g2| against the truth (absolute scale) with the σ the lattice map claims for it.

Data:
* the simulator is generated on the fly;
* ``benchmarks/.cache/flat/*.h5``: ``python benchmarks/flat_renderer.py flat_square
  flat_hex flat_oblique [--seed N]``;
* ``benchmarks/.cache/multislice/*.h5``: ``benchmarks/.venv-abtem/bin/python
  benchmarks/multislice.py si001_t54_s32 ...`` (see ``setup_abtem_venv.sh``).
Missing files are skipped with a note.

Run: ``python benchmarks/accuracy_matrix.py [--subpixel dft moment] [--only multislice]``
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _cases

import strainkit as sk
from strainkit.containers import LatticeMap

COMPONENTS = ("exx", "eyy", "exy", "theta")
PSFS = (0.0, 0.5, 1.0, 2.0)
DOSES = (None, 1e4, 1e5, 1e6)


def run_pipeline(case: _cases.Case, subpixel: str, n_jobs: int = 2):
    """Measured StrainMap and LatticeMap of a case."""
    probe = sk.ProbeTemplate().fit(np.asarray(case.vacuum, float)[None])
    finder = sk.BraggDiskFinder(probe=probe, subpixel=subpixel, n_jobs=n_jobs, progress=False)
    peaks = finder.transform(sk.DataCube(case.frames))
    centred = sk.OriginCalibrator().fit_transform(peaks)
    fitter = sk.LatticeFitter(g1=tuple(case.g0[0]), g2=tuple(case.g0[1]))
    lattice = fitter.fit(centred).transform(centred)
    # unweighted, as the truth's: the reference region need not be unstrained, and a
    # weighted mean of a varying lattice would differ from the truth's plain mean
    strain = sk.StrainCalculator(reference=case.reference, weighted=False).fit_transform(lattice)
    return strain, lattice, probe


def true_strain(case: _cases.Case):
    """The truth through the same strain calculation (reference = the same region)."""
    shape = case.g.shape[:2]
    lm = LatticeMap(
        origin=np.zeros((*shape, 2)),
        g1=case.g[..., 0, :],
        g2=case.g[..., 1, :],
        covariance=np.broadcast_to(np.eye(6), (*shape, 6, 6)).copy(),
        residual=np.zeros(shape),
        n_peaks=np.full(shape, 9),
        mask=np.ones(shape, bool),
        units="px",
        frame="detector",
    )
    calc = sk.StrainCalculator(reference=case.reference, weighted=False)
    return calc.fit_transform(lm)


def _field(strain, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A component and its σ; θ in radians (StrainMap keeps degrees)."""
    if name == "theta":
        return np.deg2rad(strain.theta_deg), np.deg2rad(strain.sigma_theta_deg)
    return np.asarray(getattr(strain, name)), np.asarray(getattr(strain, f"sigma_{name}"))


def score(case: _cases.Case, strain, lattice) -> dict:
    """RMS, bound ratio, slope per component; 2σ coverage; absolute scale error."""
    truth = true_strain(case)
    valid = np.asarray(strain.mask, bool)
    row = {"valid": valid.mean()}
    inside = []
    for name in COMPONENTS:
        meas, sigma = _field(strain, name)
        true = _field(truth, name)[0]
        err = (meas - true)[valid]
        row[f"{name}_rms"] = np.sqrt(np.mean(err**2))
        spread = np.ptp(true[valid])
        row[f"{name}_slope"] = np.polyfit(true[valid], meas[valid], 1)[0] if spread else np.nan
        inside.append(np.abs(err) < 2 * sigma[valid])
        if case.bound is not None:
            b = case.bound[name]
            use = valid & np.isfinite(b)
            row[f"{name}_ratio"] = np.sqrt(np.mean((meas - true)[use] ** 2)) / np.sqrt(
                np.mean(b[use] ** 2)
            )
    row["cover"] = np.mean(np.concatenate(inside))
    for i, gname in enumerate(("g1", "g2")):
        meas_g = np.asarray(getattr(lattice, gname))[valid]
        true_g = case.g[..., i, :][valid]
        rel = np.linalg.norm(meas_g, axis=-1) / np.linalg.norm(true_g, axis=-1) - 1
        row[f"{gname}_scale"] = rel.mean()
        cov = np.asarray(lattice.covariance)[valid][
            :, 2 + 2 * i : 4 + 2 * i, 2 + 2 * i : 4 + 2 * i
        ]
        unit = meas_g / np.linalg.norm(meas_g, axis=-1, keepdims=True)
        var = np.einsum("ni,nij,nj->n", unit, cov, unit)
        # σ of the scan's mean scale, from the per-position σ (independent positions)
        row[f"{gname}_scale_sigma"] = (
            np.sqrt(var.sum()) / len(var) / np.linalg.norm(true_g, axis=-1).mean()
        )
    return row


def reflection_bias(case: _cases.Case, subpixel: str) -> tuple[float, tuple, int]:
    """The worst per-reflection mean centre error (px) over the scan, its (h, k), and the
    reflections scored: each detected disk is matched to the nearest true centre (within
    1.5 px) and the errors of each reflection are averaged over the positions."""
    probe = sk.ProbeTemplate().fit(np.asarray(case.vacuum, float)[None])
    finder = sk.BraggDiskFinder(probe=probe, subpixel=subpixel, n_jobs=2, progress=False)
    peaks = finder.transform(sk.DataCube(case.frames))
    centres = case.centres.reshape(-1, len(case.hk), 2)
    total = np.zeros((len(case.hk), 2))
    count = np.zeros(len(case.hk))
    for p in range(peaks.n_positions):
        s = slice(peaks.offsets[p], peaks.offsets[p + 1])
        found = np.stack([peaks.qx[s], peaks.qy[s]], axis=1)
        dist = np.linalg.norm(found[:, None] - centres[p][None], axis=-1)
        idx = dist.argmin(1)
        ok = dist[np.arange(len(idx)), idx] < 1.5
        np.add.at(total, idx[ok], found[ok] - centres[p][idx[ok]])
        np.add.at(count, idx[ok], 1)
    seen = count >= 0.5 * peaks.n_positions
    mean = np.linalg.norm(total[seen] / count[seen, None], axis=1)
    worst = int(np.argmax(mean))
    return float(mean[worst]), tuple(case.hk[seen][worst].tolist()), int(seen.sum())


def header() -> str:
    cols = "".join(f"{c + ' rms':>11}{'/CRB':>6}{'slope':>8}" for c in COMPONENTS)
    return f"{'case':<40}{'est':>7}{cols}{'<2σ':>6}{'valid':>6}{'Δ|g1| (σ)':>16}{'Δ|g2| (σ)':>16}"


def line(name: str, est: str, row: dict) -> str:
    out = f"{name:<40}{est:>7}"
    for c in COMPONENTS:
        ratio = row.get(f"{c}_ratio")
        out += f"{row[f'{c}_rms']:>11.2e}{'' if ratio is None else f'{ratio:.2f}':>6}"
        out += f"{row[f'{c}_slope']:>8.4f}"
    out += f"{row['cover']:>6.2f}{row['valid']:>6.2f}"
    for g in ("g1", "g2"):
        out += f"{row[f'{g}_scale']:>+9.1e} ({row[f'{g}_scale_sigma']:.0e})"
    return out


def cases(only: str | None, seeds: int):
    """The matrix: (kind, case factory) pairs, cheapest first."""
    if only in (None, "simulator"):
        yield "simulator", lambda: _cases.simulator_case(32, 2e5)
        yield "simulator", lambda: _cases.simulator_case(8, None)
    flat = sorted((_cases.CACHE / "flat").glob("*.h5"))
    if only in (None, "flat"):
        if not flat:
            print("# no flat-renderer files: python benchmarks/flat_renderer.py ...")
        for path in flat:
            seed = int(path.stem.rsplit("seed", 1)[-1]) if "seed" in path.stem else 0
            if seed < seeds:
                yield "flat", lambda p=path: _cases.file_case(p, 0.0, 2e5)
                yield "flat", lambda p=path: _cases.file_case(p, 0.0, None)
    ms = sorted((_cases.CACHE / "multislice").glob("*.h5"))
    if only in (None, "multislice"):
        if not ms:
            print("# no multislice files: benchmarks/multislice.py (abTEM)")
        for path in ms:
            if "_s32" in path.stem:  # the full PSF x dose matrix
                for psf in PSFS:
                    for dose in DOSES:
                        yield "multislice", lambda p=path, a=psf, d=dose: _cases.file_case(p, a, d)
            else:
                for dose in (None, 1e5):
                    yield "multislice", lambda p=path, d=dose: _cases.file_case(p, 1.0, d)


def print_bias(args) -> None:
    """Noise-free flat disks: the worst reflection's mean error, per renderer and case."""
    made = [lambda: _cases.simulator_case(8, None)]
    for path in sorted((_cases.CACHE / "flat").glob("*seed0.h5")):
        made.append(lambda p=path: _cases.file_case(p, 0.0, None))
    print(
        f"{'case (noise-free)':<40}{'est':>7}{'worst |mean error| (px)':>26}{'(h, k)':>10}{'n':>4}"
    )
    for make in made:
        case = make()
        for est in args.subpixel:
            worst, hk, n = reflection_bias(case, est)
            print(f"{case.name:<40}{est:>7}{worst:>26.4f}{hk!s:>10}{n:>4}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subpixel", nargs="+", default=["moment", "dft"])
    parser.add_argument("--only", choices=["simulator", "flat", "multislice"])
    parser.add_argument("--seeds", type=int, default=1, help="flat-renderer seeds used")
    parser.add_argument("--match", default="", help="only cases whose name contains this")
    parser.add_argument("--bias", action="store_true", help="the per-reflection bias table")
    args = parser.parse_args()
    print("reproduce: python benchmarks/accuracy_matrix.py", " ".join(sys.argv[1:]))
    if args.bias:
        print_bias(args)
        return
    print(header())
    for _kind, make in cases(args.only, args.seeds):
        case = make()
        if args.match not in case.name:
            continue
        for est in args.subpixel:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    strain, lattice, _ = run_pipeline(case, est)
                except ValueError as err:  # e.g. no valid position in the reference
                    print(f"{case.name:<40}{est:>7}   failed: {str(err)[:120]}", flush=True)
                    continue
            print(line(case.name, est, score(case, strain, lattice)), flush=True)
            for w in sorted({str(w.message) for w in caught}):
                print(f"    warning: {w[:160]}")


if __name__ == "__main__":
    main()
