"""PixelCalibrator: ring-to-spacing assignment without a guess, Å⁻¹ per px, reuse, errors."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

import strainkit as sk
from strainkit.containers import BraggPeaks
from strainkit.crystal import bcc, diamond, fcc
from strainkit.ellipse import EllipticalCalibrator
from strainkit.origin import OriginCalibrator
from strainkit.pixel import PixelCalibrator, assign_spacings, fit_pixel_size
from tests._calibration_scans import polycrystal

GOLD = fcc(4.078)


@pytest.fixture(scope="module")
def chain():
    """Gold, a/b = 1.01 at 100°, 60 x 60 positions (~0.6e-5 relative pixel-size error,
    1 sd over seeds, at the default 2e5 e-/pattern), through origin and ellipse."""
    truth, raw = polycrystal(1.01, 100.0, 60)
    centred = OriginCalibrator().fit_transform(raw)
    ellipse = EllipticalCalibrator().fit(centred)
    return truth, raw, ellipse, ellipse.transform(centred)


@pytest.mark.parametrize(
    "source",
    [
        {"crystal": GOLD},
        {"d_spacings": GOLD.d_spacings()},  # an array, down to 0.5 Å: 22 spacings
        {"d_spacings": (1.4418, 2.3544, 2.039)},  # unordered, 4 decimals
    ],
    ids=["crystal", "all-spacings", "three-spacings"],
)
def test_pixel_size_matches_the_truth(chain, source):
    truth, _, _, peaks = chain
    cal = PixelCalibrator(**source).fit(peaks)
    rel = cal.q_pixel_size_ / truth.pixel_size - 1.0
    if len(source.get("d_spacings", ())) == 3:
        assert abs(rel) <= 1e-4  # the d-spacings themselves are rounded to 2e-5
    else:
        assert abs(rel) <= 2e-5
        assert abs(rel) <= 4 * cal.q_pixel_size_std_ / cal.q_pixel_size_
    np.testing.assert_allclose(cal.ring_d_, truth.ring_d, rtol=1e-4)
    np.testing.assert_allclose(cal.ring_radii_, truth.ring_radii, atol=3e-3)
    assert (cal.ring_counts_ > 3000).all()
    assert 0 < cal.q_pixel_size_std_ / cal.q_pixel_size_ < 1.5e-5


def test_transform_gives_inverse_angstrom(chain):
    truth, _, _, peaks = chain
    cal = PixelCalibrator(crystal=GOLD).fit(peaks)
    out = cal.transform(peaks)
    assert out.units == "A^-1" and out.calibrations == ("origin", "ellipse", "pixel")
    assert out.metadata["q_pixel_size"] == cal.q_pixel_size_
    np.testing.assert_array_equal(out.qx, peaks.qx * cal.q_pixel_size_)
    # the spots sit at 1/d of their ring
    q = np.hypot(out.qx, out.qy)
    inv_d = 1.0 / truth.ring_d
    near = np.abs(q[:, None] - inv_d[None, :]).min(axis=1) < 0.005
    assert near.mean() > 0.85
    with pytest.raises(ValueError, match="already calibrated in Å⁻¹"):
        cal.fit(out)
    with pytest.raises(ValueError, match="already calibrated in Å⁻¹"):
        cal.transform(out)
    with pytest.raises(ValueError, match="needs peaks in units 'px', got 'A\\^-1'"):
        EllipticalCalibrator().fit(out.replace(calibrations=("origin",)))


def test_assignment_needs_no_guess():
    d = GOLD.d_spacings()
    for s in (0.004, 0.0123, 0.031):
        # 111, 200, 220 (not the self-similar 222, 400, 440, which skips 311, 331, 420 ...)
        match, scale = assign_spacings(1.0 / (d[:3] * s), d)
        assert match.tolist() == [0, 1, 2] and scale == pytest.approx(s)
        # a weak ring missing (200) and a ring no spacing explains
        radii = np.r_[1.0 / (d[[0, 2, 3]] * s), 0.77 / (d[0] * s)]
        match, scale = assign_spacings(np.sort(radii), d)
        assert sorted(match.tolist()) == [-1, 0, 2, 3] and scale == pytest.approx(s)
    for crystal in (bcc(3.165), diamond(5.431)):
        d = crystal.d_spacings()
        match, scale = assign_spacings(1.0 / (d[:4] * 0.02), d)
        assert match.tolist() == [0, 1, 2, 3] and scale == pytest.approx(0.02)
    s, _s_std, chi2 = fit_pixel_size(np.array([10.0, 20.0]), np.array([0.01, 0.01]), [2.0, 1.0])
    assert s == pytest.approx(0.05) and chi2 == pytest.approx(0.0, abs=1e-20)


def ring_peaks(radii, n=40, calibrations=("origin", "ellipse")):
    phi = np.tile(np.linspace(0, 2 * np.pi, n, endpoint=False), len(radii))
    r = np.repeat(radii, n)
    size = r.size
    return BraggPeaks(r * np.cos(phi), r * np.sin(phi), np.ones(size), np.ones(size),
                      [0, size], (1, 1), calibrations=calibrations)  # fmt: skip


def test_single_ring_and_unmatched_rings():
    d = GOLD.d_spacings()
    one = ring_peaks([30.0])
    assert PixelCalibrator(d_spacings=(2.0,)).fit(one).q_pixel_size_ == pytest.approx(1 / 60)
    with pytest.raises(ValueError, match=r"only one ring was found \(radius 30.000 px\)"):
        PixelCalibrator(crystal=GOLD).fit(one)
    # a ring that no spacing explains is reported and left out
    radii = np.r_[1.0 / (d[:3] * 0.014), 40.0]
    with pytest.warns(UserWarning, match=r"rings at radii \[40.000\] px match none"):
        cal = PixelCalibrator(crystal=GOLD).fit(ring_peaks(np.sort(radii)))
    assert cal.q_pixel_size_ == pytest.approx(0.014, rel=1e-9)
    assert np.isnan(cal.ring_d_[2]) and np.isfinite(cal.ring_d_[[0, 1, 3]]).all()
    # without the ellipse correction: a warning, then the fit
    with pytest.warns(UserWarning, match="not ellipse-corrected"):
        PixelCalibrator(crystal=GOLD).fit(
            ring_peaks(1.0 / (d[:3] * 0.014), calibrations=("origin",))
        )


def test_errors_say_what_to_do(chain):
    _, raw, _, peaks = chain
    wrong = (3.10, 2.95)  # a ratio of 1.051 that no two gold rings have
    with pytest.raises(
        ValueError, match=r"match none of the rings.*\[30\.3\d\d, 35\.0\d\d, 49\.5"
    ):
        PixelCalibrator(d_spacings=wrong).fit(peaks)
    with pytest.raises(ValueError, match="needs centred peaks"):
        PixelCalibrator(crystal=GOLD).fit(raw)
    with pytest.raises(ValueError, match="no rings found among 0 peaks"):
        PixelCalibrator(crystal=GOLD).fit(
            BraggPeaks.empty((2, 2), calibrations=("origin", "ellipse"))
        )
    with pytest.raises(ValueError, match="no rings found.*within the annulus"):
        PixelCalibrator(crystal=GOLD, annulus=(10.0, 20.0)).fit(peaks)
    with pytest.raises(ValueError, match="invalid parameter.*exactly one of d_spacings"):
        PixelCalibrator().fit(peaks)
    with pytest.raises(ValueError, match="invalid parameter.*exactly one of d_spacings"):
        PixelCalibrator(d_spacings=(2.0,), crystal=GOLD).fit(peaks)
    with pytest.raises(ValueError, match="invalid parameter d_spacings.0=-2.0"):
        PixelCalibrator(d_spacings=(-2.0,)).fit(peaks)
    with pytest.raises(NotFittedError):
        PixelCalibrator(crystal=GOLD).transform(peaks)


def test_frozen_calibrations_are_reused_on_another_scan(chain, tmp_path):
    _truth, _, ellipse, peaks = chain
    pixel = PixelCalibrator(d_spacings=tuple(GOLD.d_spacings())).fit(peaks)
    before = pixel.q_pixel_size_
    other = polycrystal(1.0, 0.0, 40)[1]
    pipe = Pipeline(
        [
            ("origin", OriginCalibrator()),
            ("ellipse", FrozenEstimator(ellipse)),
            ("pixel", FrozenEstimator(pixel)),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing refits, nothing warns
        out = pipe.fit(other).transform(other)
    assert pixel.q_pixel_size_ == before and out.units == "A^-1"
    assert out.calibrations == ("origin", "ellipse", "pixel")
    # saved and loaded, the pipeline gives the same numbers
    sk.save(pipe, tmp_path / "pipe.h5")
    again = sk.load_model(tmp_path / "pipe.h5")
    np.testing.assert_array_equal(again.transform(other).qx, out.qx)
    back = again.named_steps["pixel"].estimator
    assert back.q_pixel_size_ == before and back.q_pixel_size_std_ == pixel.q_pixel_size_std_
    np.testing.assert_array_equal(back.ring_d_, pixel.ring_d_)
