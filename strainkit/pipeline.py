"""Composition: the whole strain workflow as one scikit-learn ``Pipeline``, and batches.

:func:`make_strain_pipeline` chains disk detection, the origin calibration (fitted on each
scan: the descan belongs to the scan), the fitted calibrations wrapped in
``FrozenEstimator`` (reused, never refitted), the lattice fit and the strain calculation.
:func:`map_scans` runs such a pipeline over many scans with joblib.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import joblib
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from strainkit.containers import StrainMap
from strainkit.datacube import DataCube
from strainkit.disks import BraggDiskFinder
from strainkit.io import read
from strainkit.lattice import LatticeFitter
from strainkit.origin import OriginCalibrator
from strainkit.probe import ProbeTemplate
from strainkit.strain import StrainCalculator

__all__ = ["make_strain_pipeline", "map_scans"]


def _frozen(estimator: Any, name: str):
    if estimator is None:
        return None
    if isinstance(estimator, FrozenEstimator):
        estimator = estimator.estimator
    if not estimator.__sklearn_is_fitted__():
        raise ValueError(
            f"make_strain_pipeline: {name} is not fitted; fit it on its calibration data "
            "first (the pipeline reuses it without refitting)"
        )
    return FrozenEstimator(estimator)


def make_strain_pipeline(
    probe: ProbeTemplate,
    ellipse=None,
    pixel=None,
    rotation=None,
    *,
    reference=None,
    finder: Mapping[str, Any] | None = None,
    origin: OriginCalibrator | None = None,
    lattice: LatticeFitter | None = None,
) -> Pipeline:
    """The strain workflow as a ``Pipeline``: ``pipe.fit_transform(scan)`` gives a StrainMap.

    Steps: ``disks`` (:class:`BraggDiskFinder` with ``probe``), ``origin`` (fitted on each
    scan), then the fitted ``ellipse``, ``pixel`` and ``rotation`` calibrators wrapped in
    ``FrozenEstimator`` (any of them may be None, skipping that step), ``lattice``
    (:class:`LatticeFitter`) and ``strain`` (:class:`StrainCalculator` with ``reference``).

    Parameters
    ----------
    probe : ProbeTemplate
        Fitted on a vacuum scan.
    ellipse, pixel, rotation : fitted calibrators, optional
    reference : bool mask (Rx, Ry), LatticeMap or (2, 2) array, optional
        The unstrained reference, as :class:`StrainCalculator` takes it.
    finder : dict, optional
        Extra parameters of the disk finder (e.g. ``{"n_jobs": 2}``).
    origin, lattice : estimators, optional
        Replacements for the default origin calibrator and lattice fitter.

    Returns
    -------
    sklearn.pipeline.Pipeline

    Examples
    --------
    >>> from strainkit import simulate
    >>> from strainkit.rotation import RotationCalibrator
    >>> probe = ProbeTemplate.synthetic(6.0, 1.1, (128, 128))
    >>> pipe = make_strain_pipeline(probe, rotation=RotationCalibrator.from_value(-23.0, True),
    ...                             finder={"progress": False})
    >>> [name for name, _ in pipe.steps]
    ['disks', 'origin', 'rotation', 'lattice', 'strain']
    >>> strain = pipe.fit_transform(simulate.simulate_crystal(scan_shape=(4, 4)).data)
    >>> strain.scan_shape, strain.frame
    ((4, 4), 'real')
    """
    if not isinstance(probe, ProbeTemplate):
        raise ValueError(f"make_strain_pipeline: probe must be a ProbeTemplate, got {probe!r}")
    steps = [
        ("disks", BraggDiskFinder(probe=probe, **dict(finder or {}))),
        ("origin", origin if origin is not None else OriginCalibrator()),
    ]
    for name, estimator in (("ellipse", ellipse), ("pixel", pixel), ("rotation", rotation)):
        frozen = _frozen(estimator, name)
        if frozen is not None:
            steps.append((name, frozen))
    steps.append(("lattice", lattice if lattice is not None else LatticeFitter()))
    steps.append(("strain", StrainCalculator(reference=reference)))
    return Pipeline(steps)


def _own_copy(pipeline: Pipeline) -> Pipeline:
    """A clone whose frozen steps are new wrappers around the same fitted estimators.

    ``clone`` returns a FrozenEstimator itself, and scikit-learn's Pipeline sets and
    deletes attributes on each step while fitting: threads sharing one wrapper race.
    """
    copy = clone(pipeline)
    copy.steps = [
        (name, FrozenEstimator(step.estimator) if isinstance(step, FrozenEstimator) else step)
        for name, step in copy.steps
    ]
    return copy


def _one_scan(pipeline: Pipeline, scan) -> StrainMap:
    if isinstance(scan, (str, os.PathLike)):
        scan = read(scan)
    elif not isinstance(scan, DataCube):
        scan = DataCube(scan)
    return _own_copy(pipeline).fit_transform(scan)


def map_scans(pipeline: Pipeline, scans: Iterable, n_jobs: int = 1) -> list[StrainMap]:
    """Run ``pipeline`` on each scan (a DataCube, array or file path) and collect the maps.

    Each scan gets its own clone of the pipeline, so the per-scan steps (origin, lattice,
    strain) are fitted on that scan, while frozen calibrations are shared untouched.
    Scans run in ``n_jobs`` threads; the results equal a serial run bit for bit.

    Examples
    --------
    >>> from strainkit import simulate
    >>> probe = ProbeTemplate.synthetic(6.0, 1.1, (128, 128))
    >>> pipe = make_strain_pipeline(probe, finder={"progress": False})
    >>> scans = [simulate.simulate_crystal(scan_shape=(3, 3), seed=s).data for s in (1, 2)]
    >>> [m.scan_shape for m in map_scans(pipe, scans, n_jobs=2)]
    [(3, 3), (3, 3)]
    """
    scans = list(scans)
    if not scans:
        raise ValueError("map_scans: no scans given")
    return joblib.Parallel(n_jobs=n_jobs, backend="threading")(
        joblib.delayed(_one_scan)(pipeline, scan) for scan in scans
    )
