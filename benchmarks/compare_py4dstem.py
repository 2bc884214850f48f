"""Compare strainkit's Bragg disk finder with py4DSTEM 0.14.18 on the same simulated scan.

Setup, once (py4DSTEM pins numpy<2 and scikit-learn<1.5, so it gets its own
virtual environment, ``benchmarks/.venv-py4dstem``)::

    bash benchmarks/setup_py4dstem_venv.sh

Run, from strainkit's own environment::

    python benchmarks/compare_py4dstem.py --scan 32

This script simulates a strained single-crystal scan and a vacuum scan with
``strainkit.simulate`` (the default microscope: 128 x 128 detector, 49 disks of radius
6 px, 16 px apart, 2e5 e⁻ per pattern, ±20% intensity modulation, 4% background, descan,
ellipse 1.025, 1 px PSF), writes them to a temporary directory as ``.npy`` and runs
``_py4dstem_worker.py`` with the virtual environment's Python. The worker builds
py4DSTEM's probe and kernels from the vacuum scan and runs ``find_Bragg_disks`` with
each kernel and subpixel method. Back here, strainkit finds the disks of the same data;
every method's peaks are matched to the true disk centres and one table is printed.

py4DSTEM (GPL-3.0) is only *called*, in its own process; none of its code is in
strainkit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = HERE / ".venv-py4dstem"
WORKER = HERE / "_py4dstem_worker.py"
SETUP = HERE / "setup_py4dstem_venv.sh"

# py4DSTEM's parameters. Radius-dependent ones are in units of the probe radius that
# py4DSTEM itself measures (get_probe_size); the worker resolves them.
PY4DSTEM_CONFIG = {
    # sine-squared trench of the 'sigmoid' kernel, from 1 to 2 probe radii, as in
    # py4DSTEM's strain tutorials and tests: radii=(alpha, 2 * alpha)
    "trench_radii": [1.0, 2.0],
    "min_spacing_radii": 1.0,  # minPeakSpacing = 1 radius (disks are 16 px = 2.7 radii apart)
    "edge_boundary_radii": 1.0,  # edgeBoundary = round(radius), an int as py4DSTEM requires
    "common": {
        "corrPower": 1.0,  # plain cross-correlation
        # no Gaussian blur of the correlation before the maxima (sigma_cc defaults to 2):
        # blurring doubles the parabolic fit's error on this data; 'multicorr' refines
        # the unblurred correlation either way
        "sigma": 0,
        "minAbsoluteIntensity": 0.0,
        "minRelativeIntensity": 0.005,
        "relativeToPeak": 0,
        "maxNumPeaks": 100,
        "upsample_factor": 16,  # used by 'multicorr' only
    },
    "runs": [
        {"name": "sigmoid_poly", "kernel": "sigmoid", "subpixel": "poly"},
        {"name": "sigmoid_multicorr", "kernel": "sigmoid", "subpixel": "multicorr"},
        {"name": "flat_poly", "kernel": "flat", "subpixel": "poly"},
        {"name": "flat_multicorr", "kernel": "flat", "subpixel": "multicorr"},
    ],
}
LABELS = {
    "sigmoid_poly": "py4DSTEM sigmoid kernel, poly",
    "sigmoid_multicorr": "py4DSTEM sigmoid kernel, multicorr x16",
    "flat_poly": "py4DSTEM flat kernel, poly",
    "flat_multicorr": "py4DSTEM flat kernel, multicorr x16",
}


def venv_python(venv: Path) -> Path:
    """The interpreter of a virtual environment (POSIX or Windows layout)."""
    for candidate in (venv / "bin" / "python", venv / "Scripts" / "python.exe"):
        if candidate.exists():
            return candidate
    return venv / "bin" / "python"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_state() -> str:
    """The git commit of the checkout this script is in, marked if it has local changes."""
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no git"


def load_average() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def require_venv(venv: Path) -> Path:
    python = venv_python(venv)
    if not python.exists():
        raise SystemExit(
            f"error: py4DSTEM's virtual environment was not found ({python} is missing).\n"
            f"Create it first (needs network access to PyPI, about a minute):\n\n"
            f"    bash {os.path.relpath(SETUP)}\n\n"
            "py4DSTEM 0.14.18 pins numpy<2 and scikit-learn<1.5, so it cannot share "
            "strainkit's environment; see benchmarks/README.md."
        )
    return python


def run_worker(python: Path, workdir: Path) -> dict:
    """Run py4DSTEM in its own interpreter on the files in ``workdir``."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)  # keep strainkit's environment out of the worker
    proc = subprocess.run(
        [str(python), str(WORKER), str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        hint = ""
        if "No module named" in tail:
            hint = f"\nThe virtual environment looks incomplete; re-run: bash {SETUP}"
        raise SystemExit(f"error: the py4DSTEM worker failed:\n{tail}{hint}")
    return json.loads((workdir / "results.json").read_text())


def match(qx, qy, offsets, centers, radius):
    """Pair found peaks with true disks, one to one, minimising the total distance.

    Returns the error (found − true) of each true disk, NaN where none was found within
    ``radius`` px, shape (positions, disks, 2), and the number of unpaired (false) peaks
    per position.
    """
    n_pos, n_disks = centers.shape[:2]
    err = np.full((n_pos, n_disks, 2), np.nan)
    false = np.zeros(n_pos, dtype=np.int64)
    for f in range(n_pos):
        a, b = offsets[f], offsets[f + 1]
        found = np.stack([qx[a:b], qy[a:b]], axis=1)
        if len(found) == 0:
            continue
        d = np.linalg.norm(found[:, None, :] - centers[f][None], axis=-1)
        rows, cols = linear_sum_assignment(np.where(d < radius, d, 1e6))
        ok = d[rows, cols] < radius
        err[f, cols[ok]] = found[rows[ok]] - centers[f, cols[ok]]
        false[f] = len(found) - ok.sum()
    return err, false


def metrics(err, false, truth):
    """RMSE by order, recall of strong disks, false peaks per pattern, mean bias."""
    n_disks = truth.centers.shape[2]
    inside = truth.inside.reshape(-1, n_disks)
    amps = truth.amplitudes.reshape(-1, n_disks)
    order = truth.order
    found = ~np.isnan(err[..., 0])
    out = {}
    for o in (1, 2):
        sel = found & inside & (order == o)[None]
        out[f"rmse{o}"] = float(np.sqrt(np.mean(np.sum(err[sel] ** 2, axis=-1))))
    strong = inside & (amps >= 0.01 * amps[:, :1])
    out["recall"] = float(found[strong].mean())
    out["false"] = float(false.mean())
    out["bias"] = np.mean(err[found & inside], axis=0)
    return out


def coordinate_check(qx, qy, offsets, centers) -> dict[str, float]:
    """Median distance from each peak of the first pattern to its nearest true disk,
    for the peaks as given and as they would be under another convention."""
    a, b = offsets[0], offsets[1]
    x, y = qx[a:b], qy[a:b]
    candidates = {
        "as given": (x, y),
        "x<->y swapped": (y, x),
        "+0.5 px": (x + 0.5, y + 0.5),
        "-0.5 px": (x - 0.5, y - 0.5),
    }
    out = {}
    for name, (u, v) in candidates.items():
        d = np.hypot(u[:, None] - centers[0, :, 0], v[:, None] - centers[0, :, 1])
        out[name] = float(np.median(d.min(axis=1)))
    return out


def time_strainkit(data, probe, subpixel, repeat):
    from strainkit import DataCube
    from strainkit.disks import BraggDiskFinder

    finder = BraggDiskFinder(probe=probe, subpixel=subpixel, n_jobs=2, progress=False)
    finder.transform(DataCube(data[:1, :2]))  # warm-up: numba's cache, FFT plans
    cube = DataCube(data)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        peaks = finder.transform(cube)
        times.append(time.perf_counter() - t0)
    return peaks, float(np.median(times))


def fmt_table(rows, sk_rate):
    head = (
        "| method | patterns/s | vs strainkit | RMSE 1st order (px) | RMSE 2nd order (px) "
        "| recall (>= 1% of central beam) | false peaks / pattern | mean error x, y (px) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if r.get("rate") is None:  # the bound
            lines.append(f"| {r['label']} | | | {r['rmse1']:.4f} | {r['rmse2']:.4f} | | | |")
            continue
        bias = r["bias"]
        lines.append(
            f"| {r['label']} | {r['rate']:.1f} | {r['rate'] / sk_rate:.4f} "
            f"| {r['rmse1']:.4f} | {r['rmse2']:.4f} | {r['recall']:.4f} | {r['false']:.3f} "
            f"| {bias[0]:+.4f}, {bias[1]:+.4f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scan", type=int, default=32, help="scan of SCAN x SCAN positions")
    parser.add_argument("--seed", type=int, default=3, help="seed of the crystal scan")
    parser.add_argument("--vacuum-seed", type=int, default=4, help="seed of the vacuum scan")
    parser.add_argument("--match-radius", type=float, default=4.0, help="px (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="strainkit timings (median)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="py4DSTEM's venv")
    parser.add_argument("--keep", type=Path, default=None, help="keep the files in this dir")
    args = parser.parse_args(argv)

    cmd = f"python benchmarks/compare_py4dstem.py --scan {args.scan}"
    if args.seed != 3 or args.vacuum_seed != 4:
        cmd += f" --seed {args.seed} --vacuum-seed {args.vacuum_seed}"
    print("Reproduce (from the repository root, in strainkit's environment):")
    print("    bash benchmarks/setup_py4dstem_venv.sh   # once: py4DSTEM 0.14.18 in its own venv")
    print(f"    {cmd}")
    print()
    python = require_venv(args.venv)

    load_before = load_average()
    import strainkit
    from strainkit import DataCube, simulate
    from strainkit.probe import ProbeTemplate

    clock = {}
    t0 = time.perf_counter()
    sim = simulate.simulate_crystal(scan_shape=(args.scan, args.scan), seed=args.seed)
    vac = simulate.simulate_vacuum(scan_shape=(10, 10), seed=args.vacuum_seed)
    clock["simulate (strainkit.simulate)"] = time.perf_counter() - t0
    truth = sim.truth
    n_pos = args.scan * args.scan
    centers = truth.centers.reshape(n_pos, -1, 2)
    m = sim.microscope
    print(
        f"Data: {args.scan} x {args.scan} scan (seed {args.seed}), vacuum 10 x 10 "
        f"(seed {args.vacuum_seed}); detector {m.detector_shape}, {len(truth.hk)} disks of "
        f"radius {m.probe_radius} px, dose {m.dose:.0f} e-/pattern, "
        f"background {m.background_fraction:.0%}, PSF {m.psf_sigma} px, "
        f"ellipse {m.ellipse[0]}"
    )
    print(
        f"strainkit {strainkit.__version__} (checkout {source_state()}), "
        f"numpy {np.__version__}, Python {platform.python_version()}; "
        f"{os.cpu_count()} CPU cores ({cpu_name()})"
    )

    with tempfile.TemporaryDirectory(prefix="strainkit-vs-py4dstem-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        np.save(workdir / "data.npy", sim.data)
        np.save(workdir / "vacuum.npy", vac.data)
        np.save(workdir / "true_centers.npy", truth.centers)
        np.save(workdir / "true_amplitudes.npy", truth.amplitudes)
        np.save(workdir / "true_inside.npy", truth.inside)
        (workdir / "params.json").write_text(json.dumps(PY4DSTEM_CONFIG, indent=1))
        clock["write .npy"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        p4 = run_worker(python, workdir)
        clock["py4DSTEM worker, all (subprocess)"] = time.perf_counter() - t0
        clock["  py4DSTEM import"] = p4["seconds"]["import"]
        clock["  py4DSTEM probe + kernels"] = p4["seconds"]["probe"]
        p4_peaks = {}
        for name, run in p4["runs"].items():
            clock[f"  py4DSTEM find_Bragg_disks, {name}"] = run["seconds"]
            table = np.load(workdir / f"{name}.peaks.npy")
            offsets = np.load(workdir / f"{name}.offsets.npy")
            p4_peaks[name] = (table[:, 0], table[:, 1], offsets)

    t0 = time.perf_counter()
    probe = ProbeTemplate().fit(DataCube(vac.data))
    clock["strainkit ProbeTemplate.fit"] = time.perf_counter() - t0
    sk = {}
    for subpixel in ("dft", "parabolic"):
        t0 = time.perf_counter()
        peaks, seconds = time_strainkit(sim.data, probe, subpixel, args.repeat)
        clock[f"strainkit BraggDiskFinder ({subpixel}), {args.repeat} runs + warm-up"] = (
            time.perf_counter() - t0
        )
        sk[subpixel] = (peaks, seconds)

    print()
    print(
        f"py4DSTEM {p4['py4DSTEM']} (numpy {p4['numpy']}, Python {p4['python']}), "
        "single process (its default); probe from DataCube.get_vacuum_probe() over all "
        f"vacuum patterns: radius {p4['probe']['radius']:.3f} px, centre "
        f"({p4['probe']['origin'][0]:.3f}, {p4['probe']['origin'][1]:.3f}); sigmoid trench "
        f"{p4['probe']['trench_radii'][0]:.2f}-{p4['probe']['trench_radii'][1]:.2f} px"
    )
    first = next(iter(p4["runs"].values()))["params"]
    shown = {k: v for k, v in first.items() if k != "subpixel"}
    print(f"find_Bragg_disks parameters: {shown}")
    print(
        f"strainkit: ProbeTemplate().fit(vacuum) radius {probe.radius_:.3f} px; "
        "BraggDiskFinder(probe=probe, n_jobs=2) defaults, subpixel 'dft' (default) and "
        f"'parabolic'; time = median of {args.repeat} runs after a warm-up"
    )

    # coordinate convention: py4DSTEM's qx must be array axis 0, in pixel-centre units
    print()
    print("Coordinate check, pattern (0, 0): median distance (px) of each peak to the nearest")
    print("true disk centre, for py4DSTEM's (qx, qy) as given and under other conventions")
    for name, (qx, qy, offsets) in p4_peaks.items():
        check = coordinate_check(qx, qy, offsets, centers)
        best = min(check, key=check.get)
        text = ", ".join(f"{k} {v:.3f}" for k, v in check.items())
        flag = "ok" if best == "as given" else f"WARNING: best is '{best}'"
        print(f"  {name}: {text} -> {flag}")

    t0 = time.perf_counter()
    rows = []
    sk_rate = n_pos / sk["dft"][1]
    for subpixel, label in (
        ("dft", "strainkit (dft, default)"),
        ("parabolic", "strainkit parabolic"),
    ):
        peaks, seconds = sk[subpixel]
        err, false = match(peaks.qx, peaks.qy, peaks.offsets, centers, args.match_radius)
        rows.append({"label": label, "rate": n_pos / seconds, **metrics(err, false, truth)})
    for name, (qx, qy, offsets) in p4_peaks.items():
        err, false = match(qx, qy, offsets, centers, args.match_radius)
        rate = n_pos / p4["runs"][name]["seconds"]
        rows.append({"label": LABELS.get(name, name), "rate": rate, **metrics(err, false, truth)})
    bound = simulate.crystal_disk_crb(
        simulate.simulate_crystal(scan_shape=(1, 1)), mean_amplitudes=True
    )
    crb = {
        f"rmse{o}": float(np.sqrt(np.nanmean(bound.rms[bound.order == o] ** 2))) for o in (1, 2)
    }
    rows.append({"label": "Cramér–Rao bound (mean amplitudes)", "rate": None, **crb})
    clock["matching + Cramér–Rao bound"] = time.perf_counter() - t0

    print()
    print(
        f"{n_pos} patterns. RMSE: 2D centre error of disks wholly on the detector, found "
        f"within {args.match_radius:g} px (one-to-one matching). Recall: disks wholly on the "
        "detector with amplitude >= 1% of the central beam. False: peaks not matched to any "
        "true disk. Wall-clock time on this machine."
    )
    print()
    print(fmt_table(rows, sk_rate))
    print()
    print(
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_average()} "
        f"({os.cpu_count()} cores; other work on the machine slows both sides)"
    )
    print("Time taken (s):")
    for k, v in clock.items():
        print(f"  {k:<58} {v:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
