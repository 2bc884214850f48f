"""The ``strainkit run`` configuration file: its schema, its errors and its template.

A configuration names the four inputs of a strain experiment and where the results go:
the tables ``[vacuum]``, ``[calibration]`` (the standard), ``[images]``, one
``[[experiment]]`` per scan, ``[reference]`` and ``[output]``, and optional tables of
estimator parameters (``[probe]``, ``[finder]``, ``[origin]``, ``[ellipse]``, ``[pixel]``,
``[rotation]``, ``[lattice]``, ``[strain]``). :class:`Config` validates all of it with
pydantic; every problem (an unknown key, a missing table, a wrong value) becomes one line
of a :class:`ConfigError` naming the table, the key and what is allowed.
:func:`config_template` writes a commented example. :mod:`strainkit.workflow` runs a
configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Config", "ConfigError", "config_template", "load_config"]


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
        strainkit.config.ConfigError: [vacuum] unknown key 'bin'; allowed: path, dataset
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
    strainkit.config.ConfigError: in '...bad.toml':
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
