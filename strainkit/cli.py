"""The ``strainkit`` command.

``strainkit simulate DIR`` writes the demo data set (vacuum scan, calibration scan,
HAADF + shadow images, experimental scan, each with its ground truth) into ``DIR``.
``strainkit info FILE`` describes a strainkit model file or a data file.
``strainkit demo [--out DIR]`` simulates the demo data, runs the whole workflow on it and
prints each measured calibration and the strain errors next to the simulation's truth.
``strainkit run CONFIG.toml`` runs the same workflow on your own files, as the
configuration file says (``strainkit run --template`` prints one to start from), and
writes the strain maps, the fitted pipeline, the QC figures and a report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _simulate(args: argparse.Namespace) -> int:
    from strainkit import simulate

    out = Path(args.directory)
    start = time.perf_counter()
    paths = simulate.write_demo(out, seed=args.seed)
    elapsed = time.perf_counter() - start
    print(f"wrote the demo data set to {out} in {elapsed:.1f} s:")
    for name, path in paths.items():
        size = Path(path).stat().st_size / 2**20
        print(f"  {name:<12} {path}  ({size:.1f} MiB)")
    return 0


def _headless_figures() -> None:
    import matplotlib

    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")


def _demo(args: argparse.Namespace) -> int:
    _headless_figures()
    from strainkit.demo import format_report, run_demo

    out = Path(args.out)
    print(f"strainkit demo: simulating and measuring in {out} ...")
    result = run_demo(
        out,
        seed=args.seed,
        scan=args.scan,
        calibration_scan=args.calibration_scan,
        progress=not args.quiet,
        n_jobs=args.jobs,
    )
    print(format_report(result))
    print(f"results: {out}")
    for name in ("strain", "pipeline", "strain_png", "qc_origin", "qc_bvm", "qc_rotation"):
        print(f"  {name:<12} {result['paths'][name]}")
    print(f"  {'report':<12} {result['paths']['report']}")
    print(f"the same workflow as a configuration: strainkit run {result['paths']['config']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from strainkit.workflow import config_template, format_report, load_config, run_config

    if args.template:
        print(config_template(), end="")
        return 0
    if args.config is None:
        raise ValueError(
            "give a configuration file: strainkit run CONFIG.toml "
            "(strainkit run --template > strainkit.toml writes one to edit)"
        )
    config = load_config(args.config)
    _headless_figures()
    print(f"strainkit run: {Path(args.config)} -> {config.output_dir}")
    result = run_config(config, progress=False if args.quiet else None, n_jobs=args.jobs)
    print(format_report(result))
    print(f"results: {result['output_dir']}")
    for name, path in result["paths"].items():
        print(f"  {name:<24} {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import h5py

    from strainkit._files import open_hdf5
    from strainkit.io import find_datasets

    path = Path(args.file)
    with open_hdf5(path) as f:
        attrs = dict(f.attrs)
    if attrs.get("strainkit_format") == "strainkit-model":
        print(f"{path}: strainkit model file (format {attrs.get('format_version')})")
        print(f"  class:    {attrs.get('class')}")
        print(f"  created:  {attrs.get('created')}")
        print(f"  versions: {json.loads(attrs.get('versions', '{}'))}")
        return 0
    print(f"{path}: HDF5 data file (h5py {h5py.__version__})")
    for name, shape in find_datasets(path).items():
        print(f"  {name}  {shape}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from strainkit import __version__

    parser = argparse.ArgumentParser(
        prog="strainkit", description="Calibrated strain mapping from 4D-STEM data."
    )
    parser.add_argument("--version", action="version", version=f"strainkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="write the simulated demo data set with ground truth")
    sim.add_argument("directory", help="folder to write into (created if missing)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.set_defaults(func=_simulate)
    info = sub.add_parser("info", help="describe a strainkit model file or an HDF5 data file")
    info.add_argument("file")
    info.set_defaults(func=_info)
    demo = sub.add_parser(
        "demo", help="run the whole workflow on simulated data and compare with the truth"
    )
    demo.add_argument(
        "--out", default="strainkit-demo", help="folder to write into (default strainkit-demo)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--scan", type=int, default=64, help="experimental scan size (default 64)")
    demo.add_argument(
        "--calibration-scan", type=int, default=40, help="calibration scan size (default 40)"
    )
    demo.add_argument("--jobs", type=int, default=2, help="disk detection threads (default 2)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
    run = sub.add_parser(
        "run", help="run the whole workflow on your own files, as a TOML configuration says"
    )
    run.add_argument("config", nargs="?", help="the configuration file (TOML)")
    run.add_argument(
        "--template", action="store_true", help="print a commented configuration and exit"
    )
    run.add_argument(
        "--jobs", type=int, default=None, help="disk detection threads (default: [output] n_jobs)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``strainkit`` command line; returns the exit status.

    Examples
    --------
    >>> import tempfile, pathlib, h5py
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.h5"
    >>> with h5py.File(path, "w") as f:
    ...     f["data"] = np.zeros((1, 1, 2, 2))
    >>> main(["info", str(path)])
    /...scan.h5: HDF5 data file (h5py ...)
      /data  (1, 1, 2, 2)
    0
    """
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, OSError) as err:
        print(f"strainkit {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
