"""Reading scans and images: lazy cubes and clear errors for bad files."""

import h5py
import numpy as np
import pytest

import strainkit as sk


@pytest.fixture
def scan_file(tmp_path):
    path = tmp_path / "scan.h5"
    data = np.arange(3 * 4 * 8 * 8, dtype=np.uint16).reshape(3, 4, 8, 8)
    with h5py.File(path, "w") as f:
        f.create_dataset("experiment/datacube/data", data=data, chunks=(1, 4, 8, 8))
        f["experiment/haadf"] = np.ones((3, 4))
    return path, data


def test_read_finds_single_4d_dataset(scan_file):
    path, data = scan_file
    cube = sk.read(path)
    assert cube.metadata == {"source": str(path), "dataset": "/experiment/datacube/data"}
    np.testing.assert_array_equal(cube.to_numpy(), data)
    np.testing.assert_array_equal(
        sk.read(path, dataset="experiment/datacube/data")[2, 1], data[2, 1]
    )


def test_read_skips_small_4d_arrays(tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((3, 4, 16, 16), np.float32)
        f["truth/F"] = np.zeros((3, 4, 2, 2))  # a tensor per position is not a scan
        f["truth/centers"] = np.zeros((3, 4, 49, 2))
    assert sk.read(path).metadata["dataset"] == "/data"


def test_read_errors_say_what_to_do(tmp_path, scan_file):
    path, data = scan_file
    with pytest.raises(FileNotFoundError, match="no such file"):
        sk.read(tmp_path / "nope.h5")
    with pytest.raises(ValueError, match=r"shape \(3, 4\) \(2D\).*must be 4D"):
        sk.read(path, dataset="experiment/haadf")
    with pytest.raises(KeyError, match="has no dataset 'missing'"):
        sk.read(path, dataset="missing")
    with h5py.File(path, "a") as f:
        f["copy"] = data
    with pytest.raises(ValueError, match=r"several 4D datasets.*choose one with dataset="):
        sk.read(path)
    only2d = tmp_path / "image.h5"
    with h5py.File(only2d, "w") as f:
        f["image"] = np.ones((4, 4))
    with pytest.raises(ValueError, match=r"holds no 4D dataset.*'/image': \(4, 4\)"):
        sk.read(only2d)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(sk.FileFormatError, match="truncated.*or in another format"):
        sk.read(garbage)


def test_read_npy_and_raw(tmp_path):
    data = np.random.default_rng(0).random((2, 3, 5, 5)).astype(np.float32)
    np.save(tmp_path / "scan.npy", data)
    np.testing.assert_array_equal(sk.read(tmp_path / "scan.npy").to_numpy(), data)
    data.tofile(tmp_path / "scan.raw")
    cube = sk.read_raw(tmp_path / "scan.raw", data.shape, "<f4")
    np.testing.assert_array_equal(cube.to_numpy(), data)
    with pytest.raises(sk.FileFormatError, match="truncated or the shape/dtype is wrong"):
        sk.read_raw(tmp_path / "scan.raw", (2, 3, 5, 6), "<f4")
    np.save(tmp_path / "three.npy", data[0])
    with pytest.raises(ValueError, match="must be 4D"):
        sk.read(tmp_path / "three.npy")


def test_read_image(tmp_path):
    path = tmp_path / "images.h5"
    with h5py.File(path, "w") as f:
        f["haadf"] = np.arange(12.0).reshape(3, 4)
        f["shadow"] = np.ones((5, 5), np.float32)
    assert sk.read_image(path, "haadf").dtype == np.float64
    with pytest.raises(ValueError, match="several 2D datasets"):
        sk.read_image(path)
    with pytest.raises(FileNotFoundError):
        sk.read_image(tmp_path / "none.h5")
