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

import numba
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

    throughput()


def throughput(side: int = 256, repeat: int = 5) -> None:
    """Lattice fit + strain on ``side`` x ``side`` positions of 49 peaks: best of ``repeat``.

    One untimed run first (numba compiles or loads its cache on the first call). Times
    ``LatticeFitter.transform`` (the lattice at every position, as a LatticeMap) and
    ``StrainCalculator.fit`` + ``transform`` (reference = the scan's median lattice, the
    StrainMap with standard errors and lattice parameters), each repeat's pair in turn.
    """
    peaks = synthetic_peaks(side * side)
    n = peaks.n_positions
    per_position = peaks.n_peaks / n
    fitter, calc = sk.LatticeFitter(), sk.StrainCalculator()
    fitter.fit(peaks)
    calc.fit(fitter.transform(peaks)).transform(fitter.transform(peaks))  # warm up
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        lattice = fitter.transform(peaks)
        t1 = time.perf_counter()
        calc.fit(lattice).transform(lattice)
        t2 = time.perf_counter()
        runs.append((t1 - t0, t2 - t1, t2 - t0))
    lat, strain, both = (min(r[i] for r in runs) for i in range(3))
    print(
        f"lattice fit + strain: {n:,} positions ({side} x {side}) x {per_position:.0f} "
        f"peaks/position, {numba.get_num_threads()} numba threads "
        f"({numba.threading_layer()}), best of {repeat} after a warm-up run:"
    )
    print(f"  {'lattice (LatticeFitter.transform)':44s} {lat * 1e3:7.1f} ms")
    print(f"  {'strain (StrainCalculator.fit + transform)':44s} {strain * 1e3:7.1f} ms")
    print(
        f"  {'lattice + strain':44s} {both * 1e3:7.1f} ms = {n / both:,.0f} positions/s"
        f" (median of {repeat}: {n / np.median([r[2] for r in runs]):,.0f})"
    )


if __name__ == "__main__":
    main()
