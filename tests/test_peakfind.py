"""The numba building blocks of disk refinement against plain numpy references."""

import numpy as np
import pytest

from strainkit import _peakfind as pf


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    frame = (rng.random((40, 48)) * 10).astype(np.float32)
    resid = (frame - rng.random((40, 48)) * 3).astype(np.float32)
    return frame, resid


def padded_window(image, i, j, h, fill):
    """Window of half-width h centred on (i, j), ``fill`` off the image (numpy)."""
    big = np.pad(image, h, constant_values=fill)
    return big[i : i + 2 * h + 1, j : j + 2 * h + 1].ravel()


@pytest.mark.parametrize("i, j", [(20, 24), (2, 24), (20, 46), (0, 0), (39, 47)])
def test_windows_are_copied_out_flat_with_the_detector_edge_filled(images, i, j):
    frame, resid = images
    h = 5
    win = np.full((2 * h + 1) ** 2, np.nan, np.float32)
    pf.load_window(frame, i, j, h, win)
    np.testing.assert_array_equal(win, padded_window(frame, i, j, h, 0.0))
    wr, wf = np.full_like(win, np.nan), np.full_like(win, np.nan)
    pf.load_window(resid, i, j, h, wr)
    pf.load_window(frame, i, j, h, wf, np.inf)
    np.testing.assert_array_equal(wr, padded_window(resid, i, j, h, 0.0))
    np.testing.assert_array_equal(wf, padded_window(frame, i, j, h, np.inf))


@pytest.mark.parametrize("b", [2, 3])
def test_binning_sums_whole_blocks(b):
    frames = np.random.default_rng(1).random((3, 10, 14)).astype(np.float32)
    out = np.empty((3, 10 // b, 14 // b), np.float32)
    pf.bin_frames(frames, b, out)
    cut = frames[:, : 10 // b * b, : 14 // b * b]
    expected = cut.reshape(3, 10 // b, b, 14 // b, b).sum(axis=(2, 4))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_background_plane_is_blind_to_curvature_and_to_the_disks():
    """A curved background with a disk beside the window: the fit gives the gradient and
    the level at the disk's pixel, from the gap pixels only."""
    x, y = np.mgrid[:64, :64].astype(float)
    i, j = 30, 33
    background = 4.0 + 0.05 * (x - i) - 0.03 * (y - j) + 0.002 * (x - i) ** 2
    models = np.zeros_like(background)
    models[18:28, 36:46] = 500.0  # a bright disk to one side: the pairs must skip it
    error = np.where(models > 0, 25.0, 0.0)  # the disk's model is off by 5 %
    resid = (background + error).astype(np.float32)
    frame = (background + models).astype(np.float32)
    h = 15
    wr = np.empty((2 * h + 1) ** 2, np.float32)
    wf = np.empty_like(wr)
    out = np.zeros(3)
    assert pf.fit_slope(resid, frame, 1.0, i, j, h, wr, wf, pf.window_offsets(h), out)
    # slope: the gradient at (i, j); level: the mean over the pairs, which includes the
    # curvature's average over the window (a symmetric kernel ignores it)
    np.testing.assert_allclose(out[:2], [0.05, -0.03], atol=1e-5)
    assert 4.0 < out[2] < 4.0 + 0.002 * h**2
    frame[:] = resid + 1000.0  # no gaps at all
    assert not pf.fit_slope(resid, frame, 1.0, i, j, h, wr, wf, pf.window_offsets(h), out)


@pytest.mark.parametrize(
    "shape, radius, tol",
    [((37, 53), 3.0, 0.01), ((64, 64), 6.0, 0.01), ((33, 96), 8.5, 0.01), ((20, 24), 5.5, 0.3)],
)
def test_any_detector_shape_and_disks_over_the_edge(shape, radius, tol):
    """Odd shapes (not binned), windows larger than the detector, disks cut by the edge:
    the unchecked row copies stay inside, every output is finite, and the disk wholly
    inside is found (exactly, unless the detector is too small to hold it clear of the
    others: on 20 x 24 px the cut disks, never detected, overlap its window and the
    first moment's aperture)."""
    import strainkit as sk
    from strainkit.probe import ProbeTemplate, disk_model

    nx, ny = shape
    inside = (nx / 2 + 0.3, ny / 2 - 0.2)
    # edges 1 px wide: sharper ones alias, which pins a lone disk to the pixel grid
    frame = 1000.0 * disk_model(shape, inside, radius, 1.0)
    for center in [(-radius / 2, ny / 3), (nx + 1.0, 2.0), (nx / 3, ny - 1.5)]:
        frame += 400.0 * disk_model(shape, center, radius, 1.0)
    probe = ProbeTemplate.synthetic(radius, 1.0, shape)
    peaks = sk.BraggDiskFinder(probe=probe, edge_boundary=0, progress=False).transform(
        sk.DataCube(frame[None, None])
    )
    assert np.isfinite(np.stack([peaks.qx, peaks.qy, peaks.intensity, peaks.quality])).all()
    assert np.hypot(peaks.qx - inside[0], peaks.qy - inside[1]).min() < tol
