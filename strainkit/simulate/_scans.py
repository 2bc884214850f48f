"""Rendering whole scans (blocks of rows, Poisson noise), truth records and the vacuum scan."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from strainkit.simulate._microscope import Microscope
from strainkit.simulate._render import _TABLE, _expected_frames, _render_csr
from strainkit.simulate._validate import _finite, _shape2, _streams

if TYPE_CHECKING:
    from strainkit.simulate._crystal import CrystalTruth
    from strainkit.simulate._polycrystal import PolycrystalTruth

# Frames are rendered in blocks of whole scan rows of about this many bytes (float64).
_BLOCK_BYTES = 1 << 25


def _render_scan(m: Microscope, scan_shape, centers, amps, offsets, origins, fraction, noise):
    """Render, normalise and (with a dose) add noise to every frame, a block of rows at a time.

    Returns the (Rx, Ry, Qx, Qy) data and the expected counts per unit disk amplitude.
    """
    rx, ry = scan_shape
    nx, ny = m.detector_shape
    dtype = np.float32 if m.dose is None else np.dtype(m.dtype)
    data = np.empty((rx, ry, nx, ny), dtype=dtype)
    per_amp = np.empty(rx * ry)
    flat_origins = np.ascontiguousarray(origins.reshape(-1, 2))
    # Noise of row r always comes from child r of the noise stream, whatever the blocks.
    row_seeds = noise.spawn(rx)
    rows_per_block = max(1, _BLOCK_BYTES // (ry * nx * ny * 8))
    for r0 in range(0, rx, rows_per_block):
        r1 = min(rx, r0 + rows_per_block)
        f0, f1 = r0 * ry, r1 * ry
        disks = np.zeros((f1 - f0, nx, ny))
        _render_csr(
            disks,
            centers,
            amps,
            offsets[f0 : f1 + 1],
            m.probe_radius,
            m.edge_width,
            m.oversample,
            _TABLE,
        )
        frames, per_amp[f0:f1] = _expected_frames(
            disks,
            flat_origins[f0:f1],
            fraction=fraction,
            width=m.background_width,
            psf_sigma=m.psf_sigma,
            dose=m.dose,
            disk_area=m.disk_area,
        )
        frames = frames.reshape(r1 - r0, ry, nx, ny)
        if m.dose is None:
            data[r0:r1] = frames
        else:
            data[r0:r1] = _noisy_rows(frames, row_seeds[r0:r1], dtype)
    return data, per_amp.reshape(rx, ry)


def _noisy_rows(expected, seeds, dtype):
    limit = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else np.inf
    peak = float(expected.max(initial=0.0))
    if peak + 10 * math.sqrt(peak) + 10 > limit:
        raise ValueError(
            f"expected counts reach {peak:.0f} per pixel, more than {np.dtype(dtype).name} "
            f"holds ({limit}); lower Microscope.dose or choose Microscope(dtype='float32')"
        )
    out = np.empty(expected.shape, dtype=dtype)

    def row(r):
        out[r] = np.random.default_rng(seeds[r]).poisson(expected[r])

    # numpy's Poisson sampler releases the GIL, so rows in threads run concurrently.
    with ThreadPoolExecutor(max_workers=min(len(seeds), os.cpu_count() or 1)) as pool:
        list(pool.map(row, range(len(seeds))))
    return out


def _readonly(value):
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value


class _Truth:
    """Shared behaviour of the truth records: read-only arrays, compact repr, to_dict."""

    def __post_init__(self) -> None:
        for f in fields(self):
            _readonly(getattr(self, f.name))

    def to_dict(self) -> dict:
        """Every field by name (arrays are read-only views).

        Examples
        --------
        >>> sorted(simulate_vacuum(scan_shape=(1, 1)).truth.to_dict())
        ['edge_width', 'jitter', 'origins', 'probe_radius']
        """
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __repr__(self) -> str:
        parts = []
        for name, value in self.to_dict().items():
            if isinstance(value, np.ndarray):
                parts.append(f"{name}={value.dtype}{list(value.shape)}")
            else:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False, eq=False)
class VacuumTruth(_Truth):
    """Ground truth of a vacuum scan.

    Attributes
    ----------
    origins : ndarray (Rx, Ry, 2)
        Raw-detector centre of the probe at each position, px.
    probe_radius, edge_width : float
        Disk radius and edge width, px.
    jitter : float
        Standard deviation of the random origin shift, px.

    Examples
    --------
    >>> simulate_vacuum(scan_shape=(2, 2)).truth.origins.shape
    (2, 2, 2)
    """

    origins: np.ndarray
    probe_radius: float
    edge_width: float
    jitter: float


@dataclass(frozen=True, repr=False, eq=False)
class SimulatedScan:
    """A simulated 4D-STEM scan: ``data`` (Rx, Ry, Qx, Qy), its ``truth`` and the instrument.

    ``data`` holds counts (``Microscope.dtype``) or, without a dose, float32 expected
    values in relative units. It is read-only.

    Examples
    --------
    >>> sim = simulate_vacuum(scan_shape=(2, 2))
    >>> sim
    SimulatedScan(data=uint16[2, 2, 128, 128], truth=VacuumTruth)
    """

    data: np.ndarray
    truth: VacuumTruth | CrystalTruth | PolycrystalTruth
    microscope: Microscope

    def __post_init__(self) -> None:
        _readonly(self.data)

    def __repr__(self) -> str:
        shape = list(self.data.shape)
        return f"SimulatedScan(data={self.data.dtype}{shape}, truth={type(self.truth).__name__})"


def simulate_vacuum(
    microscope: Microscope = Microscope(),  # noqa: B008 (a frozen dataclass, immutable)
    scan_shape=(10, 10),
    jitter: float = 0.3,
    seed: int = 0,
) -> SimulatedScan:
    """A vacuum scan: the central disk only, no diffuse background, at jittered origins.

    Parameters
    ----------
    microscope : Microscope
        The instrument; its ``descan_jitter`` is replaced by ``jitter`` here.
    scan_shape : (int, int)
        Scan positions (Rx, Ry).
    jitter : float
        Standard deviation (px) of the random origin shift per position.
    seed : int
        Random seed.

    Returns
    -------
    SimulatedScan
        With :class:`VacuumTruth`. Each frame sums to ``microscope.dose`` on average.

    Examples
    --------
    >>> sim = simulate_vacuum(Microscope(dose=None), scan_shape=(1, 2), jitter=0.0)
    >>> float(sim.data.max())
    1.0
    """
    scan_shape = _shape2("scan_shape", scan_shape)
    jitter = _finite("jitter", jitter, low=0)
    seed_jitter, seed_noise = _streams(seed, "vacuum", 2)
    origins = microscope.origins(scan_shape, jitter, np.random.default_rng(seed_jitter))
    n = scan_shape[0] * scan_shape[1]
    data, _ = _render_scan(
        microscope,
        scan_shape,
        origins.reshape(-1, 2).copy(),
        np.ones(n),
        np.arange(n + 1, dtype=np.int64),
        origins,
        0.0,
        seed_noise,
    )
    truth = VacuumTruth(origins, microscope.probe_radius, microscope.edge_width, jitter)
    return SimulatedScan(data, truth, microscope)
