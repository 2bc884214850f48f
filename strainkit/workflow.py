"""The whole strain workflow on a user's own files, driven by a TOML configuration file.

``strainkit run CONFIG.toml`` (or :func:`run_config`) reads the four inputs of a strain
experiment: a vacuum scan (probe template), a calibration scan of a polycrystalline
standard (origin, ellipse, pixel size), a HAADF image with a defocused shadow image
(rotation and flip), and one or more experimental scans. It measures every calibration
from those files, maps the strain of each experimental scan against the chosen reference
region, and writes the results into one folder:

- ``<name>_strain.h5`` and ``<name>_strain.png`` for each experimental scan,
- ``pipeline.h5``, the fitted pipeline (reusable with :func:`strainkit.load_model`),
- the QC figures ``qc_origin.png``, ``qc_bvm.png`` and ``qc_rotation.png``,
- ``report.txt``, every calibration value with its standard error, the valid positions
  of each scan and the time of each stage.

The configuration (:mod:`strainkit.config`) has the tables ``[vacuum]``, ``[calibration]``
(the standard), ``[images]``, one ``[[experiment]]`` per scan, ``[reference]`` and
``[output]``; see :class:`Config` for every key and :func:`config_template` for a
commented example.
Optional tables ``[probe]``, ``[finder]``, ``[origin]``, ``[ellipse]``, ``[pixel]``,
``[rotation]``, ``[lattice]`` and ``[strain]`` pass parameters to the estimator of that
stage (:class:`~strainkit.ProbeTemplate`, :class:`~strainkit.BraggDiskFinder`, ...); the
finder and origin parameters apply to the calibration scan and the experimental scans
alike. Relative paths are relative to the configuration file's folder. Every problem
(an unknown key, a missing file, a wrong value) raises :class:`ConfigError` naming the
key, before any computation starts; nothing is written until the results are complete,
and each file is written atomically.

The calibration and strain stages here are the ones ``strainkit demo`` runs
(:func:`strainkit.demo.run_demo` calls the same function).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strainkit._files import atomic_path
from strainkit.config import (
    _STAGES,
    Config,
    ConfigError,
    _Reference,
    config_template,
    load_config,
)

__all__ = [
    "Config",
    "ConfigError",
    "config_template",
    "format_report",
    "load_config",
    "run_config",
]

# ---- checking and opening the inputs --------------------------------------------------


@dataclass
class _Scan:
    """One experimental scan: stage label, output stem, data and reference."""

    label: str
    name: str
    cube: Any
    reference: Any = None
    provenance: dict = field(default_factory=dict)


@dataclass
class _Inputs:
    vacuum: Any
    calibration: Any
    haadf: np.ndarray
    shadow: np.ndarray
    scans: list[_Scan]
    out: Path


def _reference_for(ref: _Reference, shape: tuple[int, int], mask: np.ndarray | None):
    """The StrainCalculator ``reference`` of one scan; ValueError if it does not fit."""
    nx, ny = shape
    if ref.median:
        return None
    if mask is not None:
        if mask.shape != tuple(shape):
            raise ValueError(
                f"mask has shape {mask.shape} but the scan has {tuple(shape)} positions"
            )
        return mask
    r0, r1, c0, c1 = (*ref.rows, 0, ny) if ref.rows is not None else ref.region
    key = "rows" if ref.rows is not None else "region"
    if r1 > nx or c1 > ny:
        value = list(ref.rows) if ref.rows is not None else list(ref.region)
        raise ValueError(
            f"{key} = {value} lies outside the scan of {nx} x {ny} positions "
            f"(rows 0 to {nx}, columns 0 to {ny}, ends excluded)"
        )
    out = np.zeros(shape, bool)
    out[r0:r1, c0:c1] = True
    return out


def _read_mask(path: Path) -> np.ndarray:
    from strainkit.io import read_image

    values = read_image(path)
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{str(path)!r} is not a boolean mask (values other than 0 and 1)")
    return values.astype(bool)


def _open_inputs(cfg: Config) -> _Inputs:
    """Check every path and open every input (lazily); ConfigError lists all problems."""
    import strainkit as sk

    # 1. every file exists
    files = [
        ("[vacuum] path", cfg.vacuum.path),
        ("[calibration] path", cfg.calibration.path),
    ]
    for key, path, _ in {p[:2]: p for p in cfg.images.files().values()}.values():
        files.append((f"[images] {key}", path))
    files += [(f"[[experiment]] #{i} path", e.path) for i, e in enumerate(cfg.experiment, 1)]
    if cfg.reference.mask is not None:
        files.append(("[reference] mask", cfg.reference.mask))
    missing = [
        f"{key}: no such file {str(path)!r}"
        if not path.exists()
        else f"{key}: {str(path)!r} is a folder, not a file"
        for key, path in files
        if not path.is_file()
    ]
    if missing:
        raise ConfigError("\n".join(missing))

    # 2. every file holds what it should
    problems: list[str] = []

    def attempt(key: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except (ValueError, OSError, KeyError) as err:
            problems.append(f"{key}: {err}")
            return None

    vacuum = attempt("[vacuum]", lambda: sk.read(cfg.vacuum.path, cfg.vacuum.dataset))
    calibration = attempt(
        "[calibration]", lambda: sk.read(cfg.calibration.path, cfg.calibration.dataset)
    )
    images = {
        image: attempt(f"[images] {image}", lambda p=path, d=dataset: sk.read_image(p, d))
        for image, (_, path, dataset) in cfg.images.files().items()
    }
    cubes = [
        attempt(f"[[experiment]] #{i}", lambda e=e: sk.read(e.path, e.dataset))
        for i, e in enumerate(cfg.experiment, 1)
    ]
    mask = None
    if cfg.reference.mask is not None:
        mask = attempt("[reference] mask", lambda: _read_mask(cfg.reference.mask))

    # 3. the pieces fit together
    detector = vacuum.detector_shape if vacuum is not None else None
    named = [("[calibration]", calibration)] + [
        (f"[[experiment]] #{i}", c) for i, c in enumerate(cubes, 1)
    ]
    for key, cube in named:
        if detector is not None and cube is not None and cube.detector_shape != detector:
            problems.append(
                f"{key}: the patterns are {cube.detector_shape[0]} x {cube.detector_shape[1]} "
                f"px but the vacuum scan's are {detector[0]} x {detector[1]} px; all scans "
                "must come from the same detector settings"
            )
    scans = []
    for i, (entry, cube) in enumerate(zip(cfg.experiment, cubes), 1):
        if cube is None or (cfg.reference.mask is not None and mask is None):
            continue  # already a problem
        try:
            reference = _reference_for(cfg.reference, cube.scan_shape, mask)
        except ValueError as err:
            problems.append(f"[reference] {err} (for [[experiment]] #{i}, {entry.path.name})")
            continue
        name = f"{entry.stem}_strain"
        provenance = {"source": str(entry.path), "dataset": cube.metadata.get("dataset")}
        scans.append(_Scan(entry.stem, name, cube, reference, provenance))

    out = cfg.output_dir
    if not problems:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            problems.append(f"[output] dir: cannot create {str(out)!r}: {err}")
    if problems:
        raise ConfigError("\n".join(problems))
    return _Inputs(vacuum, calibration, images["haadf"], images["shadow"], scans, out)


# ---- the workflow (shared with strainkit.demo) ----------------------------------------


class _Timer:
    """Seconds per stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._clock
        self._clock = now


def _save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@dataclass
class _Measured:
    """Everything the calibration and strain stages produced."""

    probe: Any
    peaks: Any  # the calibration scan's raw peaks
    origin: Any
    centred: Any
    ellipse: Any
    pixel: Any
    rotation: Any
    pipeline: Any
    strain_maps: dict[str, Any]
    paths: dict[str, Path]


def _calibrate_and_map(
    *,
    vacuum,
    calibration,
    haadf: np.ndarray,
    shadow: np.ndarray,
    standard: Mapping[str, Any],
    scans: Sequence[_Scan],
    out: Path,
    timer: _Timer,
    stages: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    n_jobs: int = 1,
) -> _Measured:
    """Measure every calibration, map the strain of each scan, save and draw.

    ``standard`` is the PixelCalibrator's ``crystal`` or ``d_spacings``; ``stages`` maps
    a stage name (see ``_STAGES``) to extra parameters of its estimator. The pipeline is
    fitted on the first scan (and saved); each further scan runs a clone of it, fitted
    on that scan with that scan's reference, so every scan is measured the same way.
    """
    from sklearn.base import clone

    import strainkit as sk
    from strainkit.plot import plot_bragg_vector_map, plot_origin, plot_rotation, plot_strain

    params = {name: dict((stages or {}).get(name, {})) for name in _STAGES}
    finder = {**params["finder"], "progress": progress, "n_jobs": n_jobs}

    probe = sk.ProbeTemplate(**params["probe"]).fit(vacuum)
    timer.lap("probe template (vacuum)")
    peaks = sk.BraggDiskFinder(probe=probe, **finder).transform(calibration)
    timer.lap("disk detection (calibration)")
    origin = sk.OriginCalibrator(**params["origin"])
    centred = origin.fit_transform(peaks)
    ellipse = sk.EllipticalCalibrator(**params["ellipse"]).fit(centred)
    pixel = sk.PixelCalibrator(**standard, **params["pixel"]).fit(ellipse.transform(centred))
    timer.lap("origin, ellipse, pixel size")
    rotation = sk.RotationCalibrator(ellipse=ellipse, **params["rotation"]).fit(haadf, shadow)
    timer.lap("rotation and flip (images)")

    first, *others = scans
    pipe = sk.make_strain_pipeline(
        probe,
        ellipse,
        pixel,
        rotation,
        reference=first.reference,
        finder=finder,
        origin=sk.OriginCalibrator(**params["origin"]),
        lattice=sk.LatticeFitter(**params["lattice"]),
    )
    if params["strain"]:
        pipe.set_params(**{f"strain__{k}": v for k, v in params["strain"].items()})
    maps = {first.name: pipe.fit_transform(first.cube)}
    timer.lap(f"strain pipeline ({first.label})")
    for scan in others:
        own = clone(pipe).set_params(strain__reference=scan.reference)
        maps[scan.name] = sk.map_scans(own, [scan.cube])[0]
        timer.lap(f"strain pipeline ({scan.label})")

    paths: dict[str, Path] = {}
    for scan in scans:
        strain = maps[scan.name]
        paths[scan.name] = sk.save(strain, out / f"{scan.name}.h5", provenance=scan.provenance)
        paths[f"{scan.name}_png"] = _save_figure(plot_strain(strain), out / f"{scan.name}.png")
    paths["pipeline"] = sk.save(pipe, out / "pipeline.h5")
    paths["qc_origin"] = _save_figure(plot_origin(origin), out / "qc_origin.png")
    paths["qc_bvm"] = _save_figure(
        plot_bragg_vector_map(centred, ellipse=ellipse), out / "qc_bvm.png"
    )
    paths["qc_rotation"] = _save_figure(
        plot_rotation(rotation, haadf, shadow), out / "qc_rotation.png"
    )
    timer.lap("save and draw")
    return _Measured(probe, peaks, origin, centred, ellipse, pixel, rotation, pipe, maps, paths)


# ---- run_config -----------------------------------------------------------------------


def _n_reference(reference: Any, strain) -> int:
    valid = np.asarray(strain.mask, bool)
    if reference is None:
        return int(valid.sum())
    return int((np.asarray(reference, bool) & valid).sum())


def _calibration_rows(m: _Measured) -> list[tuple[str, Any, Any, str]]:
    ratio, _, angle = m.ellipse.ellipse_
    ratio_std, _, angle_std = m.ellipse.ellipse_std_
    rings = np.asarray(m.pixel.ring_d_, float)
    return [
        ("probe radius", float(m.probe.radius_), None, "px"),
        ("vacuum patterns averaged", int(m.probe.n_frames_), None, ""),
        ("calibration peaks", int(m.peaks.n_peaks), None, ""),
        ("origin fit residual (RMS)", float(m.origin.residual_rms_), None, "px"),
        ("ellipse a/b", float(ratio), float(ratio_std), ""),
        ("ellipse angle", float(angle), float(angle_std), "°"),
        ("pixel size", float(m.pixel.q_pixel_size_), float(m.pixel.q_pixel_size_std_), "Å⁻¹/px"),
        ("rings used for the pixel size", int(np.isfinite(rings).sum()), None, ""),
        ("rotation", float(m.rotation.rotation_deg_), float(m.rotation.rotation_std_deg_), "°"),
        ("flip", bool(m.rotation.flip_), None, ""),
    ]


def run_config(
    config: str | os.PathLike | Config,
    progress: bool | None = None,
    n_jobs: int | None = None,
) -> dict:
    """Run the whole workflow of a configuration on the user's files and save the results.

    Every input is checked and opened first (a :class:`ConfigError` lists every problem
    before anything is computed or written). Then: the probe template from the vacuum
    scan; the disks of the calibration scan, its origin, ellipse and pixel size (from the
    standard's d-spacings); the rotation and flip from the HAADF and shadow images; the
    strain pipeline (:func:`strainkit.make_strain_pipeline`) fitted on the first
    experimental scan, and a clone of it fitted on each further scan, each against its
    own reference region. Nothing is printed.

    Parameters
    ----------
    config : str, path-like or Config
        A TOML configuration file (see :class:`Config`), or a validated Config.
    progress : bool, optional
        Show progress bars; default ``[output] progress``.
    n_jobs : int, optional
        Threads of the disk detection; default ``[output] n_jobs``.

    Returns
    -------
    dict
        ``paths`` (name to path of every file written: ``<name>_strain`` and
        ``<name>_strain_png`` per scan, ``pipeline``, ``qc_origin``, ``qc_bvm``,
        ``qc_rotation``, ``report``), ``inputs`` (rows ``(input, path)``),
        ``output_dir``, ``calibrations`` (rows
        ``(quantity, value, standard error or None, unit)``), ``scans`` (rows
        ``(name, valid positions, positions, reference positions)``), ``timings`` (stage
        to seconds), ``strain_maps`` (name to StrainMap), ``pipeline`` (fitted on the
        first scan) and ``config``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from strainkit import simulate
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = simulate.write_demo(folder, calibration_shape=(16, 16), experiment_shape=(8, 8))
    >>> _ = (folder / "strainkit.toml").write_text(config_template(reference_rows=(0, 2)))
    >>> result = run_config(folder / "strainkit.toml", progress=False)
    >>> sorted(result["paths"])  # doctest: +NORMALIZE_WHITESPACE
    ['experiment_strain', 'experiment_strain_png', 'pipeline', 'qc_bvm', 'qc_origin',
     'qc_rotation', 'report']
    >>> result["scans"]
    [('experiment_strain', 64, 64, 16)]
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    progress = cfg.output.progress if progress is None else bool(progress)
    n_jobs = cfg.output.n_jobs if n_jobs is None else int(n_jobs)
    if n_jobs == 0 or n_jobs < -1:
        raise ConfigError(f"n_jobs = {n_jobs}: give a positive number of threads, or -1")
    timer = _Timer()
    inputs = _open_inputs(cfg)
    timer.lap("open and check the inputs")
    measured = _calibrate_and_map(
        vacuum=inputs.vacuum,
        calibration=inputs.calibration,
        haadf=inputs.haadf,
        shadow=inputs.shadow,
        standard=cfg.calibration.pixel_source(),
        scans=inputs.scans,
        out=inputs.out,
        timer=timer,
        stages=cfg.stage_params(),
        progress=progress,
        n_jobs=n_jobs,
    )
    scan_rows = [
        (
            scan.name,
            int(measured.strain_maps[scan.name].n_valid),
            int(np.asarray(measured.strain_maps[scan.name].mask).size),
            _n_reference(scan.reference, measured.strain_maps[scan.name]),
        )
        for scan in inputs.scans
    ]
    images = cfg.images.files()
    used = [
        ("vacuum", cfg.vacuum.path),
        ("calibration", cfg.calibration.path),
        ("haadf", images["haadf"][1]),
        ("shadow", images["shadow"][1]),
        *((f"experiment {scan.name}", e.path) for scan, e in zip(inputs.scans, cfg.experiment)),
    ]
    if cfg.reference.mask is not None:
        used.append(("reference mask", cfg.reference.mask))
    result = {
        "paths": measured.paths,
        "inputs": used,
        "output_dir": inputs.out,
        "calibrations": _calibration_rows(measured),
        "scans": scan_rows,
        "timings": timer.timings,
        "strain_maps": measured.strain_maps,
        "pipeline": measured.pipeline,
        "config": cfg,
    }
    measured.paths["report"] = _write_text(inputs.out / "report.txt", format_report(result))
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return "nan" if not math.isfinite(value) else f"{value:.6g}"


def format_report(result: dict) -> str:
    """The inputs, calibrations, scans and stage timings of :func:`run_config` as text.

    Examples
    --------
    >>> print(format_report({"calibrations": [("pixel size", 0.0123, 1e-5, "Å⁻¹/px"),
    ...                                       ("flip", True, None, "")],
    ...                      "scans": [("scan_strain", 60, 64, 16)],
    ...                      "timings": {"probe": 0.5, "disks": 1.25}}))
    calibration                             value   std. error  unit
    pixel size                             0.0123        1e-05  Å⁻¹/px
    flip                                     True
    <BLANKLINE>
    scan                          valid positions    of  reference positions
    scan_strain                                60    64                   16
    <BLANKLINE>
    stage                                      time (s)
    probe                                          0.50
    disks                                          1.25
    total                                          1.75
    """
    lines = []
    if result.get("inputs"):
        lines += [f"{name:<32} {path}" for name, path in [("input", "file"), *result["inputs"]]]
        lines.append("")
    lines.append(f"{'calibration':<32} {'value':>12} {'std. error':>12}  unit")
    for name, value, std, unit in result["calibrations"]:
        lines.append(f"{name:<32} {_fmt(value):>12} {_fmt(std):>12}  {unit}".rstrip())
    lines += ["", f"{'scan':<28} {'valid positions':>17} {'of':>5}  reference positions"]
    for name, valid, total, n_ref in result["scans"]:
        lines.append(f"{name:<28} {valid:>17} {total:>5} {n_ref:>20}")
    lines += ["", f"{'stage':<40} {'time (s)':>10}"]
    for name, seconds in result["timings"].items():
        lines.append(f"{name:<40} {seconds:>10.2f}")
    lines.append(f"{'total':<40} {sum(result['timings'].values()):>10.2f}")
    return "\n".join(lines)
