"""The whole workflow on the simulated demo data, compared with the simulation's truth.

:func:`run_demo` writes the demo data set (:func:`strainkit.simulate.write_demo`), then
measures every calibration and the strain map from the files alone, exactly as a user
would: nothing is taken from the truth until the comparison at the end. It writes the
strain map, the fitted pipeline, the figures, a text report and ``strainkit.toml`` (the
same run as a ``strainkit run`` configuration), and returns the
measured-versus-truth table and the time of each stage (it prints nothing;
``strainkit demo`` prints the table).

The reference (unstrained) region is a user's choice, as it is at the microscope: the demo
sample is unstrained in the first quarter of the scan rows (the top of the image), and the
demo takes exactly those rows as the reference. The scan's median would not do here: most
of the demo crystal is strained.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["format_report", "reference_rows", "run_demo"]


def reference_rows(scan_shape: tuple[int, int], fraction: float = 0.25) -> np.ndarray:
    """A reference mask of the first ``fraction`` of the scan rows (at least one row).

    Examples
    --------
    >>> reference_rows((8, 3)).sum(axis=1)
    array([3, 3, 0, 0, 0, 0, 0, 0])
    """
    mask = np.zeros(scan_shape, bool)
    mask[: max(1, round(scan_shape[0] * fraction))] = True
    return mask


def _wrap180(angle: float) -> float:
    return float((angle + 180.0) % 360.0 - 180.0)


def _rms(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.sqrt(np.mean(finite**2))) if finite.size else float("nan")


def run_demo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    scan: int = 64,
    calibration_scan: int = 40,
    progress: bool = True,
    n_jobs: int = 2,
) -> dict:
    """Simulate the demo data, measure every calibration and the strain map, compare.

    Steps (each timed): write the demo files; fit the probe on ``vacuum.h5``; find the
    disks of the gold calibration scan ``calibration.h5``; fit its origin, ellipse and
    pixel size (gold, a = 4.078 Å); fit the rotation and flip on the HAADF and shadow
    images of ``images.h5``; run :func:`strainkit.make_strain_pipeline` on
    ``experiment.h5`` with the first quarter of the scan rows as the reference; save and
    draw (these stages are :mod:`strainkit.workflow`'s, the ones ``strainkit run``
    runs). It also writes ``strainkit.toml``, the configuration of the same run on these
    files: ``strainkit run <out_dir>/strainkit.toml`` writes its results into
    ``<out_dir>/run``. The microscope is the default one: 128 x 128 px detector, 2e5 electrons per
    pattern, ellipse ratio 1.025, rotation −23° with a flip.

    Parameters
    ----------
    out_dir : str or path-like
        Folder for the data and results (created).
    seed : int
        Seed of the simulation.
    scan : int
        The experimental scan is ``scan`` x ``scan`` positions.
    calibration_scan : int
        The gold calibration scan is ``calibration_scan`` x ``calibration_scan``.
    progress : bool
        Show progress bars for the disk detection.
    n_jobs : int
        Threads of the disk detection.

    Returns
    -------
    dict
        ``paths`` (name to path of every file written), ``calibrations`` and ``strain``
        (lists of rows ``(quantity, measured, truth, unit)``; for the strain rows
        ``(field, RMS error against the truth, RMS of the true field, unit)`` over the
        valid positions), ``bounds`` (rows ``(field, RMS error, Cramér–Rao bound, unit)``,
        the bound of :func:`strainkit.simulate.strain_precision_bound` at the demo's
        conditions), ``timings`` (stage name to seconds) and ``strain_map``.

    Examples
    --------
    >>> import tempfile
    >>> result = run_demo(tempfile.mkdtemp(), scan=8, calibration_scan=16, progress=False)
    >>> sorted(result["paths"])
    ['calibration', 'config', 'experiment', 'images', 'pipeline', 'qc_bvm', 'qc_origin', ...]
    """
    import strainkit as sk
    from strainkit import simulate
    from strainkit.workflow import _calibrate_and_map, _Scan, _Timer, _write_text, config_template

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    paths = dict(
        simulate.write_demo(
            out,
            seed=seed,
            calibration_shape=(calibration_scan, calibration_scan),
            experiment_shape=(scan, scan),
        )
    )
    timer.lap("simulate and write the data")

    # ---- calibrations and strain, from the files alone (as `strainkit run` does) ----
    experiment = sk.read(paths["experiment"])
    reference = reference_rows(experiment.scan_shape)
    measured = _calibrate_and_map(
        vacuum=sk.read(paths["vacuum"]),
        calibration=sk.read(paths["calibration"]),
        haadf=sk.read_image(paths["images"], "haadf"),
        shadow=sk.read_image(paths["images"], "shadow"),
        standard={"crystal": sk.crystal.fcc(4.078)},
        scans=[_Scan("experiment", "strain", experiment, reference)],
        out=out,
        timer=timer,
        progress=progress,
        n_jobs=n_jobs,
    )
    paths.update(measured.paths)
    ellipse, pixel, rotation = measured.ellipse, measured.pixel, measured.rotation
    strain = measured.strain_maps["strain"]
    # the same run on these files: `strainkit run <out>/strainkit.toml` (results in run/)
    rows = (0, int(np.flatnonzero(reference.any(axis=1))[-1]) + 1)
    paths["config"] = _write_text(
        out / "strainkit.toml", config_template(reference_rows=rows, output_dir="run")
    )

    # ---- comparison with the truth (only now is it read) ----
    cal_truth = simulate.read_truth(paths["calibration"])
    img_truth = simulate.read_truth(paths["images"])
    exp_truth = simulate.read_truth(paths["experiment"])
    ratio, _, angle = ellipse.ellipse_
    true_ratio, true_angle = cal_truth["ellipse"]
    calibrations = [
        ("ellipse a/b", float(ratio), float(true_ratio), ""),
        ("ellipse angle", float(angle), float(true_angle), "°"),
        ("pixel size", float(pixel.q_pixel_size_), float(cal_truth["pixel_size"]), "Å⁻¹/px"),
        ("rotation", _wrap180(rotation.rotation_deg_), _wrap180(img_truth["rotation_deg"]), "°"),
        ("flip", bool(rotation.flip_), bool(img_truth["flip"]), ""),
    ]
    valid = np.asarray(strain.mask, bool)
    true_fields = {
        "exx": (exp_truth["exx"] * 100, "%"),
        "eyy": (exp_truth["eyy"] * 100, "%"),
        "exy": (exp_truth["exy"] * 100, "%"),
        "theta_deg": (np.rad2deg(exp_truth["theta"]), "°"),
    }
    scales = {"exx": 100.0, "eyy": 100.0, "exy": 100.0, "theta_deg": 1.0}
    strain_rows = []
    for name, (true, unit) in true_fields.items():
        measured = np.asarray(getattr(strain, name), float) * scales[name]
        error = np.where(valid, measured - true, np.nan)
        strain_rows.append((name, _rms(error), _rms(true), unit))
    strain_rows.append(("valid positions", int(valid.sum()), int(valid.size), "of all"))
    # the physical limit at these conditions (dose, probe, detector, lattice)
    limit = simulate.strain_precision_bound(simulate.Microscope(**exp_truth["microscope"]))
    bounds = [
        (name, error, limit[name] * scales[name], unit)
        for name, error, _, unit in strain_rows
        if name in scales
    ]
    timer.lap("compare with the truth")

    result = {
        "paths": paths,
        "calibrations": calibrations,
        "strain": strain_rows,
        "bounds": bounds,
        "timings": timer.timings,
        "strain_map": strain,
    }
    paths["report"] = _write_text(out / "report.txt", format_report(result))
    return result


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.6g}"


def format_report(result: dict) -> str:
    """The measured-versus-truth tables and the stage timings of :func:`run_demo` as text.

    Examples
    --------
    >>> print(format_report({"calibrations": [("flip", True, True, "")],
    ...                      "strain": [("exx", 0.03, 1.1, "%")],
    ...                      "timings": {"simulate": 1.25}}))
    calibration                      measured           truth  unit
    flip                                 True            True
    <BLANKLINE>
    strain field                    RMS error   RMS of truth  unit
    exx                                  0.03             1.1  %
    <BLANKLINE>
    stage                                      time (s)
    simulate                                       1.25
    total                                          1.25
    """
    lines = [f"{'calibration':<24} {'measured':>16} {'truth':>15}  unit"]
    for name, measured, truth, unit in result["calibrations"]:
        lines.append(f"{name:<24} {_fmt(measured):>16} {_fmt(truth):>15}  {unit}".rstrip())
    lines += ["", f"{'strain field':<24} {'RMS error':>16} {'RMS of truth':>14}  unit"]
    for name, error, truth, unit in result["strain"]:
        lines.append(f"{name:<24} {_fmt(error):>16} {_fmt(truth):>15}  {unit}".rstrip())
    if result.get("bounds"):
        head = f"{'against the physical limit':<24} {'RMS error':>16} {'CR bound':>15}  ratio"
        lines += ["", head]
        for name, error, bound, unit in result["bounds"]:
            cells = f"{_fmt(error):>15}{unit:1} {_fmt(bound):>14}{unit:1}"
            lines.append(f"{name:<24} {cells}  {error / bound:.3f}")
        lines.append(
            "(Cramér–Rao bound of one unstrained position with mean disk intensities, "
            "strainkit.simulate.strain_precision_bound)"
        )
    lines += ["", f"{'stage':<40} {'time (s)':>10}"]
    for name, seconds in result["timings"].items():
        lines.append(f"{name:<40} {seconds:>10.2f}")
    lines.append(f"{'total':<40} {sum(result['timings'].values()):>10.2f}")
    return "\n".join(lines)
