"""Time of each stage of the strain pipeline, from files to strain maps, and the
throughput of the lattice fit + strain calculation.

Writes the demo data set (64 x 64 experimental scan of 128 x 128 patterns, gold
calibration scan, images) into a temporary folder, fits the calibrations, then times the
fitted pipeline on the experimental scan read from its HDF5 file, stage by stage, and the
lattice fit + strain on a large synthetic peak table.

Run: ``python benchmarks/bench_pipeline.py [--jobs 2]``
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import strainkit as sk
from strainkit import simulate
from strainkit.demo import reference_rows


def timed(label: str, fn, rows: list):
    start = time.perf_counter()
    out = fn()
    rows.append((label, time.perf_counter() - start))
    return out


def synthetic_peaks(n_positions: int, seed: int = 0) -> sk.BraggPeaks:
    """A square lattice of 49 calibrated peaks per position with 0.5 mÅ⁻¹ noise."""
    rng = np.random.default_rng(seed)
    h, k = np.meshgrid(np.arange(-3, 4), np.arange(-3, 4), indexing="ij")
    hk = np.stack([h.ravel(), k.ravel()], axis=1).astype(float)
    g = np.array([[0.224, 0.0], [0.0, 0.224]])
    q = (hk @ g)[None] + rng.normal(0, 5e-4, (n_positions, len(hk), 2))
    side = int(np.sqrt(n_positions))
    intensity = np.broadcast_to(np.exp(-(hk**2).sum(1) / 8), q.shape[:2]).ravel()
    offsets = np.arange(0, n_positions * len(hk) + 1, len(hk))
    return sk.BraggPeaks(
        q[..., 0].ravel(),
        q[..., 1].ravel(),
        intensity,
        np.ones(q.shape[0] * q.shape[1]),
        offsets,
        (side, n_positions // side),
        units="A^-1",
        frame="real",
        calibrations=("origin", "ellipse", "pixel", "rotation"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    print("reproduce: python benchmarks/bench_pipeline.py --jobs", args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        paths = simulate.write_demo(tmp, calibration_shape=(40, 40))
        probe = sk.ProbeTemplate().fit(sk.read(paths["vacuum"]))
        finder = sk.BraggDiskFinder(probe=probe, n_jobs=args.jobs, progress=False)
        centred = sk.OriginCalibrator().fit_transform(
            finder.transform(sk.read(paths["calibration"]))
        )
        ellipse = sk.EllipticalCalibrator().fit(centred)
        pixel = sk.PixelCalibrator(crystal=sk.crystal.fcc(4.078)).fit(ellipse.transform(centred))
        haadf = sk.read_image(paths["images"], "haadf")
        shadow = sk.read_image(paths["images"], "shadow")
        rotation = sk.RotationCalibrator(ellipse=ellipse).fit(haadf, shadow)
        cube = sk.read(paths["experiment"])
        pipe = sk.make_strain_pipeline(
            probe,
            ellipse,
            pixel,
            rotation,
            reference=reference_rows(cube.scan_shape),
            finder={"n_jobs": args.jobs, "progress": False},
        )
        pipe.fit_transform(cube)  # warm up (numba, FFT plans, the page cache)
        rows: list = []
        start = time.perf_counter()
        x = timed("read + disks", lambda: pipe.named_steps["disks"].transform(cube), rows)
        x = timed(
            "origin (fit + transform)", lambda: pipe.named_steps["origin"].fit_transform(x), rows
        )
        for name in ("ellipse", "pixel", "rotation"):
            x = timed(name, lambda name=name, x=x: pipe.named_steps[name].transform(x), rows)
        lat = timed(
            "lattice (fit + transform)",
            lambda: pipe.named_steps["lattice"].fit(x).transform(x),
            rows,
        )
        timed(
            "strain (fit + transform)",
            lambda: pipe.named_steps["strain"].fit(lat).transform(lat),
            rows,
        )
        total = time.perf_counter() - start
    print(f"64x64 scan of 128x128 patterns from HDF5, n_jobs={args.jobs}:")
    for label, seconds in rows:
        print(f"  {label:28s} {seconds:6.3f} s")
    print(f"  {'total':28s} {total:6.3f} s")

    peaks = synthetic_peaks(256 * 256)
    fitter, calc = sk.LatticeFitter(), sk.StrainCalculator()
    fitter.fit(peaks)
    start = time.perf_counter()
    lattice = fitter.transform(peaks)
    calc.fit(lattice).transform(lattice)
    elapsed = time.perf_counter() - start
    print(
        f"lattice fit + strain, 256x256 positions x 49 peaks: {elapsed:.2f} s "
        f"= {peaks.n_positions / elapsed:,.0f} positions/s"
    )


if __name__ == "__main__":
    main()
