"""Containers: validation, immutability, lazy block reading and views."""

import h5py
import numpy as np
import pytest

from strainkit import BraggPeaks, DataCube, LatticeMap, StrainMap


@pytest.fixture
def array4d():
    rng = np.random.default_rng(1)
    return rng.integers(0, 1000, size=(5, 7, 12, 10)).astype(np.uint16)


def test_datacube_wraps_numpy_without_loading_or_copying(array4d):
    cube = DataCube(array4d)
    assert cube.shape == (5, 7, 12, 10) and cube.dtype == np.uint16
    frame = cube[2, 3]
    np.testing.assert_array_equal(frame, array4d[2, 3])
    assert np.shares_memory(frame, array4d) and not frame.flags.writeable


@pytest.mark.parametrize("block_size", [1, 3, 7, 10, 14, 100])
def test_iter_blocks_covers_scan_in_order_within_block_size(array4d, block_size):
    cube = DataCube(array4d)
    starts, flat = [], []
    for start, frames in cube.iter_blocks(block_size):
        assert 0 < len(frames) <= max(block_size, 1)
        starts.append(start)
        flat.append(frames)
    np.testing.assert_array_equal(np.concatenate(flat), array4d.reshape(-1, 12, 10))
    assert starts == sorted(starts)


def test_datacube_reads_hdf5_file_lazily_and_closes_it(tmp_path, array4d):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data"] = array4d
    cube = DataCube._from_hdf5(path, "data")
    np.testing.assert_array_equal(cube.frames(3, 20), array4d.reshape(-1, 12, 10)[3:20])
    with h5py.File(path, "a") as f:  # nothing keeps the file open
        f.attrs["touched"] = True


def test_datacube_wraps_open_h5py_dataset_and_memmap(tmp_path, array4d):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data"] = array4d
        np.testing.assert_array_equal(DataCube(f["data"]).to_numpy(), array4d)
    raw = tmp_path / "scan.npy"
    np.save(raw, array4d)
    mm = np.load(raw, mmap_mode="r")
    np.testing.assert_array_equal(DataCube(mm)[4, 6], array4d[4, 6])


def test_crop_and_bin_views_match_numpy(array4d):
    cube = DataCube(array4d)
    view = cube.crop(rx=(1, 5), ry=(2, 7), qx=(1, 11), qy=(0, 9)).bin(q=2, r=2, reduce="sum")
    ref = array4d[1:5, 2:6, 1:11, 0:8].astype(np.float64)
    ref = ref.reshape(2, 2, 2, 2, 5, 2, 4, 2).sum(axis=(1, 3, 5, 7))
    assert view.shape == (2, 2, 5, 4) and view.dtype == np.float32
    np.testing.assert_allclose(view.to_numpy(), ref)
    mean = cube.bin(q=2, reduce="mean").crop(qx=(1, 3))
    ref_mean = array4d.reshape(5, 7, 6, 2, 5, 2).mean(axis=(3, 5))[:, :, 1:3]
    np.testing.assert_allclose(mean.to_numpy(), ref_mean, rtol=1e-6)
    assert cube.bin(q=2).bin(q=3).detector_shape == (2, 1)


def test_reduce_frames(array4d):
    cube = DataCube(array4d)
    np.testing.assert_allclose(cube.reduce_frames("mean", block_size=4), array4d.mean(axis=(0, 1)))
    np.testing.assert_array_equal(cube.reduce_frames("max"), array4d.max(axis=(0, 1)))


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (np.zeros((4, 4, 4)), r"must be 4D.*3D.*reshape\(Rx, Ry, Qx, Qy\)"),
        (np.zeros((0, 4, 4, 4)), "scan is empty"),
        (np.zeros((2, 2, 4, 4), dtype=complex), "real numbers"),
    ],
)
def test_datacube_rejects_bad_arrays(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        DataCube(data)


def test_datacube_names_position_of_nan_frames():
    data = np.zeros((3, 4, 6, 6), dtype=np.float32)
    data[2, 1, 3, 3] = np.inf
    with pytest.raises(ValueError, match=r"scan position \(2, 1\) holds NaN or inf"):
        list(DataCube(data).iter_blocks(5))


def test_datacube_crop_and_bin_errors(array4d):
    cube = DataCube(array4d)
    with pytest.raises(ValueError, match=r"rx=\(3, 9\) is outside 0..5"):
        cube.crop(rx=(3, 9))
    with pytest.raises(ValueError, match="q=0 must be a positive integer"):
        cube.bin(q=0)
    with pytest.raises(IndexError):
        cube[5, 0]
    with pytest.raises(AttributeError, match="immutable"):
        cube.metadata = {}


def _peaks(n_per_pos=(2, 0, 3, 1)):
    rng = np.random.default_rng(0)
    per = [rng.normal(size=(k, 4)) for k in n_per_pos]
    return BraggPeaks.from_positions(per, scan_shape=(2, 2), detector_shape=(64, 64)), per


def test_braggpeaks_csr_access_and_filter():
    peaks, per = _peaks()
    assert peaks.n_peaks == 6 and peaks.counts.tolist() == [[2, 0], [3, 1]]
    np.testing.assert_array_equal(peaks[1, 0].qy, per[2][:, 1])
    assert peaks.position_index.tolist() == [0, 0, 2, 2, 2, 3]
    kept = peaks.filter(peaks.qx > 0)
    assert kept.n_peaks == int((peaks.qx > 0).sum())
    assert kept.counts.sum() == kept.n_peaks
    for p in range(4):
        i, j = divmod(p, 2)
        np.testing.assert_array_equal(kept[i, j].qx, per[p][per[p][:, 0] > 0, 0])


def test_braggpeaks_is_immutable_and_copies_input():
    qx = np.array([1.0, 2.0])
    peaks = BraggPeaks(qx, qx, qx, qx, [0, 2], (1, 1))
    qx[0] = 99.0
    assert peaks.qx[0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        peaks.qx[0] = 5.0
    with pytest.raises(AttributeError, match="immutable"):
        peaks.units = "A^-1"
    moved = peaks.with_coords(peaks.qx + 1, peaks.qy, calibration="origin")
    assert moved.centered and not peaks.centered and moved.qx[0] == 2.0


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"qx": [np.nan, 1.0]}, "qx holds 1 NaN/inf"),
        ({"offsets": [0, 1]}, r"offsets must have Rx\*Ry\+1 = 3 entries"),
        ({"offsets": [0, 2, 1]}, "never decrease and end at n_peaks=2"),
        ({"scan_shape": (2, -1)}, "scan_shape must be two positive integers"),
        ({"intensity": [1.0]}, "differ in length"),
        ({"units": "nm"}, r"units='nm' is not allowed"),
        ({"frame": "lab"}, r"frame='lab' is not allowed"),
    ],
)
def test_braggpeaks_validation(kwargs, pattern):
    base = {
        "qx": [1.0, 2.0],
        "qy": [1.0, 2.0],
        "intensity": [1.0, 2.0],
        "quality": [1.0, 1.0],
        "offsets": [0, 1, 2],
        "scan_shape": (1, 2),
    }
    base.update(kwargs)
    units = base.pop("units", "px")
    frame = base.pop("frame", "detector")
    with pytest.raises(ValueError, match=pattern):
        BraggPeaks(**base, units=units, frame=frame)


def _lattice_kwargs(shape=(2, 3)):
    mask = np.ones(shape, bool)
    mask[1, 2] = False
    f = np.where(mask[..., None], 1.0, np.nan)
    return dict(
        origin=np.zeros(shape + (2,)) * f,
        g1=np.tile([16.0, 0.0], shape + (1,)) * f,
        g2=np.tile([0.0, 16.0], shape + (1,)) * f,
        covariance=np.broadcast_to(np.eye(6), shape + (6, 6)) * f[..., None],
        residual=np.full(shape, 0.1) * f[..., 0],
        n_peaks=np.where(mask, 49, 1),
        mask=mask,
    )


def test_latticemap_valid_and_missing_positions():
    lm = LatticeMap(**_lattice_kwargs())
    assert lm.scan_shape == (2, 3) and lm.n_valid == 5
    assert np.isnan(lm.g1[1, 2]).all() and lm.g.shape == (2, 3, 2, 2)
    assert repr(lm) == "LatticeMap(scan_shape=(2, 3), valid=5/6, units='px', frame='detector')"


def test_latticemap_refuses_silent_values_and_nan_at_valid_positions():
    kw = _lattice_kwargs()
    kw["g1"] = np.nan_to_num(kw["g1"])
    with pytest.raises(ValueError, match="set them to NaN"):
        LatticeMap(**kw)
    kw = _lattice_kwargs()
    kw["residual"] = kw["residual"].copy()
    kw["residual"][0, 0] = np.nan
    with pytest.raises(ValueError, match="residual holds 1 NaN/inf value.*at valid positions"):
        LatticeMap(**kw)
    kw = _lattice_kwargs()
    kw["covariance"] = np.zeros((2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"covariance must have shape \(2, 3, 6, 6\)"):
        LatticeMap(**kw)


def test_strainmap_optional_fields():
    z = np.zeros((2, 2))
    sm = StrainMap(z, z, z, z, np.ones((2, 2), bool), sigma_exx=z + 1e-4, a=z + 4.0)
    assert sm.sigma_eyy is None and sm.a[0, 0] == 4.0
    with pytest.raises(ValueError, match=r"exy must have shape \(2, 2\)"):
        StrainMap(z, z, np.zeros(3), z, np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="frame_angle_deg must be finite"):
        StrainMap(z, z, z, z, np.ones((2, 2), bool), frame_angle_deg=np.nan)
