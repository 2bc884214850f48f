"""EllipticalCalibrator against the simulator's truth: a/b, angle, ring radii, reuse."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

import strainkit as sk
from strainkit._geometry import distortion_matrix
from strainkit.containers import BraggPeaks
from strainkit.ellipse import (
    EllipticalCalibrator,
    coarse_ellipse,
    correct_ellipse,
    ellipse_from_stretch,
    fit_rings,
    stretch_from_ellipse,
)
from strainkit.origin import OriginCalibrator
from tests._calibration_scans import polycrystal

# (a/b, angle, scan size). At the default 2e5 e-/pattern, a 40 x 40 scan (~14 000 spots)
# measures a/b to ~1.8e-5 (1 sd over seeds); the angle's error grows as 1/(a/b - 1), so
# the 1.01 case uses 60 x 60 (~0.035° instead of ~0.045° at 40 x 40).
CASES = [(1.0, 0.0, 40), (1.025, 35.0, 40), (1.05, 179.5, 40), (1.01, 100.0, 60)]


def angle_error(a, b):
    return (a - b + 90.0) % 180.0 - 90.0


@pytest.fixture(scope="module")
def centred():
    """Centred peaks (and truth) of each case."""
    out = {}
    for ratio, angle, scan in CASES:
        truth, raw = polycrystal(ratio, angle, scan)
        out[ratio, angle] = truth, OriginCalibrator().fit_transform(raw)
    return out


@pytest.fixture(scope="module")
def fitted(centred):
    return {key: EllipticalCalibrator().fit(peaks) for key, (_, peaks) in centred.items()}


@pytest.mark.parametrize(("ratio", "angle"), [c[:2] for c in CASES])
def test_ellipse_matches_the_truth(centred, fitted, ratio, angle):
    truth, _ = centred[ratio, angle]
    cal = fitted[ratio, angle]
    a, b, found_angle = cal.ellipse_
    assert b == 1.0 and a >= 1.0 and 0.0 <= found_angle < 180.0
    assert abs(a / b - ratio) <= 5e-5
    assert abs(a / b - ratio) <= 4 * cal.ellipse_std_[0] + 1e-6
    if ratio > 1.0:  # at 1.00 the angle is undefined
        assert abs(angle_error(found_angle, angle)) <= 0.1
        assert abs(angle_error(found_angle, angle)) <= 4 * cal.ellipse_std_[2]
    else:
        assert cal.ellipse_std_[2] > 1.0  # and says so
    # the correction keeps the minor axis: the rings have their true radii
    np.testing.assert_allclose(cal.ring_radii_, truth.ring_radii, atol=3e-3)
    assert cal.ring_radii_std_.max() < 1e-3
    assert (cal.ring_counts_ > 1000).all()
    assert 0.015 < cal.residual_rms_ < 0.03  # the disk finder's ~0.022 px


def test_transform_makes_the_rings_circles(centred, fitted):
    truth, peaks = centred[1.05, 179.5]
    cal = fitted[1.05, 179.5]
    out = cal.transform(peaks)
    assert out.calibrations == ("origin", "ellipse") and out.units == "px"
    assert out.metadata["ellipse"] == list(cal.ellipse_)
    theta = np.deg2rad(179.5)

    def quadrupole(qx, qy):
        r, phi = np.hypot(qx, qy), np.arctan2(qy, qx)
        ring = np.argmin(np.abs(r[:, None] - truth.ring_radii[None, :]), axis=1)
        rel = r / truth.ring_radii[ring] - 1.0
        on = np.abs(rel) < 0.07
        return float(2 * np.mean((rel * np.cos(2 * (phi - theta)))[on]))

    assert quadrupole(peaks.qx, peaks.qy) == pytest.approx(0.05 / 2, rel=0.05)
    assert abs(quadrupole(out.qx, out.qy)) < 2e-5
    # the exact correction of the truth: D^-1 with the simulator's D
    inv = np.linalg.inv(distortion_matrix(1.05, 1.0, 179.5))
    qx, _qy = correct_ellipse(peaks.qx, peaks.qy, (1.05, 1.0, 179.5))
    np.testing.assert_allclose(qx, inv[0, 0] * peaks.qx + inv[0, 1] * peaks.qy)
    np.testing.assert_allclose(out.qx, qx, atol=2e-3)


def test_one_annulus(centred):
    truth, peaks = centred[1.025, 35.0]
    cal = EllipticalCalibrator(annulus=(46.0, 54.0)).fit(peaks)  # the 220 ring only
    assert cal.ring_radii_.size == 1
    assert cal.ring_radii_[0] == pytest.approx(truth.ring_radii[2], abs=5e-3)
    assert abs(cal.ellipse_[0] - 1.025) <= 1.5e-4  # a third of the spots
    assert abs(angle_error(cal.ellipse_[2], 35.0)) <= 0.3


def test_scattered_false_peaks_make_no_ring(centred):
    truth, peaks = centred[1.025, 35.0]
    # a fifth more peaks, anywhere on the detector (noise, dirt, a weak amorphous film)
    rng = np.random.default_rng(2)
    n = peaks.n_peaks // 5
    pos = np.concatenate([peaks.position_index, rng.integers(0, peaks.n_positions, n)])
    qx = np.concatenate([peaks.qx, rng.uniform(-60, 60, n)])
    qy = np.concatenate([peaks.qy, rng.uniform(-60, 60, n)])
    inten = np.concatenate([peaks.intensity, rng.choice(peaks.intensity, n)])
    order = np.argsort(pos, kind="stable")
    offsets = np.r_[0, np.cumsum(np.bincount(pos, minlength=peaks.n_positions))]
    noisy = BraggPeaks(qx[order], qy[order], inten[order], np.ones(qx.size), offsets,
                       peaks.scan_shape, calibrations=("origin",))  # fmt: skip
    cal = EllipticalCalibrator().fit(noisy)
    np.testing.assert_allclose(cal.ring_radii_, truth.ring_radii, atol=3e-3)
    assert abs(cal.ellipse_[0] - 1.025) <= 5e-5
    assert abs(angle_error(cal.ellipse_[2], 35.0)) <= 0.1


def test_noise_free_rings_are_exact():
    phi = np.linspace(0, 2 * np.pi, 37, endpoint=False)
    circle = np.stack([np.cos(phi), np.sin(phi)])
    pts = distortion_matrix(1.04, 1.0, 123.0) @ np.concatenate([30 * circle, 52 * circle], 1)
    peaks = BraggPeaks(*pts, np.ones(74), np.ones(74), [0, 74], (1, 1), calibrations=("origin",))
    cal = EllipticalCalibrator(weights="none").fit(peaks)
    np.testing.assert_allclose(cal.ellipse_, (1.04, 1.0, 123.0), rtol=0, atol=1e-8)
    np.testing.assert_allclose(cal.ring_radii_, [30.0, 52.0], atol=1e-8)
    out = cal.transform(peaks)
    np.testing.assert_allclose(np.hypot(out.qx, out.qy), np.repeat([30.0, 52.0], 37))


def test_pure_functions():
    for ratio, angle in ((1.0, 0.0), (1.03, 0.0), (1.03, 90.0), (1.2, 179.9)):
        back = ellipse_from_stretch(*stretch_from_ellipse(ratio, angle))
        assert back[0] == pytest.approx(ratio)
        assert angle_error(back[1], angle) == pytest.approx(0.0, abs=1e-9) or ratio == 1.0
    phi = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    ring = distortion_matrix(1.02, 1.0, 10.0) @ (45 * np.stack([np.cos(phi), np.sin(phi)]))
    ratio, angle = ellipse_from_stretch(*coarse_ellipse(*ring))
    assert abs(ratio - 1.02) < 2e-3 and abs(angle_error(angle, 10.0)) < 3
    x, _cov, _res = fit_rings(*ring, np.zeros(90, int), 1, (0.0, 0.0))
    assert ellipse_from_stretch(*x[:2])[0] == pytest.approx(1.02, abs=1e-10)


# ---------------------------------------------------------------------------- errors


def test_errors_say_what_to_do(centred, fitted):
    _, peaks = centred[1.025, 35.0]
    cal = fitted[1.025, 35.0]
    raw = polycrystal(1.025, 35.0, 40)[1]
    with pytest.raises(ValueError, match="needs centred peaks.*OriginCalibrator"):
        EllipticalCalibrator().fit(raw)
    with pytest.raises(ValueError, match="needs centred peaks"):
        cal.transform(raw)
    corrected = cal.transform(peaks)
    with pytest.raises(ValueError, match="already have the 'ellipse' calibration"):
        EllipticalCalibrator().fit(corrected)
    with pytest.raises(ValueError, match="already have the 'ellipse' calibration"):
        cal.transform(corrected)
    in_a = peaks.replace(units="A^-1")
    with pytest.raises(ValueError, match="needs peaks in units 'px', got 'A\\^-1'"):
        EllipticalCalibrator().fit(in_a)
    with pytest.raises(ValueError, match="no rings found: only 0 peak"):
        EllipticalCalibrator().fit(BraggPeaks.empty((2, 2), calibrations=("origin",)))
    # only central beams (and a few scattered peaks): no ring
    rng = np.random.default_rng(0)
    scattered = np.concatenate([np.zeros((50, 2)), rng.uniform(-60, 60, (30, 2))])
    lonely = BraggPeaks(*scattered.T, np.ones(80), np.ones(80), [0, 80], (1, 1),
                        calibrations=("origin",))  # fmt: skip
    with pytest.raises(ValueError, match="no rings found among 30 peaks"):
        EllipticalCalibrator().fit(lonely)
    with pytest.raises(ValueError, match="within the annulus"):
        EllipticalCalibrator(annulus=(5.0, 6.0)).fit(peaks)
    with pytest.raises(ValueError, match="invalid parameter annulus"):
        EllipticalCalibrator(annulus=(50.0, 40.0)).fit(peaks)
    with pytest.raises(ValueError, match="invalid parameter max_ratio=0.9"):
        EllipticalCalibrator(max_ratio=0.9).fit(peaks)
    with pytest.raises(NotFittedError):
        EllipticalCalibrator().transform(peaks)


# ---------------------------------------------------------------------------- reuse


def test_frozen_ellipse_is_reused_on_another_scan(fitted):
    cal = fitted[1.025, 35.0]
    before = (cal.ellipse_, cal.ring_radii_.copy())
    other = polycrystal(1.0, 0.0, 40)[1]  # another scan: refitting would give a/b ~ 1
    pipe = Pipeline([("origin", OriginCalibrator()), ("ellipse", FrozenEstimator(cal))])
    out = pipe.fit(other).transform(other)
    assert cal.ellipse_ == before[0]
    np.testing.assert_array_equal(cal.ring_radii_, before[1])
    assert pipe.named_steps["origin"].scan_shape_ == other.scan_shape  # refitted
    expected = cal.transform(OriginCalibrator().fit_transform(other))
    np.testing.assert_array_equal(out.qx, expected.qx)
    np.testing.assert_array_equal(pipe.fit_transform(other).qy, expected.qy)
    assert cal.ellipse_ == before[0]


def test_save_and_load(fitted, centred, tmp_path):
    cal = fitted[1.01, 100.0]
    sk.save(cal, tmp_path / "ellipse.h5")
    back = sk.load_model(tmp_path / "ellipse.h5")
    assert type(back) is EllipticalCalibrator
    assert back.ellipse_ == cal.ellipse_ and back.ellipse_std_ == cal.ellipse_std_
    for name in ("ring_radii_", "ring_radii_std_", "ring_counts_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cal, name))
    peaks = centred[1.01, 100.0][1]
    np.testing.assert_array_equal(back.transform(peaks).qx, cal.transform(peaks).qx)
    # a frozen calibrator inside a pipeline survives the round trip too
    pipe = Pipeline([("ellipse", FrozenEstimator(cal))])
    sk.save(pipe, tmp_path / "pipe.h5")
    again = sk.load_model(tmp_path / "pipe.h5")
    assert again.named_steps["ellipse"].estimator.ellipse_ == cal.ellipse_
