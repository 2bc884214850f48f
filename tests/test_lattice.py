"""LatticeFitter: automatic lattice finding, vectorised per-position fits, errors."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import strainkit as sk
from strainkit import simulate
from strainkit.lattice import LatticeFitter, find_lattice, fit_lattice, reduce_basis
from strainkit.simulate import StrainField

PIXEL = 0.014  # Å⁻¹ per px of the default microscope
SIGMA1 = 0.04 * PIXEL  # position noise of a first-order disk


def synthetic_peaks(truth, sigma=0.0, seed=0, drop=None):
    """Calibrated peaks (Å⁻¹, real frame, centred) at the true disk positions, + noise.

    The noise of each disk is ``sigma * sqrt(I1 / I)`` with I1 the mean counts of a
    first-order disk (variance ∝ 1/counts, the fitter's noise model).
    """
    rng = np.random.default_rng(seed)
    h, k = truth.hk[:, 0], truth.hk[:, 1]
    q = (
        h[None, None, :, None] * truth.g1[..., None, :]
        + k[None, None, :, None] * truth.g2[..., None, :]
    )
    counts = truth.disk_counts
    i1 = counts[..., truth.order == 1].mean()
    keep = truth.inside.copy()
    if drop is not None:
        keep &= ~drop
    sig = sigma * np.sqrt(i1 / counts)
    q = q + rng.standard_normal(q.shape) * sig[..., None]
    rows = [
        np.c_[q[i, j][keep[i, j]], counts[i, j][keep[i, j]], np.ones(keep[i, j].sum())]
        for i in range(q.shape[0])
        for j in range(q.shape[1])
    ]
    return sk.BraggPeaks.from_positions(
        rows,
        scan_shape=q.shape[:2],
        units="A^-1",
        frame="real",
        calibrations=("origin", "ellipse", "pixel", "rotation"),
    )


@pytest.fixture(scope="module")
def crystal():
    return simulate.simulate_crystal(simulate.Microscope(dose=None), scan_shape=(16, 16)).truth


def same_lattice(g1, g2, t1, t2, atol=1e-6):
    """Integer unimodular M with (g1 g2) = (t1 t2) @ M (within atol), or None."""
    m = np.linalg.solve(np.stack([t1, t2], -1), np.stack([g1, g2], -1))
    mi = np.round(m)
    return mi if np.allclose(m, mi, atol=atol) and round(abs(np.linalg.det(mi))) == 1 else None


def test_reduce_basis_conventions():
    g1, g2 = reduce_basis([1.0, 0.2], [5.0, 1.3])  # a skewed basis of a lattice
    assert np.hypot(*g1) <= np.hypot(*g2)
    assert g1[0] * g2[1] - g1[1] * g2[0] > 0
    assert same_lattice(g1, g2, np.array([1.0, 0.2]), np.array([5.0, 1.3])) is not None
    # the same lattice given by any basis gives the same reduced basis
    a, b = np.array([0.22, 0.04]), np.array([-0.04, 0.22])
    for m in ([[1, 1], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [2, 1]], [[2, 1], [1, 1]]):
        m = np.array(m, float)
        c = np.stack([a, b], -1) @ m
        r1, r2 = reduce_basis(c[:, 0], c[:, 1])
        np.testing.assert_allclose(r1, a, atol=1e-15)
        np.testing.assert_allclose(r2, b, atol=1e-15)


def test_fit_finds_the_unstrained_lattice_exactly():
    zero = StrainField(exx=0.0, eyy=0.0, exy=0.0, theta_deg=0.0)
    t = simulate.simulate_crystal(
        simulate.Microscope(dose=None), scan_shape=(6, 6), strain=zero
    ).truth
    fitter = LatticeFitter().fit(synthetic_peaks(t))
    # the square lattice at 10°: g1 is the one closest to +x, right-handed
    np.testing.assert_allclose(fitter.g1_, t.G0[:, 0], atol=1e-10)
    np.testing.assert_allclose(fitter.g2_, t.G0[:, 1], atol=1e-10)
    np.testing.assert_allclose(fitter.origin_, 0.0, atol=1e-10)


def test_noise_free_map_equals_truth(crystal):
    t = crystal
    peaks = synthetic_peaks(t)
    lm = LatticeFitter().fit_transform(peaks)
    assert lm.mask.all() and lm.units == "A^-1" and lm.frame == "real"
    m = same_lattice(lm.g1[0, 0], lm.g2[0, 0], t.g1[0, 0], t.g2[0, 0])
    np.testing.assert_array_equal(m, np.eye(2))
    np.testing.assert_allclose(lm.g1, t.g1, atol=1e-10)
    np.testing.assert_allclose(lm.g2, t.g2, atol=1e-10)
    np.testing.assert_allclose(lm.origin, 0.0, atol=1e-10)
    assert np.nanmax(lm.residual) < 1e-12
    np.testing.assert_array_equal(lm.n_peaks, t.inside.sum(axis=-1))


def test_given_vectors_override_the_search(crystal):
    peaks = synthetic_peaks(crystal)
    # another basis of the same lattice: kept (not reduced), the fit follows it
    g1, g2 = crystal.G0[:, 0], crystal.G0[:, 0] + crystal.G0[:, 1]
    fitter = LatticeFitter(g1=g1, g2=g2, refine=False).fit(peaks)
    np.testing.assert_array_equal(fitter.g1_, g1)
    lm = fitter.transform(peaks)
    np.testing.assert_allclose(lm.g2, crystal.g1 + crystal.g2, atol=1e-10)


def slow_reference(peaks, h, k, w):
    """Per position weighted least squares with np.linalg.lstsq (the test's oracle)."""
    out = np.full((peaks.n_positions, 6), np.nan)
    for p in range(peaks.n_positions):
        s = slice(peaks.offsets[p], peaks.offsets[p + 1])
        sw = np.sqrt(w[s])
        a = np.zeros((2 * sw.size, 6))
        a[0::2, 0] = a[1::2, 1] = 1.0
        a[0::2, 2] = a[1::2, 3] = h[s]
        a[0::2, 4] = a[1::2, 5] = k[s]
        b = np.empty(2 * sw.size)
        b[0::2], b[1::2] = peaks.qx[s], peaks.qy[s]
        sw2 = np.repeat(sw, 2)
        out[p] = np.linalg.lstsq(a * sw2[:, None], b * sw2, rcond=None)[0]
    return out


def test_vectorised_fit_equals_slow_lstsq(crystal):
    peaks = synthetic_peaks(crystal, sigma=3 * SIGMA1, seed=1)
    g = np.stack([crystal.G0[:, 0], crystal.G0[:, 1]], -1)
    w = peaks.intensity / peaks.intensity.mean()
    out = fit_lattice(
        peaks.qx,
        peaks.qy,
        w,
        peaks.position_index,
        peaks.n_positions,
        np.zeros(2),
        g,
        robust=False,
    )
    hk = np.linalg.solve(crystal.G0, np.stack([peaks.qx, peaks.qy]))
    h, k = np.round(hk)
    ref = slow_reference(peaks, h, k, w)
    np.testing.assert_allclose(out["params"], ref, rtol=0, atol=1e-10)
    # the estimator with the same settings gives the same numbers
    lm = LatticeFitter(robust=False).fit_transform(peaks)
    np.testing.assert_allclose(lm.g1.reshape(-1, 2), ref[:, 2:4], atol=1e-10)


def test_covariance_matches_the_scatter(crystal):
    peaks = synthetic_peaks(crystal, sigma=SIGMA1, seed=2)
    lm = LatticeFitter().fit_transform(peaks)
    z = (lm.g1 - crystal.g1) / np.sqrt(np.diagonal(lm.covariance, axis1=-2, axis2=-1)[..., 2:4])
    assert 0.8 < np.std(z) < 1.25


def test_robust_fit_ignores_an_outlier(crystal):
    t = crystal
    peaks = synthetic_peaks(t, sigma=SIGMA1, seed=3)
    # move one strong first-order peak of every position by a fifth of |g|
    first = peaks.offsets[:-1] + 1
    qx = peaks.qx.copy()
    qx[first] += 0.2 * np.hypot(*t.G0[:, 0])
    bad = peaks.replace(qx=qx)
    robust = LatticeFitter().fit(peaks).transform(bad)
    plain = LatticeFitter(robust=False).fit(peaks).transform(bad)
    err_r = np.abs(robust.g1 - t.g1).max()
    err_p = np.abs(plain.g1 - t.g1).max()
    assert err_r < 0.2 * err_p


def test_too_few_peaks_is_nan_and_masked(crystal):
    t = crystal
    drop = np.zeros(t.inside.shape, bool)
    drop[2, 3, 5:] = True  # 5 peaks left (< min_peaks=6)
    drop[4, 4, :] = True  # none
    drop[5, 5, :] = np.abs(t.hk[:, 1]) > 0  # a row of peaks: collinear
    lm = LatticeFitter().fit_transform(synthetic_peaks(t, drop=drop))
    for pos in [(2, 3), (4, 4), (5, 5)]:
        assert not lm.mask[pos]
        assert np.isnan(lm.g1[pos]).all() and np.isnan(lm.covariance[pos]).all()
        assert np.isnan(lm.residual[pos])
    assert lm.mask.sum() == lm.mask.size - 3


def test_end_to_end_with_detected_peaks():
    sim = simulate.simulate_crystal(scan_shape=(6, 6))
    probe = sk.ProbeTemplate().fit(sk.DataCube(simulate.simulate_vacuum(scan_shape=(4, 4)).data))
    raw = sk.BraggDiskFinder(probe=probe, progress=False).transform(sk.DataCube(sim.data))
    peaks = sk.OriginCalibrator().fit_transform(raw)
    lm = LatticeFitter().fit_transform(peaks)
    t = sim.truth
    d = sim.microscope.distortion
    tg1 = np.einsum("ij,xyj->xyi", d, t.g1_px)
    tg2 = np.einsum("ij,xyj->xyi", d, t.g2_px)
    assert lm.mask.all() and lm.frame == "detector" and lm.units == "px"
    m = same_lattice(lm.g1[0, 0], lm.g2[0, 0], tg1[0, 0], tg2[0, 0], atol=0.02)
    assert m is not None
    fit = np.stack([lm.g1, lm.g2], -1)
    true = np.stack([tg1, tg2], -1) @ m
    err = np.abs(fit - true)
    assert err.max() < 0.05  # px, for |g| ≈ 16 px
    sig = np.sqrt(np.diagonal(lm.covariance, axis1=-2, axis2=-1)[..., 2:])
    assert np.median(sig) < 0.02


def test_errors_and_unfitted():
    with pytest.raises(NotFittedError):
        LatticeFitter().transform(sk.BraggPeaks.empty((1, 1)))
    row = np.c_[np.arange(5.0)[:, None] * [0.2, 0.1], np.ones((5, 2))]
    line = sk.BraggPeaks.from_positions([row, row], scan_shape=(1, 2), units="A^-1")
    with pytest.raises(ValueError, match="collinear"):
        LatticeFitter().fit(line)
    with pytest.raises(ValueError, match="2 peak"):
        LatticeFitter().fit(sk.BraggPeaks.from_positions([row[:2]], scan_shape=(1, 1)))
    with pytest.raises(ValueError, match="both g1 and g2"):
        LatticeFitter(g1=(1.0, 0.0)).fit(line)
    with pytest.raises(ValueError, match="collinear"):
        LatticeFitter(g1=(1.0, 0.0), g2=(2.0, 0.0)).fit(line)
    with pytest.raises(ValueError, match="tolerance"):
        LatticeFitter(tolerance=0.7).fit(line)
    with pytest.raises(ValueError, match="collinear"):
        find_lattice(line.qx, line.qy, line.intensity, line.offsets)


def test_save_load_round_trip(tmp_path, crystal):
    peaks = synthetic_peaks(crystal)
    fitter = LatticeFitter(weights="uniform").fit(peaks)
    sk.save(fitter, tmp_path / "lattice.h5")
    back = sk.load_model(tmp_path / "lattice.h5")
    assert back.get_params() == fitter.get_params()
    np.testing.assert_array_equal(back.g1_, fitter.g1_)
    np.testing.assert_array_equal(back.transform(peaks).g1, fitter.transform(peaks).g1)


def test_numba_kernel_equals_the_numpy_reference():
    """fit_lattice runs a numba kernel on CSR-ordered peaks and numpy otherwise."""
    from strainkit.lattice import _fit_lattice_numpy, fit_lattice

    rng = np.random.default_rng(5)
    hk = np.stack(np.meshgrid(range(-3, 4), range(-3, 4), indexing="ij"), -1).reshape(-1, 2)
    g = np.array([[0.25, 0.02], [-0.01, 0.24]])
    n_pos = 30
    q = (hk @ g.T)[None] + rng.normal(0, 2e-3, (n_pos, len(hk), 2))
    q[3, 5] += 0.05  # an outlier
    keep = rng.random((n_pos, len(hk))) > 0.2
    keep[7, 10:] = False  # a position with few peaks
    pos = np.repeat(np.arange(n_pos), len(hk))[keep.ravel()]
    qx, qy = q[..., 0].ravel()[keep.ravel()], q[..., 1].ravel()[keep.ravel()]
    w = rng.uniform(0.5, 2.0, len(qx))
    args = (qx, qy, w, pos, n_pos, np.zeros((n_pos, 2)), np.broadcast_to(g, (n_pos, 2, 2)))
    fast = fit_lattice(*args[:5], args[5], args[6])
    slow = _fit_lattice_numpy(*args, 0.25, True, 5, 6)
    np.testing.assert_array_equal(fast["valid"], slow["valid"])
    np.testing.assert_array_equal(fast["n_peaks"], slow["n_peaks"])
    for name in ("params", "covariance", "residual"):
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-9, atol=1e-14)
