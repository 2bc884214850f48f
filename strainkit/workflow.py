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

The configuration has the tables ``[vacuum]``, ``[calibration]`` (the standard),
``[images]``, one ``[[experiment]]`` per scan, ``[reference]`` and ``[output]``; see
:class:`Config` for every key and :func:`config_template` for a commented example.
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
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from strainkit._files import atomic_path

__all__ = [
    "Config",
    "ConfigError",
    "config_template",
    "format_report",
    "load_config",
    "run_config",
]


class ConfigError(ValueError):
    """A configuration that cannot run: each line names the table, the key and the fix.

    Examples
    --------
    >>> try:
    ...     Config.from_dict({"vacuum": {"path": "v.h5", "dataset": 3}})
    ... except ConfigError as err:
    ...     print(err)
    [vacuum] dataset = 3: Input should be a valid string
    missing table [calibration]
    missing table [images]
    missing [[experiment]]: add one [[experiment]] table (with a path) per scan
    missing table [reference]
    """


# ---- the schema -----------------------------------------------------------------------


def _resolve(value: Path, info: pydantic.ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base") or Path.cwd())
    path = Path(os.path.expandvars(str(value))).expanduser()
    return Path(os.path.normpath(base / path))


#: A path; relative paths are resolved against the configuration file's folder.
_Path = Annotated[Path, pydantic.AfterValidator(_resolve)]
_Dataset = Annotated[str, Field(min_length=1)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Vacuum(_Table):
    path: _Path
    dataset: _Dataset | None = None


_STANDARDS = ("fcc", "bcc", "diamond", "cubic", "hcp")


class _Calibration(_Table):
    path: _Path
    dataset: _Dataset | None = None
    standard: Literal["fcc", "bcc", "diamond", "cubic", "hcp"] | None = None
    a: pydantic.PositiveFloat | None = None
    c: pydantic.PositiveFloat | None = None
    d_spacings: list[pydantic.PositiveFloat] | None = Field(None, min_length=1)

    @pydantic.model_validator(mode="after")
    def _one_standard(self):
        if (self.standard is None) == (self.d_spacings is None):
            raise ValueError(
                "give either standard (one of " + ", ".join(_STANDARDS) + ") with its "
                "lattice constant a, or d_spacings = [...] (Å); not both"
            )
        if self.standard is not None and self.a is None:
            raise ValueError(f"standard = {self.standard!r} needs its lattice constant a (Å)")
        if self.standard == "hcp" and self.c is None:
            raise ValueError("standard = 'hcp' needs both lattice constants a and c (Å)")
        if self.c is not None and self.standard != "hcp":
            raise ValueError("c (Å) is only used with standard = 'hcp'")
        if self.d_spacings is not None and (self.a is not None or self.c is not None):
            raise ValueError("a and c are used only with standard, not with d_spacings")
        return self

    def pixel_source(self) -> dict[str, Any]:
        """The ``crystal`` or ``d_spacings`` parameter of the PixelCalibrator."""
        from strainkit import crystal

        if self.d_spacings is not None:
            return {"d_spacings": tuple(self.d_spacings)}
        if self.standard == "hcp":
            return {"crystal": crystal.hcp(self.a, self.c)}
        return {"crystal": getattr(crystal, self.standard)(self.a)}


class _Images(_Table):
    path: _Path | None = None
    haadf: _Dataset | None = None
    shadow: _Dataset | None = None
    haadf_path: _Path | None = None
    shadow_path: _Path | None = None

    @pydantic.model_validator(mode="after")
    def _both_images(self):
        if self.path is None and (self.haadf_path is None or self.shadow_path is None):
            raise ValueError(
                "give path (one file holding both images) or haadf_path and shadow_path"
            )
        return self

    def files(self) -> dict[str, tuple[str, Path, str | None]]:
        """For ``haadf`` and ``shadow``: (key naming the file, file, dataset)."""
        out = {}
        for image in ("haadf", "shadow"):
            own = getattr(self, f"{image}_path")
            key = f"{image}_path" if own is not None else "path"
            out[image] = (key, own if own is not None else self.path, getattr(self, image))
        return out


class _Experiment(_Table):
    path: _Path
    dataset: _Dataset | None = None
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]+$")] | None = None

    @property
    def stem(self) -> str:
        """The output name: ``name``, or the file's stem."""
        return self.name if self.name is not None else self.path.stem


class _Reference(_Table):
    rows: tuple[pydantic.NonNegativeInt, pydantic.NonNegativeInt] | None = None
    region: (
        tuple[
            pydantic.NonNegativeInt,
            pydantic.NonNegativeInt,
            pydantic.NonNegativeInt,
            pydantic.NonNegativeInt,
        ]
        | None
    ) = None
    mask: _Path | None = None
    median: bool = False

    @pydantic.model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("rows", "region", "mask") if getattr(self, k) is not None]
        given += ["median"] if self.median else []
        if len(given) != 1:
            raise ValueError(
                "give exactly one of rows = [r0, r1], region = [r0, r1, c0, c1], "
                "mask = 'mask.npy' or median = true"
                + (f" (got {', '.join(given)})" if given else "")
            )
        for key, pairs in (("rows", [(0, 1)]), ("region", [(0, 1), (2, 3)])):
            value = getattr(self, key)
            if value is not None and any(value[i] >= value[j] for i, j in pairs):
                raise ValueError(
                    f"{key} = {list(value)}: each range start must be below its end "
                    "(the end is excluded)"
                )
        return self


class _Output(_Table):
    dir: _Path | None = None
    n_jobs: int = -1
    progress: bool = True

    @pydantic.field_validator("n_jobs")
    @classmethod
    def _jobs(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("n_jobs must be a positive number of threads, or -1 for all cores")
        return value


def _stage_classes() -> dict[str, tuple[type, tuple[str, ...]]]:
    """Table name -> (estimator class, parameters the workflow sets itself)."""
    import strainkit as sk

    return {
        "probe": (sk.ProbeTemplate, ()),
        "finder": (sk.BraggDiskFinder, ("probe", "progress", "n_jobs")),
        "origin": (sk.OriginCalibrator, ()),
        "ellipse": (sk.EllipticalCalibrator, ()),
        "pixel": (sk.PixelCalibrator, ("crystal", "d_spacings")),
        "rotation": (sk.RotationCalibrator, ("ellipse",)),
        "lattice": (sk.LatticeFitter, ()),
        "strain": (sk.StrainCalculator, ("reference",)),
    }


_STAGES = ("probe", "finder", "origin", "ellipse", "pixel", "rotation", "lattice", "strain")
_StageParams = dict[str, Any]


class Config(_Table):
    """A ``strainkit run`` configuration: the input files, the reference, the output.

    Build it with :meth:`from_toml` (or :func:`load_config`), or :meth:`from_dict`; both
    raise :class:`ConfigError` with one readable line per problem. Paths are made
    absolute: relative ones are taken relative to the configuration file's folder
    (``from_toml``) or to ``base`` (``from_dict``, default the current folder).

    Tables and keys (``*``: required):

    ``[vacuum]``
        ``path*``, ``dataset`` (the 4D dataset, needed only when the file holds several).
    ``[calibration]``
        ``path*``, ``dataset``; the standard: ``standard`` (fcc, bcc, diamond, cubic or
        hcp) with ``a`` (and ``c`` for hcp) in Å, or ``d_spacings`` (Å).
    ``[images]``
        ``path`` of one file holding both images with the dataset names ``haadf`` and
        ``shadow``, or one file each: ``haadf_path`` and ``shadow_path``.
    ``[[experiment]]`` (one or more)
        ``path*``, ``dataset``, ``name`` (results ``<name>_strain.h5``; default the
        file's stem).
    ``[reference]``
        Exactly one of ``rows = [r0, r1]`` (scan rows r0 to r1, r1 excluded),
        ``region = [r0, r1, c0, c1]``, ``mask`` (a boolean (Rx, Ry) array in a ``.npy``
        or HDF5 file) or ``median = true`` (the median lattice of the whole scan). It
        applies to each experimental scan in turn.
    ``[output]`` (optional)
        ``dir`` (default: the folder of the first experimental scan), ``n_jobs``
        (threads of the disk detection, -1 for all cores), ``progress`` (bars).
    stage tables (optional)
        ``[probe]``, ``[finder]``, ``[origin]``, ``[ellipse]``, ``[pixel]``,
        ``[rotation]``, ``[lattice]``, ``[strain]``: parameters of the estimator of that
        stage, checked by the estimator's own model.

    Examples
    --------
    >>> cfg = Config.from_dict(
    ...     {"vacuum": {"path": "vac.h5"},
    ...      "calibration": {"path": "gold.h5", "standard": "fcc", "a": 4.078},
    ...      "images": {"path": "images.h5"},
    ...      "experiment": [{"path": "scan1.h5"}, {"path": "scan2.h5", "name": "b"}],
    ...      "reference": {"rows": [0, 8]},
    ...      "lattice": {"min_peaks": 8}},
    ...     base="/data/session")
    >>> cfg.vacuum.path.as_posix(), [e.stem for e in cfg.experiment]
    ('/data/session/vac.h5', ['scan1', 'b'])
    >>> cfg.output_dir.as_posix(), cfg.lattice
    ('/data/session', {'min_peaks': 8})
    """

    vacuum: _Vacuum
    calibration: _Calibration
    images: _Images
    experiment: list[_Experiment] = Field(min_length=1)
    reference: _Reference
    output: _Output = _Output()
    probe: _StageParams = {}
    finder: _StageParams = {}
    origin: _StageParams = {}
    ellipse: _StageParams = {}
    pixel: _StageParams = {}
    rotation: _StageParams = {}
    lattice: _StageParams = {}
    strain: _StageParams = {}

    _tables: ClassVar[dict[str, type[BaseModel]]] = {
        "vacuum": _Vacuum,
        "calibration": _Calibration,
        "images": _Images,
        "experiment": _Experiment,
        "reference": _Reference,
        "output": _Output,
    }

    @pydantic.field_validator(*_STAGES)
    @classmethod
    def _stage_params(cls, value: dict, info: pydantic.ValidationInfo) -> dict:
        estimator, reserved = _stage_classes()[info.field_name]
        allowed = [k for k in estimator.Params.model_fields if k not in reserved]
        taken = sorted(set(value) & set(reserved))
        if taken:
            hint = {
                "finder": "; use [output] progress and n_jobs",
                "pixel": "; give the standard in [calibration]",
                "strain": "; give it in [reference]",
                "rotation": ": the one measured on the calibration scan",
            }.get(info.field_name, "")
            raise ValueError(f"{taken[0]!r} is set by the workflow, not here{hint}")
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown key {unknown[0]!r} for {estimator.__name__}; allowed: "
                + ", ".join(allowed)
            )
        try:
            estimator.Params(**value)
        except pydantic.ValidationError as err:
            problems = [
                f"{'.'.join(map(str, e['loc'])) or 'parameters'} = {e.get('input')!r}: {e['msg']}"
                for e in err.errors(include_url=False)
            ]
            raise ValueError(f"{estimator.__name__}: " + "; ".join(problems)) from None
        return dict(value)

    @pydantic.model_validator(mode="after")
    def _distinct_names(self):
        seen: dict[str, int] = {}
        for i, scan in enumerate(self.experiment, 1):
            if scan.stem in seen:
                raise ValueError(
                    f"[[experiment]] #{seen[scan.stem]} and #{i} would both write "
                    f"{scan.stem}_strain.h5; give them distinct name = '...' keys"
                )
            seen[scan.stem] = i
        return self

    @property
    def output_dir(self) -> Path:
        """``[output] dir``, or else the folder of the first experimental scan."""
        return self.output.dir if self.output.dir is not None else self.experiment[0].path.parent

    def stage_params(self) -> dict[str, dict[str, Any]]:
        """The estimator parameters of each stage table (empty where none are given)."""
        return {name: dict(getattr(self, name)) for name in _STAGES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: str | os.PathLike | None = None) -> Config:
        """Validate a configuration given as nested dicts (as TOML parses it).

        Relative paths are resolved against ``base`` (default: the current folder).
        Raises :class:`ConfigError` listing every problem.

        Examples
        --------
        >>> Config.from_dict({"vacuum": {"path": "v.h5", "bin": 2}})
        Traceback (most recent call last):
        ...
        strainkit.workflow.ConfigError: [vacuum] unknown key 'bin'; allowed: path, dataset
        ...
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a configuration is a table of tables, got {type(data).__name__}")
        base = Path(base).absolute() if base is not None else Path.cwd()
        try:
            return cls.model_validate(dict(data), context={"base": base})
        except pydantic.ValidationError as err:
            raise ConfigError(_explain(err)) from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> Config:
        """Read and validate a TOML configuration file.

        Relative paths in it are taken relative to the file's folder.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "strainkit.toml"
        >>> _ = path.write_text(config_template())
        >>> cfg = Config.from_toml(path)
        >>> cfg.calibration.path == path.parent / "calibration.h5", cfg.reference.rows
        (True, (0, 16))
        """
        try:  # Python >= 3.11
            import tomllib
        except ModuleNotFoundError:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise ModuleNotFoundError(
                    "reading a configuration file on Python 3.10 needs the package tomli "
                    "(pip install tomli), or Python >= 3.11"
                ) from None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such configuration file: {str(path)!r}")
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{str(path)!r} is not valid TOML: {err}") from None
        try:
            return cls.from_dict(data, base=path.absolute().parent)
        except ConfigError as err:
            raise ConfigError(f"in {str(path)!r}:\n{err}") from None


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a ``strainkit run`` configuration file (see :class:`Config`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "bad.toml"
    >>> _ = path.write_text(config_template().replace("standard =", "standrad ="))
    >>> load_config(path)
    Traceback (most recent call last):
    ...
    strainkit.workflow.ConfigError: in '...bad.toml':
    [calibration] unknown key 'standrad'; allowed: path, dataset, standard, a, c, d_spacings
    """
    return Config.from_toml(path)


# ---- readable errors ------------------------------------------------------------------


def _label(loc: Sequence) -> str:
    if loc[0] == "experiment" and len(loc) > 1 and isinstance(loc[1], int):
        return f"[[experiment]] #{loc[1] + 1}"
    return f"[{loc[0]}]"


def _table_model(loc: Sequence) -> type[BaseModel] | None:
    if not loc:
        return Config
    return Config._tables.get(loc[0])


def _explain_one(e: dict) -> str:
    loc, kind, msg = tuple(e["loc"]), e["type"], e["msg"]
    # the table's own location and the key within it
    depth = 2 if loc[:1] == ("experiment",) and len(loc) > 1 and isinstance(loc[1], int) else 1
    table, key = loc[:depth], loc[depth:]
    if kind == "extra_forbidden":
        if len(loc) == 1:
            allowed = ", ".join(
                "[[experiment]]" if n == "experiment" else f"[{n}]" for n in Config.model_fields
            )
            return f"unknown table [{loc[0]}]; allowed: {allowed}"
        model = _table_model(table)
        allowed = ", ".join(model.model_fields) if model else "?"
        return f"{_label(table)} unknown key {'.'.join(map(str, key))!r}; allowed: {allowed}"
    if kind == "missing":
        if loc == ("experiment",):
            return "missing [[experiment]]: add one [[experiment]] table (with a path) per scan"
        if len(loc) == 1:
            return f"missing table [{loc[0]}]"
        return f"{_label(table)} missing key {'.'.join(map(str, key))!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type") and not key:
        return f"{_label(table)} must be a table of keys, got {e.get('input')!r}"
    if loc == ("experiment",) and kind == "list_type":
        return "experiment must be written [[experiment]] (an array of tables, one per scan)"
    if loc == ("experiment",) and kind == "too_short":
        return "missing [[experiment]]: add one [[experiment]] table (with a path) per scan"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    msg = msg.replace(" for <class 'pathlib.Path'>", " (give it as a string)")
    prefix = f"{_label(table)} " if table else ""
    if not key:
        return f"{prefix}{msg}"
    name = str(key[0]) + "".join(f"[{k}]" for k in key[1:])  # rows[0], d_spacings[2]
    return f"{prefix}{name} = {_toml(e.get('input'))}: {msg}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _explain(err: pydantic.ValidationError) -> str:
    lines: list[str] = []
    for e in err.errors(include_url=False):
        line = _explain_one(e)
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


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


# ---- the template ---------------------------------------------------------------------

_TEMPLATE = """\
# A strainkit run configuration; run it with: strainkit run THIS_FILE.toml
# Relative paths are relative to the folder of this file.

[vacuum]                       # a scan over vacuum: the probe template
path = "vacuum.h5"
# dataset = "data"             # the 4D dataset, if the file holds several

[calibration]                  # a polycrystalline standard: origin, ellipse, pixel size
path = "calibration.h5"
standard = "fcc"               # fcc, bcc, diamond, cubic or hcp (hcp also needs c)
a = 4.078                      # lattice constant (Å); 4.078 is gold
# d_spacings = [2.355, 2.039]  # instead of standard and a: the standard's d-spacings (Å)

[images]                       # rotation and flip: a HAADF image and a shadow image
path = "images.h5"             # one file holding both images ...
haadf = "haadf"                # ... under these dataset names
shadow = "shadow"
# haadf_path = "haadf.npy"     # or one file each, instead of path
# shadow_path = "shadow.npy"

[[experiment]]                 # one [[experiment]] table per experimental scan
path = "experiment.h5"
# name = "experiment"          # results <name>_strain.h5/.png; default: the file's stem

[reference]                    # the unstrained region of each scan; exactly one of:
{rows_line}# scan rows r0 to r1 (r1 excluded)
# region = [0, 16, 0, 64]      # rows r0 to r1, columns c0 to c1
# mask = "reference.npy"       # a boolean (Rx, Ry) mask
# median = true                # the median lattice of the whole scan

[output]
{dir_line}
n_jobs = -1                    # threads of the disk detection (-1: all cores)
progress = true                # progress bars

# Optional parameters of each stage's estimator (see its documentation), e.g.
# [finder]                     # BraggDiskFinder (also [probe], [origin], [ellipse],
# min_relative_intensity = 0.005  # [pixel], [rotation], [lattice], [strain])
# [rotation]
# scan_rotation_deg = 0.0
"""


def config_template(
    reference_rows: tuple[int, int] = (0, 16), output_dir: str | None = None
) -> str:
    """A commented ``strainkit run`` configuration to copy and edit.

    Its file names are those of ``strainkit simulate``/``strainkit demo``
    (``vacuum.h5``, ``calibration.h5``, ``images.h5``, ``experiment.h5``), with a gold
    standard. ``strainkit run --template > strainkit.toml`` writes it.

    Parameters
    ----------
    reference_rows : (int, int)
        The reference rows r0 to r1 (r1 excluded).
    output_dir : str, optional
        ``[output] dir``; None leaves the default (the first scan's folder) commented.

    Examples
    --------
    >>> text = config_template(reference_rows=(0, 4), output_dir="results")
    >>> [line for line in text.splitlines() if line.startswith(("rows", "dir"))]
    ['rows = [0, 4]                # scan rows r0 to r1 (r1 excluded)', 'dir = "results"']
    """
    r0, r1 = (int(v) for v in reference_rows)
    if output_dir is None:
        dir_line = '# dir = "results"             # default: the folder of the first scan'
    else:
        dir_line = f"dir = {_toml_string(str(output_dir))}"
    rows_line = f"rows = [{r0}, {r1}]".ljust(31)
    return _TEMPLATE.format(rows_line=rows_line, dir_line=dir_line)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
