"""OriginCalibrator: central beam and Friedel-pair origins, robust descan models, errors."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import strainkit as sk
from strainkit import simulate
from strainkit.containers import BraggPeaks
from strainkit.origin import (
    OriginCalibrator,
    central_beam_origins,
    design_matrix,
    fit_surface,
    friedel_origins,
)
from tests._calibration_scans import find_peaks


def rmse(origins, truth, mask=None):
    err = np.sum((origins - truth) ** 2, axis=-1)
    return float(np.sqrt(np.mean(err if mask is None else err[mask])))


@pytest.fixture(scope="module")
def crystal():
    """The default single crystal (plane descan, 2e5 e-, 1 px PSF), 24 x 24 positions."""
    sim = simulate.simulate_crystal(scan_shape=(24, 24), seed=3)
    return sim, find_peaks(sim.data)


@pytest.fixture(scope="module")
def crystal_with_empty_frames(crystal):
    """The same scan with 5 % of the patterns set to zero (they have no peaks)."""
    sim, _ = crystal
    data = np.array(sim.data)
    empty = np.zeros(sim.truth.origins.shape[:2], dtype=bool)
    rng = np.random.default_rng(0)
    empty.flat[rng.choice(empty.size, int(0.05 * empty.size), replace=False)] = True
    data[empty] = 0
    return empty, find_peaks(data)


def test_plane_descan_on_the_default_crystal(crystal):
    sim, peaks = crystal
    cal = OriginCalibrator().fit(peaks)
    truth = sim.truth.origins
    assert cal.mask_.all()
    assert rmse(cal.origin_, truth) <= 0.03  # the target; measured ~0.003 px
    assert rmse(cal.origin_, truth) <= 0.006
    assert rmse(cal.origin_measured_, truth) <= 0.04  # one central beam: ~0.03 px
    # the plane's slopes are the microscope's descan matrix (px per scan step)
    slopes = np.asarray(sim.microscope.descan_matrix)
    np.testing.assert_allclose(cal.coefficients_[1:].T, slopes, atol=3e-4)
    assert cal.residual_rms_ == pytest.approx(rmse(cal.origin_measured_, cal.origin_), rel=1e-9)
    assert cal.scan_shape_ == (24, 24)


def test_transform_centres_every_peak_without_a_loop(crystal):
    _sim, peaks = crystal
    cal = OriginCalibrator().fit(peaks)
    centred = cal.transform(peaks)
    assert centred.calibrations == ("origin",) and centred.centered
    assert centred.n_peaks == peaks.n_peaks
    o = cal.origin_.reshape(-1, 2)[peaks.position_index]
    np.testing.assert_array_equal(centred.qx, peaks.qx - o[:, 0])
    np.testing.assert_array_equal(centred.qy, peaks.qy - o[:, 1])
    # the central beam of every position is now within a few hundredths of 0
    near = np.hypot(centred.qx, centred.qy) < 1.0
    assert np.bincount(centred.position_index[near], minlength=peaks.n_positions).min() == 1
    assert np.abs(centred.qx[near]).max() < 0.15


def test_five_percent_empty_patterns_are_masked(crystal, crystal_with_empty_frames):
    sim, _ = crystal
    empty, peaks = crystal_with_empty_frames
    assert (peaks.counts[empty] == 0).all()
    cal = OriginCalibrator().fit(peaks)
    np.testing.assert_array_equal(cal.mask_, ~empty)
    assert np.isnan(cal.origin_measured_[empty]).all()
    assert np.isfinite(cal.origin_).all()  # the plane is defined everywhere
    assert rmse(cal.origin_, sim.truth.origins) <= 0.006
    # with model='none' those positions have no origin, and their peaks are dropped
    none = OriginCalibrator(model="none").fit(peaks)
    assert np.isnan(none.origin_[empty]).all()
    np.testing.assert_array_equal(none.origin_[~empty], none.origin_measured_[~empty])
    assert none.coefficients_.shape == (0, 2) and none.residual_rms_ == 0.0
    assert none.transform(peaks).n_peaks == peaks.n_peaks


def test_model_none_drops_the_peaks_of_masked_positions():
    beam = np.array([[60.0, 64.0, 9.0, 1.0], [70.0, 80.0, 2.0, 1.0]])
    far = np.array([[75.0, 64.0, 1.0, 1.0]])  # no central beam near the others
    peaks = BraggPeaks.from_positions([beam, beam, beam, np.zeros((0, 4)), far], (1, 5))
    cal = OriginCalibrator(model="none", search_radius=2.0).fit(peaks)
    np.testing.assert_array_equal(cal.mask_, [[True, True, True, False, False]])
    out = cal.transform(peaks)
    np.testing.assert_array_equal(out.counts, [[2, 2, 2, 0, 0]])
    np.testing.assert_allclose(out.qx, [0.0, 10.0] * 3)
    # a model is defined everywhere: every peak is kept
    plane = OriginCalibrator(model="constant", search_radius=2.0).fit(peaks)
    np.testing.assert_array_equal(plane.mask_, [[True, True, True, False, False]])
    assert plane.transform(peaks).n_peaks == peaks.n_peaks


def test_outliers_do_not_move_the_model(crystal):
    sim, peaks = crystal
    # at 10 % of the positions a spurious peak brighter than the central beam sits 2 px
    # from it: the measurement there is wrong, the robust plane must not follow it
    rng = np.random.default_rng(1)
    bad = rng.random(peaks.n_positions) < 0.10
    extra_pos = np.flatnonzero(bad)
    origins = sim.truth.origins.reshape(-1, 2)[extra_pos]
    qx = np.concatenate([peaks.qx, origins[:, 0] + 2.0])
    qy = np.concatenate([peaks.qy, origins[:, 1]])
    pos = np.concatenate([peaks.position_index, extra_pos])
    brightest = peaks.intensity.max() * 2
    inten = np.concatenate([peaks.intensity, np.full(extra_pos.size, brightest)])
    order = np.argsort(pos, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(pos, minlength=peaks.n_positions))])
    noisy = BraggPeaks(
        qx[order], qy[order], inten[order], np.ones(qx.size), offsets, peaks.scan_shape
    )
    cal = OriginCalibrator().fit(noisy)
    np.testing.assert_array_equal(cal.mask_.ravel(), ~bad)
    assert rmse(cal.origin_, sim.truth.origins) <= 0.006
    # RANSAC-like threshold given by the user
    cal = OriginCalibrator(residual_threshold=0.5).fit(noisy)
    np.testing.assert_array_equal(cal.mask_.ravel(), ~bad)


def test_friedel_origins_with_a_blocked_central_beam():
    sim = simulate.simulate_polycrystal(scan_shape=(16, 16), seed=3, central_beam=0.0)
    peaks = find_peaks(sim.data)
    cal = OriginCalibrator(method="friedel").fit(peaks)
    truth = sim.truth.origins
    assert cal.mask_.mean() > 0.85  # positions with fewer than 2 pairs are masked
    assert rmse(cal.origin_measured_, truth, cal.mask_) <= 0.03  # ~0.01 px
    assert rmse(cal.origin_, truth) <= 0.005
    # the central method cannot work here: it picks the brightest spot
    central = OriginCalibrator(method="central").fit(peaks)
    assert rmse(central.origin_, truth) > 1.0


def test_friedel_with_jitter_and_no_model():
    # a blocked central beam and a random 0.5 px origin jitter that no smooth model follows
    microscope = simulate.Microscope(descan_jitter=0.5)
    sim = simulate.simulate_crystal(microscope, scan_shape=(12, 12), seed=8, central_beam=0.0)
    peaks = find_peaks(sim.data)
    cal = OriginCalibrator(method="friedel", model="none").fit(peaks)
    assert cal.mask_.all()
    assert rmse(cal.origin_, sim.truth.origins) <= 0.03  # ~0.02 px
    out = cal.transform(peaks)
    assert out.n_peaks == peaks.n_peaks and out.calibrations == ("origin",)


def test_friedel_on_the_crystal_agrees_with_the_central_beam(crystal):
    sim, peaks = crystal
    cal = OriginCalibrator(method="friedel").fit(peaks)
    assert cal.mask_.all()
    assert rmse(cal.origin_measured_, sim.truth.origins) <= 0.03  # ~0.02 px
    assert rmse(cal.origin_, sim.truth.origins) <= 0.004


@pytest.mark.parametrize("model", ["constant", "plane", "parabola"])
def test_models_recover_their_own_descan_exactly(model):
    shape = (7, 9)
    x = design_matrix(shape, model)
    coef = np.array([[60.0, 62.0], [0.05, -0.02], [0.01, 0.04], [1e-3, 0], [0, -2e-3], [5e-4, 0]])
    origins = x @ coef[: x.shape[1]]
    rows = [np.array([[ox, oy, 10.0, 1.0], [ox + 20.0, oy - 5.0, 3.0, 1.0]]) for ox, oy in origins]
    peaks = BraggPeaks.from_positions(rows, scan_shape=shape)
    cal = OriginCalibrator(model=model).fit(peaks)
    np.testing.assert_allclose(cal.coefficients_, coef[: x.shape[1]], atol=1e-9)
    np.testing.assert_allclose(cal.origin_.reshape(-1, 2), origins, atol=1e-9)
    assert cal.mask_.all() and cal.residual_rms_ < 1e-9


def test_pure_functions():
    qx, qy = np.array([1.0, 5.0, 7.0]), np.array([1.0, 5.0, 7.0])
    got = central_beam_origins(qx, qy, np.array([1.0, 3.0, 2.0]), np.array([0, 3]))
    np.testing.assert_array_equal(got, [[5.0, 5.0]])
    # a Friedel set plus a strong unpaired peak
    g = np.array([[12.0, 3.0], [-4.0, 15.0]])
    pts = np.concatenate([64 + g, 64 - g, [[80.0, 80.0]]])
    origin, n = friedel_origins(pts[:, 0], pts[:, 1], np.r_[1, 1, 1, 1, 50.0], np.array([0, 5]))
    np.testing.assert_allclose(origin, [[64.0, 64.0]])
    assert n.tolist() == [2]
    # too few pairs -> NaN
    origin, _ = friedel_origins(pts[:2, 0], pts[:2, 1], np.ones(2), np.array([0, 2]))
    assert np.isnan(origin).all()
    with pytest.raises(ValueError, match="no position has a measurement"):
        fit_surface(np.full((4, 2), np.nan), (2, 2), "plane")


# ---------------------------------------------------------------------------- errors


def test_errors_say_what_to_do(crystal):
    _, peaks = crystal
    cal = OriginCalibrator().fit(peaks)
    centred = cal.transform(peaks)
    with pytest.raises(ValueError, match="already have the 'origin' calibration"):
        OriginCalibrator().fit(centred)
    with pytest.raises(ValueError, match="already have the 'origin' calibration"):
        cal.transform(centred)
    in_a = peaks.replace(units="A^-1")
    with pytest.raises(ValueError, match="needs peaks in units 'px', got 'A\\^-1'"):
        OriginCalibrator().fit(in_a)
    other = BraggPeaks.from_positions([np.ones((1, 4))] * 6, scan_shape=(2, 3))
    with pytest.raises(ValueError, match=r"fitted on a scan of shape \(24, 24\).*\(2, 3\)"):
        cal.transform(other)
    with pytest.raises(ValueError, match="peak table is empty"):
        OriginCalibrator().fit(BraggPeaks.empty((3, 3)))
    with pytest.raises(ValueError, match="no position has 2\\+ Friedel pairs"):
        OriginCalibrator(method="friedel").fit(other)
    with pytest.raises(NotFittedError):
        OriginCalibrator().transform(peaks)
    with pytest.raises(ValueError, match="invalid parameter model='cubic'"):
        OriginCalibrator(model="cubic").fit(peaks)
    with pytest.raises(ValueError, match="invalid parameter search_radius=-1"):
        OriginCalibrator(search_radius=-1).fit(peaks)
    with pytest.raises(ValueError, match="expected BraggPeaks"):
        OriginCalibrator().fit(np.zeros((3, 4)))


def test_sklearn_api_and_persistence(crystal, tmp_path):
    _, peaks = crystal
    cal = OriginCalibrator(model="parabola")
    assert clone(cal).get_params() == cal.get_params()
    assert repr(cal) == "OriginCalibrator(model='parabola')"
    out = cal.fit_transform(peaks)
    sk.save(cal, tmp_path / "origin.h5")
    back = sk.load_model(tmp_path / "origin.h5")
    for name in ("origin_", "origin_measured_", "coefficients_", "mask_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cal, name))
    assert back.scan_shape_ == cal.scan_shape_ and back.residual_rms_ == cal.residual_rms_
    np.testing.assert_array_equal(back.transform(peaks).qx, out.qx)
    # fit never mutates its input
    assert peaks.calibrations == () and peaks.qx.flags.writeable is False
