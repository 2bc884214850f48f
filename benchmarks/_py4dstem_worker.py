"""py4DSTEM side of ``compare_py4dstem.py``; runs inside ``benchmarks/.venv-py4dstem``.

Do not run this by hand: ``compare_py4dstem.py`` writes the simulated scan to a work
directory and starts this script with the virtual environment's interpreter::

    .venv-py4dstem/bin/python _py4dstem_worker.py WORKDIR

The work directory holds ``data.npy`` (Rx, Ry, Qx, Qy), ``vacuum.npy`` (Vx, Vy, Qx, Qy)
and ``params.json`` (the runs to do). For each run this writes ``<name>.peaks.npy``
(n, 3: qx, qy, correlation intensity, all patterns in C order of the scan) and
``<name>.offsets.npy`` (Rx·Ry + 1, CSR offsets into the peaks), and ``results.json``
with the timings, the probe that py4DSTEM measured and the parameters actually used.

This script only *calls* py4DSTEM (GPL-3.0) through its public API; strainkit
(BSD-3-Clause) contains none of its code. It imports nothing from strainkit, whose
dependencies (numpy >= 2, scikit-learn >= 1.6) py4DSTEM 0.14.18 cannot share.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def probe_and_kernels(vacuum: np.ndarray, trench: tuple[float, float]):
    """The vacuum probe and both correlation kernels, as py4DSTEM's strain tutorials make them.

    ``DataCube.get_vacuum_probe()`` aligns (to whole pixels) and averages every vacuum
    pattern; ``get_probe_size`` measures the probe radius and centre; ``Probe.get_kernel``
    shifts the probe to the origin and, for ``'sigmoid'``, subtracts a sine-squared trench
    from ``trench[0]`` to ``trench[1]`` probe radii.
    """
    import py4DSTEM
    from py4DSTEM.process.calibration import get_probe_size

    cube = py4DSTEM.DataCube(data=vacuum)
    probe = cube.get_vacuum_probe()
    radius, x0, y0 = get_probe_size(probe.probe)
    origin = (float(x0), float(y0))
    radii = (trench[0] * radius, trench[1] * radius)
    kernels = {
        "sigmoid": np.array(probe.get_kernel(mode="sigmoid", origin=origin, radii=radii)),
        "flat": np.array(probe.get_kernel(mode="flat", origin=origin)),
    }
    return float(radius), origin, radii, kernels


def peaks_csr(braggvectors, scan_shape) -> tuple[np.ndarray, np.ndarray]:
    """All raw peaks (qx, qy, intensity) of a BraggVectors, in C order, with CSR offsets."""
    rows, counts = [], []
    for rx in range(scan_shape[0]):
        for ry in range(scan_shape[1]):
            v = braggvectors.raw[rx, ry]
            rows.append(np.stack([v.qx, v.qy, v.I], axis=1).astype(np.float64))
            counts.append(len(v.qx))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    table = np.concatenate(rows) if rows else np.empty((0, 3))
    return table, offsets


def main(workdir: Path) -> None:
    t_start = time.perf_counter()
    import py4DSTEM
    from py4DSTEM.braggvectors.diskdetection import find_Bragg_disks

    t_import = time.perf_counter() - t_start
    config = json.loads((workdir / "params.json").read_text())
    data = np.load(workdir / "data.npy")
    vacuum = np.load(workdir / "vacuum.npy")
    scan_shape = data.shape[:2]
    n_patterns = scan_shape[0] * scan_shape[1]

    t0 = time.perf_counter()
    radius, origin, radii, kernels = probe_and_kernels(vacuum, tuple(config["trench_radii"]))
    t_probe = time.perf_counter() - t0

    cube = py4DSTEM.DataCube(data=data)
    results = {
        "py4DSTEM": py4DSTEM.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "probe": {"radius": radius, "origin": list(origin), "trench_radii": list(radii)},
        "seconds": {"import": t_import, "probe": t_probe},
        "runs": {},
    }
    for run in config["runs"]:
        params = dict(config["common"])
        params["subpixel"] = run["subpixel"]
        # py4DSTEM requires an integer edge boundary; disks closer to the edge are clipped
        params["edgeBoundary"] = round(config["edge_boundary_radii"] * radius)
        params["minPeakSpacing"] = config["min_spacing_radii"] * radius
        kernel = kernels[run["kernel"]]
        # warm-up on one pattern (imports, caches) so that the timing is the steady state
        find_Bragg_disks(np.asarray(data[0, 0], dtype=np.float64), kernel, **params)
        t0 = time.perf_counter()
        bv = cube.find_Bragg_disks(template=kernel, name=f"braggvectors_{run['name']}", **params)
        seconds = time.perf_counter() - t0
        table, offsets = peaks_csr(bv, scan_shape)
        np.save(workdir / f"{run['name']}.peaks.npy", table)
        np.save(workdir / f"{run['name']}.offsets.npy", offsets)
        results["runs"][run["name"]] = {
            "kernel": run["kernel"],
            "seconds": seconds,
            "patterns": n_patterns,
            "peaks": int(offsets[-1]),
            "params": params,
        }
    results["seconds"]["total"] = time.perf_counter() - t_start
    (workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: _py4dstem_worker.py WORKDIR (started by compare_py4dstem.py)")
    main(Path(sys.argv[1]))
