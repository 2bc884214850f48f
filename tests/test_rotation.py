"""The rotation calibration: registration against the simulator's truth, scan rotation,
transform of Bragg peaks, bad input and parameters."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import strainkit as sk
from strainkit import simulate
from strainkit._geometry import flip_matrix, rotation_matrix
from strainkit.rotation import (
    RotationCalibrator,
    effective_rotation,
    register_images,
    rotate_to_real,
    shadow_disk_mask,
)

SHAPE = (96, 96)
N_FEATURES = 25
# 24 rotations across -180..180 (not on round numbers), both flips, two scales: 96 fits.
ROTATIONS = -180.0 + 15.0 * np.arange(24) + 3.7
SCALES = (0.8, 1.3)


def _ellipse(microscope):
    ratio, angle = microscope.ellipse
    return (ratio, 1.0, angle)


def _simulate(rotation_deg, flip, scale=1.0, seed=0, **kwargs):
    m = simulate.Microscope(rotation_deg=rotation_deg, flip=flip)
    kwargs = {"image_shape": SHAPE, "n_features": N_FEATURES, **kwargs}
    return simulate.simulate_images(m, scale=scale, seed=seed, **kwargs)


def _angle_error(measured, true):
    return (measured - true + 180.0) % 360.0 - 180.0


@pytest.fixture(scope="module")
def sweep():
    """Fit every case of the grid once (default noise); the tests below check the results."""
    rows = []
    for i, rotation in enumerate(ROTATIONS):
        for flip in (False, True):
            for scale in SCALES:
                sim = _simulate(rotation, flip, scale, seed=i)
                cal = RotationCalibrator(ellipse=_ellipse(sim.microscope))
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # a clean match never warns
                    cal.fit(sim.haadf, sim.shadow)
                rows.append((rotation, flip, scale, cal, sim.truth))
    return rows


def test_sweep_finds_flip_and_rotation_within_a_tenth_of_a_degree(sweep):
    assert len(sweep) == 96
    errors = []
    for rotation, flip, scale, cal, _ in sweep:
        assert cal.flip_ == flip, (rotation, flip, scale)
        errors.append(_angle_error(cal.rotation_deg_, rotation))
        assert -180.0 <= cal.rotation_deg_ < 180.0
    assert np.max(np.abs(errors)) <= 0.1


def test_sweep_scale_offset_and_score(sweep):
    for rotation, flip, scale, cal, truth in sweep:
        case = (rotation, flip, scale)
        assert cal.scale_ == pytest.approx(scale, rel=3e-3), case
        # the fitted map puts the image's corners where the truth does, within 0.5 px
        corners = np.array([[0.0, 0.0], [0.0, 95.0], [95.0, 0.0], [95.0, 95.0]])
        fitted = corners @ cal.affine_[:, :2].T + cal.offset_
        np.testing.assert_allclose(fitted, truth.real_to_shadow(corners), atol=0.5, err_msg=case)
        assert 0.9 < cal.score_ <= 1.0 and cal.margin_ > 1.5 and cal.contrast_ == "inverted"


def test_sweep_standard_error_is_honest(sweep):
    errors = np.array([_angle_error(c.rotation_deg_, r) for r, _, _, c, _ in sweep])
    stds = np.array([c.rotation_std_deg_ for *_, c, _ in sweep])
    z = errors / stds
    assert np.all(np.abs(z) < 3.5)
    assert 0.6 < np.sqrt(np.mean(z**2)) < 1.5  # neither over- nor under-confident
    assert np.all(stds < 0.06)


def test_without_the_ellipse_and_with_a_given_mask():
    sim = _simulate(-140.0, False, 1.0, seed=4)
    plain = RotationCalibrator().fit(sim.haadf, sim.shadow)
    assert not plain.flip_ and abs(_angle_error(plain.rotation_deg_, -140.0)) < 0.1
    t = sim.truth
    x, y = np.mgrid[: sim.shadow.shape[0], : sim.shadow.shape[1]]
    q = np.stack([x - t.shadow_center[0], y - t.shadow_center[1]], -1)
    rho = np.hypot(*np.moveaxis(q @ np.linalg.inv(sim.microscope.distortion).T, -1, 0))
    mask = rho < t.shadow_radius - 5
    cal = RotationCalibrator(ellipse=_ellipse(sim.microscope))
    cal.fit(sim.haadf, sim.shadow, shadow_mask=mask)
    assert abs(_angle_error(cal.rotation_deg_, -140.0)) < 0.1


def test_ellipse_from_a_fitted_calibrator_or_a_tuple():
    sim = _simulate(75.0, True, 1.1, seed=3)

    class Fitted:  # stands for a fitted EllipticalCalibrator
        ellipse_ = _ellipse(sim.microscope)

    a = RotationCalibrator(ellipse=Fitted()).fit(sim.haadf, sim.shadow)
    b = RotationCalibrator(ellipse=_ellipse(sim.microscope)).fit(sim.haadf, sim.shadow)
    assert a.rotation_deg_ == b.rotation_deg_ and a.flip_ and b.flip_
    with pytest.raises(ValueError, match="ellipse=.*not fitted"):
        RotationCalibrator(ellipse=sk.ProbeTemplate()).fit(sim.haadf, sim.shadow)


def test_contrast_inversion_is_detected():
    sim = _simulate(-23.0, True, 0.9, seed=5)
    ellipse = _ellipse(sim.microscope)
    bright_field = -sim.haadf  # features dark in the image as in the shadow
    cal = RotationCalibrator(ellipse=ellipse).fit(bright_field, sim.shadow)
    assert cal.contrast_ == "same" and abs(_angle_error(cal.rotation_deg_, -23.0)) < 0.1
    with pytest.warns(UserWarning, match="low match score"):
        RotationCalibrator(ellipse=ellipse, contrast="inverted").fit(bright_field, sim.shadow)


def test_featureless_images_raise_or_warn():
    sim = _simulate(40.0, False, 1.0, seed=6)
    with pytest.raises(ValueError, match="image is featureless"):
        RotationCalibrator().fit(np.full(SHAPE, 3.0), sim.shadow)
    with pytest.raises(ValueError, match="shadow image is constant"):
        RotationCalibrator().fit(sim.haadf, np.ones((64, 64)))
    noise = np.random.default_rng(1).normal(size=SHAPE)
    with pytest.warns(UserWarning, match="low match score .*check the images") as record:
        cal = RotationCalibrator().fit(noise, sim.shadow)
    assert len(record) == 1 and (cal.score_ < 0.5 or cal.margin_ < 1.5)
    # a shadow without features: only the bright disk with its Poisson noise
    blank = np.random.default_rng(2).poisson(sim.truth.shadow_disk).astype(float)
    with pytest.warns(UserWarning, match="low match score"):
        cal = RotationCalibrator().fit(sim.haadf, blank)
    assert cal.score_ < 0.5


def test_another_area_warns():
    sim = _simulate(40.0, False, 1.0, seed=6)
    other = _simulate(40.0, False, 1.0, seed=7)
    with pytest.warns(UserWarning, match="low match score"):
        cal = RotationCalibrator().fit(other.haadf, sim.shadow)
    assert cal.margin_ < 1.5


def test_bad_images():
    sim = _simulate(10.0, False, seed=8)
    haadf = np.array(sim.haadf)
    haadf[3, 4] = np.nan
    with pytest.raises(
        ValueError, match=r"the image holds 1 NaN/inf pixel\(s\) \(first at \(3, 4\)\)"
    ):
        RotationCalibrator().fit(haadf, sim.shadow)
    shadow = np.array(sim.shadow)
    shadow[0, 1] = np.inf
    with pytest.raises(
        ValueError, match=r"the shadow holds 1 NaN/inf .*median of the finite pixels"
    ):
        RotationCalibrator().fit(sim.haadf, shadow)
    with pytest.raises(ValueError, match=r"image must be a 2D image .*got 3D"):
        RotationCalibrator().fit(np.ones((2, 32, 32)), sim.shadow)
    with pytest.raises(ValueError, match="shadow must be a 2D image"):
        RotationCalibrator().fit(sim.haadf, np.ones(32))
    with pytest.raises(ValueError, match=r"shadow_mask has shape \(4, 4\)"):
        RotationCalibrator().fit(sim.haadf, sim.shadow, shadow_mask=np.ones((4, 4), bool))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"contrast": "dark"}, "contrast='dark'"),
        ({"scale_range": (2.0, 1.0)}, r"scale_range=\(2.0, 1.0\)"),
        ({"scale_range": (0.0, 1.0)}, "scale_range"),
        ({"ellipse": (1.0, 1.1, 0.0)}, r"ellipse=.*a >= b > 0"),
        ({"ellipse": "round"}, "ellipse='round'"),
        ({"scan_rotation_deg": np.nan}, "scan_rotation_deg=nan"),
        ({"calibration_scan_rotation_deg": "x"}, "calibration_scan_rotation_deg='x'"),
        ({"min_score": 2.0}, "min_score=2.0"),
        ({"highpass_sigma": -1.0}, "highpass_sigma=-1.0"),
    ],
)
def test_parameters_are_validated(params, match):
    with pytest.raises(ValueError, match=match):
        RotationCalibrator(**params).fit(np.ones((32, 32)), np.ones((32, 32)))


def test_from_value_and_wrapping():
    cal = RotationCalibrator.from_value(190.0, True, calibration_scan_rotation_deg=5.0)
    assert cal.rotation_deg_ == -170.0 and cal.flip_ is True
    assert np.isnan(cal.scale_) and cal.affine_ is None and cal.rotation_std_deg_ == 0.0
    assert RotationCalibrator.from_value(-180.0, False).rotation_deg_ == -180.0
    assert RotationCalibrator.from_value(180.0, False).rotation_deg_ == -180.0
    with pytest.raises(ValueError, match="flip=1"):
        RotationCalibrator.from_value(10.0, 1)
    with pytest.raises(ValueError, match="finite rotation_deg"):
        RotationCalibrator.from_value(np.inf, False)
    with pytest.raises(ValueError, match="contrast='x'"):
        RotationCalibrator.from_value(0.0, False, contrast="x")


def _peaks(vectors, calibrations=("origin",), **kwargs):
    table = np.column_stack([vectors, np.ones(len(vectors)), np.ones(len(vectors))])
    return sk.BraggPeaks.from_positions([table], (1, 1), calibrations=calibrations, **kwargs)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("rotation", [-150.0, -23.0, 0.0, 90.0, 171.0])
def test_transform_inverts_the_simulator_forward_map(rotation, flip):
    m = simulate.Microscope(rotation_deg=rotation, flip=flip)
    real = np.random.default_rng(0).normal(size=(7, 2))
    detector = real @ m.real_to_detector.T  # v_Q = R(φ) P v_R
    peaks = _peaks(detector, calibrations=("origin", "ellipse"), units="A^-1")
    out = RotationCalibrator.from_value(rotation, flip).transform(peaks)
    np.testing.assert_allclose(np.column_stack([out.qx, out.qy]), real, atol=1e-12)
    assert out.frame == "real" and out.units == "A^-1"
    assert out.calibrations == ("origin", "ellipse", "rotation")
    assert out.metadata["rotation"] == {"rotation_deg": rotation, "flip": flip}
    assert peaks.frame == "detector"  # the input is untouched


def test_transform_refuses_wrong_peaks():
    cal = RotationCalibrator.from_value(30.0, False)
    with pytest.raises(ValueError, match="already in the real-space frame"):
        cal.transform(_peaks(np.ones((2, 2)), calibrations=("origin", "rotation"), frame="real"))
    with pytest.raises(ValueError, match="not centred .*apply OriginCalibrator first"):
        cal.transform(_peaks(np.ones((2, 2)), calibrations=()))
    with pytest.raises(TypeError, match="needs BraggPeaks"):
        cal.transform(np.ones((2, 2)))
    with pytest.raises(NotFittedError):
        RotationCalibrator().transform(_peaks(np.ones((2, 2))))


def test_effective_rotation_follows_the_derivation():
    # v_Q = R(φ) P R(Δα) v: compare with the matrices themselves
    for flip in (False, True):
        for phi, alpha in ((20.0, 35.0), (-170.0, 25.0), (100.0, -140.0)):
            forward = rotation_matrix(np.deg2rad(phi)) @ flip_matrix(flip)
            forward = forward @ rotation_matrix(np.deg2rad(alpha))
            got = effective_rotation(phi, flip, alpha)
            expect = rotation_matrix(np.deg2rad(got)) @ flip_matrix(flip)
            np.testing.assert_allclose(expect, forward, atol=1e-12)
    assert effective_rotation(10.0, False, 30.0, 30.0) == 10.0


def _render_blobs(shape, centers, sigmas, amplitudes, noise, seed):
    x, y = np.mgrid[: shape[0], : shape[1]].astype(float)
    image = np.full(shape, 0.1)
    for c, s, a in zip(centers, sigmas, amplitudes):
        image += a * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / (2 * s**2))
    return image + noise * np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("flip", [False, True])
def test_scan_rotation_with_the_simulator(flip):
    """A calibration at scan rotation 0, used at scan rotation α, matches a calibration
    measured at α: the same sample area imaged with the raster turned by α."""
    alpha = 27.0
    sim = _simulate(-50.0, flip, 1.0, seed=11, n_features=30)
    t = sim.truth
    # Turning the raster by α: a sample point at r0 (scan frame at 0) sits at
    # r = c + R(−α)(r0 − c) in the new scan frame.
    c = (np.asarray(SHAPE) - 1) / 2
    turned = c + (t.centers_haadf - c) @ rotation_matrix(np.deg2rad(-alpha)).T
    haadf = _render_blobs(SHAPE, turned, t.sigmas, t.amplitudes, 0.02, seed=12)
    ellipse = _ellipse(sim.microscope)

    at_zero = RotationCalibrator(ellipse=ellipse).fit(sim.haadf, sim.shadow)
    at_alpha = RotationCalibrator(ellipse=ellipse).fit(haadf, sim.shadow)
    reused = at_zero.set_params(scan_rotation_deg=alpha)  # set_params keeps the fit
    assert at_alpha.flip_ == flip
    assert abs(_angle_error(reused.effective_rotation_deg, at_alpha.rotation_deg_)) < 0.15
    # the truth of the turned image: r -> shadow is M R(α) (M of the unturned one)
    m = t.affine[:, :2] @ rotation_matrix(np.deg2rad(alpha))
    m = np.linalg.inv(sim.microscope.distortion) @ m @ flip_matrix(flip)  # s R(φ_α)
    phi_alpha = np.rad2deg(np.arctan2(m[1, 0], m[0, 0]))
    assert abs(_angle_error(reused.effective_rotation_deg, phi_alpha)) < 0.1
    # the other way round: a calibration made at α, applied to data at scan rotation 0
    back = RotationCalibrator.from_value(
        at_alpha.rotation_deg_, flip, calibration_scan_rotation_deg=alpha
    )
    assert abs(_angle_error(back.effective_rotation_deg, -50.0)) < 0.15
    # and Bragg peaks land in the same real-space frame either way
    peaks = _peaks(np.array([[10.0, 3.0], [-4.0, 8.0]]))
    a, b = reused.transform(peaks), at_alpha.transform(peaks)
    np.testing.assert_allclose([a.qx, a.qy], [b.qx, b.qy], atol=0.05)


def test_pure_functions():
    x, y = np.mgrid[:80, :80]
    disk = 100.0 * (np.hypot(x - 40, y - 38) < 30)
    mask = shadow_disk_mask(disk, margin=3)
    assert mask[40, 38] and not mask[40, 66] and not mask[0, 0]
    qx, qy = rotate_to_real(np.array([1.0]), np.array([0.0]), 90.0, True)
    np.testing.assert_allclose([qx, qy], [[-1.0], [0.0]], atol=1e-12)  # P⁻¹ R(−90°) x̂ = P (−ŷ)
    sim = _simulate(12.0, False, 0.8, seed=9)
    fit = register_images(sim.haadf, sim.shadow, ellipse=_ellipse(sim.microscope))
    assert abs(fit.rotation_deg - 12.0) < 0.1 and not fit.flip


def test_save_load_and_clone(tmp_path):
    sim = _simulate(33.0, True, 1.0, seed=10)
    cal = RotationCalibrator(ellipse=_ellipse(sim.microscope), scan_rotation_deg=5.0)
    cal.fit(sim.haadf, sim.shadow)
    sk.save(cal, tmp_path / "rot.h5")
    back = sk.load_model(tmp_path / "rot.h5")
    assert back.rotation_deg_ == cal.rotation_deg_ and back.flip_ == cal.flip_
    np.testing.assert_array_equal(back.affine_, cal.affine_)
    assert back.get_params() == cal.get_params()
    assert clone(cal).get_params()["scan_rotation_deg"] == 5.0
    known = sk.load_model(sk.save(RotationCalibrator.from_value(1.0, False), tmp_path / "k.h5"))
    assert known.rotation_deg_ == 1.0 and np.isnan(known.score_)
