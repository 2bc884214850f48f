"""StrainCalculator: exact strain against the truth, propagated errors, frames, errors."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import strainkit as sk
from strainkit import simulate
from strainkit.lattice import LatticeFitter
from strainkit.strain import StrainCalculator, reference_lattice, strain_from_lattice
from tests.test_lattice import SIGMA1, synthetic_peaks


@pytest.fixture(scope="module")
def truth():
    return simulate.simulate_crystal(simulate.Microscope(dose=None), scan_shape=(16, 16)).truth


@pytest.fixture(scope="module")
def noisy(truth):
    return LatticeFitter().fit_transform(synthetic_peaks(truth, sigma=SIGMA1, seed=5))


def test_noise_free_strain_equals_truth(truth):
    lm = LatticeFitter().fit_transform(synthetic_peaks(truth))
    calc = StrainCalculator(reference=truth.reference_mask).fit(lm)
    np.testing.assert_allclose(calc.g0_, truth.G0, atol=1e-12)
    s = calc.transform(lm)
    assert s.frame == "real" and s.mask.all()
    for name in ("exx", "eyy", "exy"):
        np.testing.assert_allclose(getattr(s, name), getattr(truth, name), atol=1e-10)
    np.testing.assert_allclose(np.deg2rad(s.theta_deg), truth.theta, atol=1e-10)
    # absolute lattice parameters: a = |a1| of A = G^-T, = 1/|g| for a square lattice
    a_true = 1.0 / np.hypot(*truth.G0[:, 0])
    np.testing.assert_allclose(s.a[truth.reference_mask], a_true, rtol=1e-12)
    np.testing.assert_allclose(s.b[truth.reference_mask], a_true, rtol=1e-12)
    np.testing.assert_allclose(s.gamma_deg[truth.reference_mask], 90.0, atol=1e-9)
    a_local = np.hypot(*np.moveaxis(np.einsum("xyij,jk->xyik", truth.F, truth.A0)[..., 0], -1, 0))
    np.testing.assert_allclose(s.a, a_local, rtol=1e-10)


def test_noisy_strain_is_consistent_with_its_sigma(truth, noisy):
    s = StrainCalculator(reference=truth.reference_mask).fit_transform(noisy)
    for name in ("exx", "eyy", "exy", "theta_deg"):
        err = getattr(s, name) - getattr(truth, name)
        sig = getattr(s, "sigma_" + name)
        inside = np.mean(np.abs(err) < 2 * sig)
        assert 0.9 <= inside <= 0.99, (name, inside)
    slope = np.polyfit(truth.exx.ravel(), s.exx.ravel(), 1)[0]
    assert abs(slope - 1) < 0.01
    assert np.nanmedian(s.sigma_exx) < 1e-3
    assert np.all(s.sigma_a > 0)


def test_sigma_matches_numerical_jacobian(noisy):
    g = noisy.g.reshape(-1, 2, 2)[:5]
    cov = noisy.covariance.reshape(-1, 6, 6)[:5, 2:, 2:]
    g0 = g.mean(axis=0)
    out = strain_from_lattice(g, g0, cov, frame_angle_deg=30.0, lattice_parameters=True)
    keys = ("exx", "eyy", "exy", "theta_deg", "a", "b")
    jac = np.zeros((5, 4, len(keys)))
    eps = 1e-7
    for p, (i, j) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        gp, gm = g.copy(), g.copy()
        gp[:, i, j] += eps
        gm[:, i, j] -= eps
        up = strain_from_lattice(gp, g0, frame_angle_deg=30.0, lattice_parameters=True)
        dn = strain_from_lattice(gm, g0, frame_angle_deg=30.0, lattice_parameters=True)
        for o, key in enumerate(keys):
            jac[:, p, o] = (up[key] - dn[key]) / (2 * eps)
    sig = np.sqrt(np.einsum("npo,npq,nqo->no", jac, cov, jac))
    for o, key in enumerate(keys):
        np.testing.assert_allclose(out["sigma_" + key], sig[:, o], rtol=1e-5)


def test_frame_angle_rotates_the_tensor():
    g0 = np.eye(2)
    g = np.linalg.inv(np.array([[1.02, 0.0], [0.0, 1.0]])).T[None]  # pure exx = 0.02
    at90 = strain_from_lattice(g, g0, frame_angle_deg=90.0)
    np.testing.assert_allclose([at90["exx"][0], at90["eyy"][0]], [0.0, 0.02], atol=1e-15)
    at45 = strain_from_lattice(g, g0, frame_angle_deg=45.0)
    np.testing.assert_allclose(
        [at45["exx"][0], at45["eyy"][0], at45["exy"][0]], [0.01, 0.01, -0.01], atol=1e-15
    )


def test_frame_angle_in_the_estimator(truth, noisy):
    s0 = StrainCalculator(reference=truth.reference_mask).fit_transform(noisy)
    s1 = StrainCalculator(reference=truth.reference_mask, frame_angle_deg=90).fit_transform(noisy)
    np.testing.assert_allclose(s1.exx, s0.eyy, atol=1e-14)
    np.testing.assert_allclose(s1.exy, -s0.exy, atol=1e-14)
    np.testing.assert_allclose(s1.theta_deg, s0.theta_deg, atol=1e-14)
    np.testing.assert_allclose(s1.sigma_exx, s0.sigma_eyy, rtol=1e-10)
    assert s1.frame_angle_deg == 90.0


def test_references(truth, noisy):
    by_mask = StrainCalculator(reference=truth.reference_mask).fit(noisy).g0_
    by_array = StrainCalculator(reference=truth.G0).fit(noisy)
    np.testing.assert_array_equal(by_array.g0_, truth.G0)
    by_map = StrainCalculator(reference=noisy).fit(noisy).g0_
    default = StrainCalculator().fit(noisy).g0_
    np.testing.assert_allclose(by_mask, truth.G0, atol=3e-5)
    assert np.abs(by_map - truth.G0).max() > np.abs(by_mask - truth.G0).max()
    np.testing.assert_allclose(default, np.median(noisy.g[noisy.mask], axis=0))
    unweighted = StrainCalculator(reference=truth.reference_mask, weighted=False).fit(noisy)
    mean = noisy.g[truth.reference_mask].mean(axis=0)
    np.testing.assert_allclose(unweighted.g0_, mean, atol=1e-15)


def test_strain_map_carries_its_reference_lattice(truth, noisy):
    calc = StrainCalculator(reference=truth.G0).fit(noisy)
    strain = calc.transform(noisy)
    np.testing.assert_array_equal(strain.reference_g, truth.G0)
    from strainkit.plot import plot_strain

    labels = {t.get_text() for t in plot_strain(strain).axes[0].texts}
    assert {"g1", "g2", "x", "y"} <= labels


def test_masked_positions_stay_nan(truth):
    drop = np.zeros(truth.inside.shape, bool)
    drop[3, 3, :] = True
    lm = LatticeFitter().fit_transform(synthetic_peaks(truth, drop=drop))
    s = StrainCalculator(reference=truth.reference_mask).fit_transform(lm)
    assert not s.mask[3, 3] and s.mask.sum() == s.mask.size - 1
    for name in ("exx", "theta_deg", "sigma_exx", "a", "sigma_b", "gamma_deg"):
        assert np.isnan(getattr(s, name)[3, 3])


def test_pixel_units_have_no_lattice_parameters():
    g = np.tile(np.eye(2) * 16.0, (1, 2, 1, 1))
    lm = sk.LatticeMap(
        origin=np.zeros((1, 2, 2)),
        g1=g[..., 0],
        g2=g[..., 1],
        covariance=np.tile(np.eye(6) * 1e-4, (1, 2, 1, 1)),
        residual=np.zeros((1, 2)),
        n_peaks=np.full((1, 2), 9),
        mask=np.ones((1, 2), bool),
    )
    s = StrainCalculator().fit_transform(lm)
    assert s.a is None and s.frame == "detector"
    np.testing.assert_allclose(s.exx, 0.0)


def test_errors(truth, noisy):
    with pytest.raises(NotFittedError):
        StrainCalculator().transform(noisy)
    with pytest.raises(ValueError, match="mask has shape"):
        StrainCalculator(reference=np.ones((3, 3), bool)).fit(noisy)
    with pytest.raises(ValueError, match="none of them valid"):
        StrainCalculator(reference=np.zeros((16, 16), bool)).fit(noisy)
    with pytest.raises(ValueError, match="reference="):
        StrainCalculator(reference="centre").fit(noisy)
    with pytest.raises(ValueError, match="reference="):
        StrainCalculator(reference=np.zeros((2, 2))).fit(noisy)
    with pytest.raises(ValueError, match="frame_angle_deg"):
        StrainCalculator(frame_angle_deg=np.inf).fit(noisy)
    with pytest.raises(ValueError, match="LatticeMap"):
        StrainCalculator().fit(np.zeros((2, 2)))


def test_save_load_round_trip(tmp_path, truth, noisy):
    calc = StrainCalculator(reference=truth.reference_mask, frame_angle_deg=12.5).fit(noisy)
    sk.save(calc, tmp_path / "strain.h5")
    back = sk.load_model(tmp_path / "strain.h5")
    np.testing.assert_array_equal(back.reference, truth.reference_mask)
    np.testing.assert_array_equal(back.g0_, calc.g0_)
    np.testing.assert_array_equal(back.transform(noisy).exx, calc.transform(noisy).exx)


def random_lattice_map(units, seed=3, shape=(9, 7)):
    """A LatticeMap of random lattices near 0.25 Å⁻¹, a quarter of its positions invalid."""
    rng = np.random.default_rng(seed)
    g = 0.25 * np.eye(2) + rng.normal(0, 0.01, shape + (2, 2))
    a = rng.normal(size=shape + (6, 6))
    cov = 1e-8 * a @ np.swapaxes(a, -1, -2)
    mask = rng.random(shape) > 0.25
    origin = rng.normal(0, 1e-3, shape + (2,))
    residual = rng.uniform(0, 1e-3, shape)
    for arr in (g, cov, origin, residual):
        arr[~mask] = np.nan
    lm = sk.LatticeMap(
        origin=origin,
        g1=g[..., 0],
        g2=g[..., 1],
        covariance=cov,
        residual=residual,
        n_peaks=np.where(mask, 20, 0),
        mask=mask,
        units=units,
        frame="real",
    )
    return lm, g, cov, mask


@pytest.mark.parametrize("units", ["A^-1", "px"])
@pytest.mark.parametrize("angle", [0.0, 37.5])
def test_fast_path_equals_the_numpy_reference(units, angle):
    """StrainCalculator runs a numba kernel over all positions; numpy is the reference."""
    from strainkit.strain import _strain_from_lattice_numpy

    lm, g, cov, mask = random_lattice_map(units)
    g0 = np.array([[0.251, 0.002], [-0.001, 0.249]])
    s = StrainCalculator(reference=g0, frame_angle_deg=angle).fit(lm).transform(lm)
    ref = _strain_from_lattice_numpy(g[mask], g0, cov[mask][:, 2:6, 2:6], angle, units == "A^-1")
    np.testing.assert_array_equal(s.mask, mask)
    assert (s.a is None) == (units == "px")
    for key, values in ref.items():
        field = getattr(s, key)
        assert field.shape == mask.shape and np.isnan(field[~mask]).all(), key
        np.testing.assert_allclose(field[mask], values, rtol=1e-11, atol=1e-14, err_msg=key)
    # the pure function: the same kernel, every position valid
    fast = strain_from_lattice(g[mask], g0, cov[mask][:, 2:6, 2:6], angle, units == "A^-1")
    assert list(fast) == list(ref)
    for key, values in ref.items():
        np.testing.assert_allclose(fast[key], values, rtol=1e-11, atol=1e-14, err_msg=key)
        assert fast[key].flags.writeable
    no_cov = strain_from_lattice(g[mask], g0, None, angle, True)
    ref_no_cov = _strain_from_lattice_numpy(g[mask], g0, None, angle, True)
    assert (
        list(no_cov)
        == list(ref_no_cov)
        == ["exx", "eyy", "exy", "theta_deg", "a", "b", "gamma_deg"]
    )
    for key, values in ref_no_cov.items():
        np.testing.assert_allclose(no_cov[key], values, rtol=1e-11, atol=1e-14, err_msg=key)


def test_median_reference_equals_reference_lattice():
    lm, g, _, mask = random_lattice_map("A^-1", seed=4)
    calc = StrainCalculator().fit(lm)
    np.testing.assert_array_equal(calc.g0_, reference_lattice(g[mask], statistic="median"))
    assert calc.n_reference_ == mask.sum()


def test_singular_lattice_raises():
    g = np.stack([np.eye(2), np.array([[1.0, 2.0], [1.0, 2.0]])])
    with pytest.raises(np.linalg.LinAlgError, match="collinear"):
        strain_from_lattice(g, np.eye(2))
