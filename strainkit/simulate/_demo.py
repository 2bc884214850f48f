"""The whole workflow's data sets, the demo files written from them and their truth."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from strainkit._files import FileFormatError, atomic_path, open_hdf5
from strainkit._version import __version__
from strainkit.simulate._crystal import CrystalTruth, simulate_crystal
from strainkit.simulate._images import SimulatedImages, simulate_images
from strainkit.simulate._microscope import Microscope
from strainkit.simulate._polycrystal import PolycrystalTruth, simulate_polycrystal
from strainkit.simulate._scans import SimulatedScan, VacuumTruth, simulate_vacuum
from strainkit.simulate._validate import _jsonable, _seed


@dataclass(frozen=True, repr=False, eq=False)
class Workflow:
    """The four data sets of a strain experiment, all taken with one microscope.

    Examples
    --------
    >>> wf = simulate_workflow(vacuum_shape=(2, 2), calibration_shape=(2, 2),
    ...                        experiment_shape=(4, 2), image_shape=(48, 48), n_features=3)
    >>> wf.experiment.data.shape
    (4, 2, 128, 128)
    """

    vacuum: SimulatedScan
    calibration: SimulatedScan
    images: SimulatedImages
    experiment: SimulatedScan
    microscope: Microscope
    seed: int

    def __repr__(self) -> str:
        return (
            f"Workflow(vacuum={self.vacuum!r}, calibration={self.calibration!r}, "
            f"images={self.images!r}, experiment={self.experiment!r}, seed={self.seed})"
        )


def simulate_workflow(
    microscope: Microscope = Microscope(),  # noqa: B008 (a frozen dataclass, immutable)
    seed: int = 0,
    *,
    vacuum_shape=(10, 10),
    calibration_shape=(20, 20),
    experiment_shape=(64, 64),
    image_shape=(128, 128),
    n_features: int = 40,
) -> Workflow:
    """Vacuum, calibration (gold polycrystal), HAADF/shadow images and a strained crystal.

    Every scan uses its own random streams of ``seed``, so changing one size leaves the
    other data sets unchanged. All other knobs take their defaults.

    Examples
    --------
    >>> wf = simulate_workflow(vacuum_shape=(1, 1), calibration_shape=(1, 1),
    ...                        experiment_shape=(2, 1), image_shape=(48, 48), n_features=2)
    >>> wf.microscope is wf.experiment.microscope
    True
    """
    seed = _seed(seed)
    return Workflow(
        vacuum=simulate_vacuum(microscope, vacuum_shape, seed=seed),
        calibration=simulate_polycrystal(microscope, calibration_shape, seed=seed),
        images=simulate_images(microscope, image_shape, n_features=n_features, seed=seed),
        experiment=simulate_crystal(microscope, experiment_shape, seed=seed),
        microscope=microscope,
        seed=seed,
    )


_KIND_NAMES = {VacuumTruth: "vacuum", CrystalTruth: "crystal", PolycrystalTruth: "polycrystal"}


def _write_truth(group: h5py.Group, truth, microscope: Microscope, kind: str, seed: int) -> None:
    """Arrays as datasets; scalars, the microscope and provenance as JSON-text attributes."""
    for name, value in truth.to_dict().items():
        if isinstance(value, np.ndarray):
            group.create_dataset(name, data=value)
        else:
            group.attrs[name] = json.dumps(_jsonable(value))
    group.attrs["microscope"] = json.dumps(microscope.to_dict())
    group.attrs["kind"] = json.dumps(kind)
    group.attrs["seed"] = json.dumps(seed)
    group.attrs["strainkit_version"] = json.dumps(__version__)


def _write_scan(path: Path, sim: SimulatedScan, seed: int) -> Path:
    _, ry, qx, qy = sim.data.shape
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        # One scan row per chunk: readers stream the scan row by row.
        f.create_dataset("data", data=sim.data, chunks=(1, ry, qx, qy))
        _write_truth(
            f.create_group("truth"), sim.truth, sim.microscope, _KIND_NAMES[type(sim.truth)], seed
        )
    return path


def _write_images(path: Path, sim: SimulatedImages, seed: int) -> Path:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("haadf", data=sim.haadf)
        f.create_dataset("shadow", data=sim.shadow)
        _write_truth(f.create_group("truth"), sim.truth, sim.microscope, "images", seed)
    return path


def write_demo(
    directory: str | os.PathLike,
    seed: int = 0,
    microscope: Microscope = Microscope(),  # noqa: B008 (a frozen dataclass, immutable)
    **sizes,
) -> dict[str, Path]:
    """Simulate a workflow and write it as four HDF5 files in ``directory`` (created).

    ``vacuum.h5``, ``calibration.h5`` and ``experiment.h5`` hold a 4D dataset ``data``
    (Rx, Ry, Qx, Qy), uncompressed, one scan row per chunk; ``images.h5`` holds 2D
    datasets ``haadf`` and ``shadow``. Each file has a group ``truth``: every truth array
    as a dataset, every scalar as a JSON-text attribute, plus the attributes
    ``microscope`` (all knobs), ``kind``, ``seed`` and ``strainkit_version``. Files are
    written atomically. ``sizes`` are passed to :func:`simulate_workflow`.

    Returns
    -------
    dict
        ``{"vacuum": path, "calibration": path, "images": path, "experiment": path}``.

    Examples
    --------
    >>> import tempfile
    >>> paths = write_demo(tempfile.mkdtemp(), vacuum_shape=(1, 1), calibration_shape=(1, 1),
    ...                    experiment_shape=(2, 1), image_shape=(48, 48), n_features=2)
    >>> sorted(paths)
    ['calibration', 'experiment', 'images', 'vacuum']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wf = simulate_workflow(microscope, seed, **sizes)
    return {
        "vacuum": _write_scan(directory / "vacuum.h5", wf.vacuum, wf.seed),
        "calibration": _write_scan(directory / "calibration.h5", wf.calibration, wf.seed),
        "images": _write_images(directory / "images.h5", wf.images, wf.seed),
        "experiment": _write_scan(directory / "experiment.h5", wf.experiment, wf.seed),
    }


def read_truth(path: str | os.PathLike) -> dict:
    """The ``truth`` group of a file written by :func:`write_demo`, as a dict.

    Arrays come back as numpy arrays, attributes decoded from JSON (tuples as lists);
    ``Microscope(**truth["microscope"])`` rebuilds the instrument.

    Examples
    --------
    >>> import tempfile
    >>> paths = write_demo(tempfile.mkdtemp(), vacuum_shape=(1, 1), calibration_shape=(1, 1),
    ...                    experiment_shape=(2, 1), image_shape=(48, 48), n_features=2)
    >>> truth = read_truth(paths["experiment"])
    >>> truth["kind"], truth["hk"].shape, truth["microscope"]["dose"]
    ('crystal', (49, 2), 200000.0)
    """
    with open_hdf5(path, "a file written by strainkit.simulate.write_demo") as f:
        if "truth" not in f:
            raise FileFormatError(
                f"{os.fspath(path)!r} has no 'truth' group; read_truth reads the files that "
                "write_demo writes"
            )
        group = f["truth"]
        truth = {name: group[name][()] for name in group}
        truth.update({name: json.loads(value) for name, value in group.attrs.items()})
    return truth
