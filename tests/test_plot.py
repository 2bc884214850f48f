"""QC figures draw what the calibrations found, into given or new axes."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

import strainkit as sk
from strainkit import simulate
from strainkit.plot import plot_bragg_vector_map, plot_origin, plot_rotation, plot_strain
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


def _strain_map(lattice=True):
    x, y = np.meshgrid(np.linspace(-1, 1, 20), np.linspace(-1, 1, 20), indexing="ij")
    exx = 0.01 * x
    exx[2, 3] = np.nan  # a position without a measurement
    exx[19, 19] = 0.5  # one outlier must not set the colour range
    mask = np.isfinite(exx)
    fields = {
        name: np.where(mask, value, np.nan)
        for name, value in (("eyy", -0.004 * y), ("exy", 0.002 * x * y), ("theta_deg", 0.3 * y))
    }
    extra = {}
    for name in ("sigma_exx", "sigma_eyy", "sigma_exy", "sigma_theta_deg"):
        extra[name] = np.where(mask, 1e-4 * (1 + x**2), np.nan)
    if lattice:
        extra.update(
            a=np.where(mask, 4.078 * (1 + exx), np.nan),
            b=np.where(mask, 4.078, np.nan),
            gamma_deg=np.where(mask, 90.0, np.nan),
        )
    return sk.StrainMap(exx=exx, mask=mask, **fields, **extra)


def test_strain_maps_titles_units_and_symmetric_limits(tmp_path):
    strain = _strain_map()
    fig = plot_strain(strain)
    panels = fig.axes[:4]
    assert [a.get_title() for a in panels] == ["εxx (%)", "εyy (%)", "εxy (%)", "θ (°)"]
    bars = [a.get_ylabel() for a in fig.axes[4:]]
    assert bars == ["εxx (%)", "εyy (%)", "εxy (%)", "θ (°)"]
    for a in panels:
        assert (a.get_xlabel(), a.get_ylabel()) == ("y (scan)", "x (scan)")
        im = a.images[0]
        lo, hi = im.get_clim()
        assert lo == -hi and hi > 0
        assert im.get_cmap().name.startswith("RdBu_r")
    # robust range: the 0.5 outlier (50 %) does not set it, the 1 % field does
    assert 0.9 < panels[0].images[0].get_clim()[1] < 5
    texts = {t.get_text() for t in panels[0].texts}
    assert {"x", "y"} <= texts  # the frame's axes, drawn as arrows
    fig.savefig(tmp_path / "strain.png")


def test_missing_positions_are_drawn_in_the_bad_colour():
    import matplotlib.colors as mcolors

    strain = _strain_map()
    fig = plot_strain(strain)
    im = fig.axes[0].images[0]
    rgba = im.to_rgba(im.get_array())
    bad = mcolors.to_rgba("0.6")
    np.testing.assert_allclose(rgba[2, 3], bad)
    assert not np.allclose(rgba[2, 4], bad)
    # the standard errors and the lattice parameters
    fig = plot_strain(strain, kind="sigma")
    assert [a.get_title() for a in fig.axes[:4]] == [
        "σ(εxx) (%)",
        "σ(εyy) (%)",
        "σ(εxy) (%)",
        "σ(θ) (°)",
    ]
    assert fig.axes[0].images[0].get_clim()[0] > 0
    fig = plot_strain(strain, kind="lattice")
    assert [a.get_title() for a in fig.axes[:3]] == ["a (Å)", "b (Å)", "γ (°)"]


def test_strain_figure_refuses_wrong_axes_and_missing_fields():
    strain = _strain_map(lattice=False)
    _, axes = plt.subplots(2, 2)
    assert plot_strain(strain, ax=axes) is axes[0, 0].figure
    with pytest.raises(ValueError, match="needs 4 axes, got 3"):
        plot_strain(strain, ax=list(axes.ravel()[:3]))
    with pytest.raises(ValueError, match="no lattice parameters|has none"):
        plot_strain(strain, kind="lattice")
    with pytest.raises(ValueError, match="kind='polar'"):
        plot_strain(strain, kind="polar")


def test_reference_lattice_arrows_point_along_g1_and_g2():
    base = _strain_map()
    fields = {name: getattr(base, name) for name in ("exx", "eyy", "exy", "theta_deg")}
    # g1 along +x (down the image), g2 along +y (across), in the map's frame
    strain = sk.StrainMap(**fields, mask=base.mask, reference_g=[[0.25, 0.0], [0.0, 0.2]])
    panel = plot_strain(strain).axes[0]
    labels = {t.get_text(): t.get_position() for t in panel.texts}
    assert {"g1", "g2"} <= set(labels)
    tail = np.array([0.78, 0.22])
    g1 = np.asarray(labels["g1"]) - tail
    g2 = np.asarray(labels["g2"]) - tail
    assert g1[1] < 0 and abs(g1[0]) < 1e-9  # +x points down in axes fraction
    assert g2[0] > 0 and abs(g2[1]) < 1e-9  # +y points right
    assert np.hypot(*g2) < np.hypot(*g1)  # drawn to scale
    # in axes rotated by 90°, g1 (along the old x) points along the new −y: left
    turned = sk.StrainMap(
        **fields, mask=base.mask, reference_g=[[0.25, 0.0], [0.0, 0.2]], frame_angle_deg=90
    )
    panel = plot_strain(turned).axes[0]
    labels = {t.get_text(): np.asarray(t.get_position()) - tail for t in panel.texts}
    assert labels["g1"][0] < 0 and abs(labels["g1"][1]) < 1e-9
    assert "g1" not in {t.get_text() for t in plot_strain(base).axes[0].texts}
