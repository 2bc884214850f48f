"""QC figures draw what the calibrations found, into given or new axes."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

import strainkit as sk
from strainkit import simulate
from strainkit.plot import plot_bragg_vector_map, plot_origin, plot_rotation
from tests._calibration_scans import polycrystal


@pytest.fixture(scope="module")
def calibrated():
    _, peaks = polycrystal(1.025, 35.0, 12)
    origin = sk.OriginCalibrator().fit(peaks)
    centred = origin.transform(peaks)
    ellipse = sk.EllipticalCalibrator(min_ring_peaks=5).fit(centred)
    return origin, centred, ellipse


def test_origin_maps(calibrated, tmp_path):
    origin, _, _ = calibrated
    fig = plot_origin(origin)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[:3] == [
        "origin x, measured (px)",
        "origin x, fitted (px)",
        "origin x, measured − fitted (px)",
    ]
    fig.savefig(tmp_path / "origin.png")
    _, axes = plt.subplots(2, 3)
    assert plot_origin(origin, ax=axes) is axes[0, 0].figure
    with pytest.raises(ValueError, match="needs 6 axes, got 2"):
        plot_origin(origin, ax=axes[0, :2])


def test_bvm_with_rings_drawn_where_the_peaks_are(calibrated):
    _, centred, ellipse = calibrated
    fig = plot_bragg_vector_map(centred, ellipse=ellipse)
    lines = [line for line in fig.axes[0].lines if len(line.get_xdata()) > 10]
    assert len(lines) == len(ellipse.ring_radii_) == 3
    # every drawn ring passes within a pixel of the peaks assigned to it
    q = np.hypot(centred.qx, centred.qy)
    for line in lines:
        radius = np.hypot(line.get_xdata(), line.get_ydata())
        assert np.any(np.abs(q - radius.mean()) < 1.0)
    corrected = ellipse.transform(centred)
    circle = plot_bragg_vector_map(corrected, ellipse=ellipse).axes[0].lines[0]
    r = np.hypot(circle.get_xdata(), circle.get_ydata())
    assert r.max() - r.min() < 1e-9  # corrected peaks: rings are circles


def test_rotation_figure_maps_the_shadow_back():
    sim = simulate.simulate_images(image_shape=(96, 96), n_features=20, seed=3)
    cal = sk.RotationCalibrator().fit(sim.haadf, sim.shadow)
    fig = plot_rotation(cal, sim.haadf, sim.shadow)
    back = fig.axes[1].images[0].get_array()
    inside = np.isfinite(back)
    # the mapped-back shadow shows the HAADF features (inverted contrast)
    r = np.corrcoef(np.asarray(back)[inside], sim.haadf[inside])[0, 1]
    assert r < -0.5
    with pytest.raises(ValueError, match="set by value"):
        plot_rotation(sk.RotationCalibrator.from_value(10.0, False), sim.haadf, sim.shadow)
