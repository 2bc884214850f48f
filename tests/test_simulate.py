"""The simulator's ground truth is what its data show, to stated tolerances."""

import itertools

import h5py
import numpy as np
import pytest
from scipy.optimize import least_squares

from strainkit import simulate as sim
from strainkit._geometry import (
    deformation_from_g,
    flip_matrix,
    rotation_matrix,
    strain_from_deformation,
)

NOISE_FREE = sim.Microscope(dose=None, background_fraction=0.0, psf_sigma=0.0)


def _centroid(frame, center, radius):
    """Intensity centroid of the pixels within ``radius`` of ``center``."""
    i, j = np.indices(frame.shape)
    window = np.hypot(i - center[0], j - center[1]) <= radius
    weights = frame[window].astype(float)
    return np.array([np.sum(i[window] * weights), np.sum(j[window] * weights)]) / weights.sum()


def _fully_inside(center, shape, radius):
    return np.all(center - radius >= 0) and np.all(center + radius <= np.asarray(shape) - 1)


# --------------------------------------------------------------------------- rendering


def test_render_disks_flat_top_and_integral():
    frame = sim.render_disks((40, 40), [[19.3, 20.6]], [2.5], radius=6.0, edge_width=0.5)
    assert frame.max() == pytest.approx(2.5, abs=1e-12)
    # The integral of the soft disk is a·π(R² + w²).
    assert frame.sum() == pytest.approx(2.5 * np.pi * (36 + 0.25), rel=1e-8)
    out = np.ones((40, 40))
    assert sim.render_disks((40, 40), [[19.3, 20.6]], [2.5], 6.0, 0.5, out=out) is out
    np.testing.assert_allclose(out - 1, frame, atol=1e-14)


def test_render_disks_clips_at_the_detector_edge():
    frame = sim.render_disks((32, 32), [[0.0, 0.0], [100.0, -50.0]], [1.0, 1.0], 6.0, 0.5)
    # Pixel (0, 0) spans [-0.5, 0.5]: a quarter disk plus two half-pixel strips; one absent.
    assert frame.sum() == pytest.approx(np.pi * 36.25 / 4 + 6.0, rel=0.01)


def test_render_pattern_normalisation():
    kwargs = {"radius": 5.0, "edge_width": 0.6, "origin": (31.5, 31.5)}
    centers, amps = [[31.5, 31.5], [31.5, 47.5]], [1.0, 0.4]
    with_bg = sim.render_pattern(
        (64, 64), centers, amps, background_fraction=0.1, dose=1e4, **kwargs
    )
    no_bg = sim.render_pattern((64, 64), centers, amps, dose=1e4, **kwargs)
    assert with_bg.sum() == pytest.approx(1e4, rel=1e-12)
    # The background is exactly 10 % of the dose, with the documented profile.
    background = with_bg - 0.9 * no_bg
    np.testing.assert_allclose(
        background, 1e3 * sim.render_background((64, 64), (31.5, 31.5)), atol=1e-9
    )
    relative = sim.render_pattern((64, 64), centers, amps, **kwargs)
    assert relative.max() == pytest.approx(1.0, abs=1e-12)  # flat top = amplitude


# --------------------------------------------------------------------------- vacuum and crystal


def test_vacuum_noise_free_centroids_are_the_origins():
    scan = sim.simulate_vacuum(sim.Microscope(dose=None), scan_shape=(3, 4), jitter=0.4, seed=3)
    assert scan.data.dtype == np.float32
    for rx, ry in np.ndindex(3, 4):
        origin = scan.truth.origins[rx, ry]
        np.testing.assert_allclose(_centroid(scan.data[rx, ry], origin, 9.0), origin, atol=0.01)
    # The jitter is there: origins depart from the plain descan.
    plain = sim.Microscope().origins((3, 4))
    assert 0.2 < np.std(scan.truth.origins - plain) < 0.6


def test_crystal_noise_free_disk_centroids_match_truth():
    scan = sim.simulate_crystal(NOISE_FREE, scan_shape=(8, 3), modulation=0.2, seed=5)
    truth, checked = scan.truth, 0
    for rx, ry in [(0, 0), (7, 2), (5, 1)]:  # reference and most strained positions
        for center, inside in zip(truth.centers[rx, ry], truth.inside[rx, ry]):
            if inside and _fully_inside(center, scan.data.shape[2:], 7.75):
                centroid = _centroid(scan.data[rx, ry], center, 7.75)
                np.testing.assert_allclose(centroid, center, atol=0.01)
                checked += 1
    assert checked >= 40


def test_crystal_centroids_with_psf():
    m = sim.Microscope(dose=None, background_fraction=0.0, psf_sigma=1.0)
    wide = sim.Lattice(a=1 / (24 * 0.014), b=1 / (24 * 0.014))
    scan = sim.simulate_crystal(m, scan_shape=(4, 2), lattice=wide, max_order=1, seed=1)
    for rx, ry in np.ndindex(4, 2):
        for center in scan.truth.centers[rx, ry]:
            np.testing.assert_allclose(
                _centroid(scan.data[rx, ry], center, 11.0), center, atol=0.01
            )


def test_strain_truth_is_consistent_with_the_g_vectors():
    m = sim.Microscope(dose=None)
    scan = sim.simulate_crystal(m, scan_shape=(12, 8), seed=2)
    t = scan.truth
    g = np.stack([t.g1, t.g2], axis=-1)
    f = deformation_from_g(g, t.G0)
    np.testing.assert_allclose(f, t.F, atol=1e-12)
    for measured, stored in zip(strain_from_deformation(f), (t.exx, t.eyy, t.exy, t.theta)):
        np.testing.assert_allclose(measured, stored, atol=1e-12)
    # The detector-frame vectors and the disk centres follow the documented chain.
    to_px = rotation_matrix(np.deg2rad(m.rotation_deg)) @ flip_matrix(m.flip) / m.pixel_size
    g_px = to_px @ g
    np.testing.assert_allclose(np.stack([t.g1_px, t.g2_px], -1), g_px, atol=1e-12)
    expected = t.origins[..., None, :] + np.einsum("xyij,nj->xyni", m.distortion @ g_px, t.hk)
    np.testing.assert_allclose(t.centers, expected, atol=1e-10)
    # Default lattice: first-order reflections 16 px from the origin where unstrained.
    np.testing.assert_allclose(
        np.linalg.norm(t.g1_px[t.reference_mask], axis=-1), 16.0, rtol=1e-12
    )


def test_strain_fields_reference_zero_maxima_and_range():
    field = sim.StrainField()
    exx, eyy, exy, theta, ref = field.evaluate((64, 64))
    assert ref.sum() == 16 * 64 and ref[:16].all() and not ref[16:].any()
    for values, maximum in [(exx, 0.02), (eyy, -0.01), (exy, 0.005), (theta, np.deg2rad(0.3))]:
        assert np.all(values[ref] == 0.0)
        extreme = values.flat[np.argmax(np.abs(values))]
        assert extreme == pytest.approx(maximum, rel=0.01)
        # Many distinct values between 0 and the maximum, so a slope can be fitted.
        assert np.unique(np.round(values / maximum, 3)).size > 40
    # The components are not proportional to one another.
    strained = ~ref
    for a, b in itertools.combinations([exx, eyy, exy, theta], 2):
        assert abs(np.corrcoef(a[strained], b[strained])[0, 1]) < 0.999


def test_crystal_amplitudes_and_reflections():
    scan = sim.simulate_crystal(scan_shape=(2, 2), modulation=0.2, seed=0)
    t = scan.truth
    assert t.hk.shape == (49, 2) and tuple(t.hk[0]) == (0, 0)
    np.testing.assert_array_equal(np.bincount(t.order), [1, 8, 16, 24])
    ratio = t.amplitudes / t.envelope
    assert np.all(ratio[..., 0] == 1.0)
    assert np.all((ratio[..., 1:] >= 0.8) & (ratio[..., 1:] <= 1.2))
    first = np.flatnonzero((t.hk[:, 0] == 1) & (t.hk[:, 1] == 0))[0]
    np.testing.assert_allclose(t.envelope[first], np.exp(-(16.0**2) / (2 * 21.0**2)), rtol=1e-12)
    # First-order disks carry about ten thousand electrons at the default dose.
    counts = (t.envelope * t.counts_per_amplitude[0, 0])[t.order == 1]
    assert np.all((counts > 9000) & (counts < 15000))


# --------------------------------------------------------------------------- noise and determinism


def test_same_seed_same_bits_other_seed_other_data():
    a = sim.simulate_crystal(scan_shape=(3, 2), seed=7)
    b = sim.simulate_crystal(scan_shape=(3, 2), seed=7)
    c = sim.simulate_crystal(scan_shape=(3, 2), seed=8)
    assert a.data.dtype == np.uint16
    assert a.data.tobytes() == b.data.tobytes()
    np.testing.assert_array_equal(a.truth.amplitudes, b.truth.amplitudes)
    assert not np.array_equal(a.data, c.data)
    assert not np.array_equal(a.truth.amplitudes, c.truth.amplitudes)


def test_scan_kinds_use_separate_streams():
    small = {"calibration_shape": (1, 1), "image_shape": (48, 48), "n_features": 2}
    one = sim.simulate_workflow(vacuum_shape=(2, 2), experiment_shape=(2, 1), **small)
    two = sim.simulate_workflow(vacuum_shape=(2, 2), experiment_shape=(3, 1), **small)
    assert one.vacuum.data.tobytes() == two.vacuum.data.tobytes()
    assert one.images.shadow.tobytes() == two.images.shadow.tobytes()
    assert one.vacuum.data.tobytes() == sim.simulate_vacuum(scan_shape=(2, 2)).data.tobytes()


def test_noisy_frames_sum_to_the_dose():
    scan = sim.simulate_crystal(scan_shape=(4, 4), seed=4)
    sums = scan.data.reshape(16, -1).sum(axis=1, dtype=np.int64)
    dose = scan.microscope.dose
    # Each frame is Poisson(dose): the mean over 16 frames is within 4 sigma.
    assert abs(sums.mean() - dose) < 4 * np.sqrt(dose / 16)
    assert np.all(np.abs(sums - dose) < 6 * np.sqrt(dose))


def test_uint16_overflow_raises_and_float32_does_not():
    with pytest.raises(ValueError, match=r"uint16.*dose|dose.*float32"):
        sim.simulate_vacuum(sim.Microscope(dose=1e9), scan_shape=(1, 1))
    scan = sim.simulate_vacuum(sim.Microscope(dose=1e9, dtype="float32"), scan_shape=(1, 1))
    assert scan.data.dtype == np.float32 and scan.data.max() > 65535


def test_data_and_truth_are_read_only():
    scan = sim.simulate_crystal(scan_shape=(2, 1))
    with pytest.raises(ValueError):
        scan.data[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        scan.truth.centers[0, 0, 0, 0] = 1.0


# --------------------------------------------------------------------------- polycrystal


def test_polycrystal_spots_lie_on_the_rings():
    m = sim.Microscope()
    scan = sim.simulate_polycrystal(m, scan_shape=(6, 6), seed=2)
    t = scan.truth
    np.testing.assert_array_equal(t.ring_hkl, [[1, 1, 1], [2, 0, 0], [2, 2, 0]])
    np.testing.assert_allclose(t.ring_radii, 1 / (t.ring_d * m.pixel_size), rtol=1e-12)
    np.testing.assert_allclose(np.hypot(*t.centers_corrected.T), t.ring_radii[t.ring], rtol=1e-12)
    counts = np.diff(t.offsets)
    origins = np.repeat(t.origins.reshape(-1, 2), counts, axis=0)
    np.testing.assert_allclose(
        t.centers, origins + t.centers_corrected @ m.distortion.T, atol=1e-12
    )
    assert 0.7 * 9 < counts.mean() < 1.3 * 9  # 1.5 pairs on each of 3 rings
    margin = m.probe_radius + 3 * m.edge_width + 2
    assert np.all(t.centers >= margin) and np.all(t.centers <= 127 - margin)
    min_sep = 2 * m.probe_radius + 4 * m.edge_width + 1
    for p in range(36):
        spots = t.centers_corrected[t.offsets[p] : t.offsets[p + 1]]
        # Friedel pairs: consecutive spots are +g and -g, with equal amplitudes.
        np.testing.assert_allclose(spots[0::2], -spots[1::2], atol=1e-12)
        amps = t.amplitudes[t.offsets[p] : t.offsets[p + 1]]
        np.testing.assert_array_equal(amps[0::2], amps[1::2])
        points = np.vstack([[0.0, 0.0], spots])
        distance = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1))
        assert np.all(distance[np.triu_indices(len(points), 1)] >= min_sep)


def test_polycrystal_noise_free_centroids():
    scan = sim.simulate_polycrystal(NOISE_FREE, scan_shape=(2, 2), seed=1)
    t = scan.truth
    for p, (rx, ry) in enumerate(np.ndindex(2, 2)):
        for center in t.centers[t.offsets[p] : t.offsets[p + 1]]:
            np.testing.assert_allclose(
                _centroid(scan.data[rx, ry], center, 7.0), center, atol=0.01
            )


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("rotation", "flip"), itertools.product([-170, -23, 45, 120], [False, True])
)
def test_shadow_features_follow_the_affine_map(rotation, flip):
    m = sim.Microscope(rotation_deg=rotation, flip=flip)
    images = sim.simulate_images(
        m, n_features=12, min_separation=20.0, feature_sigma=(1.5, 2.0), dose=None, seed=11
    )
    t = images.truth
    # D_s · scale · R · P, built independently of the simulator.
    expected_map = m.distortion @ (0.8 * rotation_matrix(np.deg2rad(rotation)) @ flip_matrix(flip))
    np.testing.assert_allclose(t.affine[:, :2], expected_map, atol=1e-12)
    np.testing.assert_allclose(t.real_to_shadow(t.c_R), t.c_Q, atol=1e-12)
    features = t.shadow_disk - images.shadow  # the disk's flat top times the absorption
    mapped = t.real_to_shadow(t.centers_haadf)
    assert t.visible.sum() >= 4
    for center, sigma in zip(mapped[t.visible], t.sigmas[t.visible]):
        radius = 4.5 * sigma * 0.8 * m.ellipse[0]
        np.testing.assert_allclose(_centroid(features, center, radius), center, atol=0.05)


def test_haadf_blobs_sit_at_their_centres():
    images = sim.simulate_images(n_features=6, min_separation=24.0, dose=None, seed=4)
    t = images.truth
    i, j = np.indices(images.haadf.shape)
    blobs = sum(
        a * np.exp(-((i - c[0]) ** 2 + (j - c[1]) ** 2) / (2 * s**2))
        for c, s, a in zip(t.centers_haadf, t.sigmas, t.amplitudes)
    )
    # What is left is the weak, smooth background: no trace of a misplaced blob.
    rest = images.haadf - blobs
    assert rest.min() > 0.04 and rest.max() < 0.16
    assert np.abs(np.diff(rest, 2, axis=0)).max() < 1e-3
    assert np.abs(np.diff(rest, 2, axis=1)).max() < 1e-3


def test_noisy_shadow_has_the_requested_dose():
    images = sim.simulate_images(n_features=4, dose=500.0, seed=0)
    flat = images.truth.shadow_disk >= 500.0 * (1 - 1e-9)
    features = np.abs(images.truth.shadow_disk - images.shadow) > 0  # includes noise
    assert images.shadow[flat].mean() == pytest.approx(500.0, rel=0.03)
    assert features.any() and images.shadow.dtype == np.float32


# --------------------------------------------------------------------------- files


def test_write_demo_and_read_truth_round_trip(tmp_path):
    sizes = {
        "vacuum_shape": (2, 2),
        "calibration_shape": (2, 3),
        "experiment_shape": (4, 2),
        "image_shape": (48, 48),
        "n_features": 3,
    }
    m = sim.Microscope(dose=5e4)
    paths = sim.write_demo(tmp_path / "new" / "demo", seed=3, microscope=m, **sizes)
    assert {p.name for p in paths.values()} == {
        "vacuum.h5",
        "calibration.h5",
        "experiment.h5",
        "images.h5",
    }
    wf = sim.simulate_workflow(m, 3, **sizes)
    for name in ("vacuum", "calibration", "experiment"):
        scan = getattr(wf, name)
        with h5py.File(paths[name], "r") as f:
            data = f["data"]
            assert data.shape == scan.data.shape and data.dtype == scan.data.dtype
            assert data.chunks == (1, *scan.data.shape[1:]) and data.compression is None
            np.testing.assert_array_equal(data[()], scan.data)
        truth = sim.read_truth(paths[name])
        for key, value in scan.truth.to_dict().items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(truth[key], value)
            else:
                assert truth[key] == (list(value) if isinstance(value, tuple) else value)
        assert sim.Microscope(**truth["microscope"]) == m
        assert truth["seed"] == 3 and truth["kind"] in {"vacuum", "polycrystal", "crystal"}
    with h5py.File(paths["images"], "r") as f:
        np.testing.assert_array_equal(f["haadf"][()], wf.images.haadf)
        np.testing.assert_array_equal(f["shadow"][()], wf.images.shadow)
    truth = sim.read_truth(paths["images"])
    np.testing.assert_array_equal(truth["affine"], wf.images.truth.affine)
    assert truth["kind"] == "images" and truth["flip"] is True


def test_read_truth_rejects_foreign_files(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="truth"):
        sim.read_truth(path)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "knob"),
    [
        ({"probe_radius": -1.0}, "probe_radius"),
        ({"edge_width": 0.0}, "edge_width"),
        ({"ellipse": (0.95, 10.0)}, "ellipse ratio"),
        ({"ellipse": (1.1, 180.0)}, "ellipse angle"),
        ({"ellipse": (1.1, -5.0)}, "ellipse angle"),
        ({"detector_shape": (128,)}, "detector_shape"),
        ({"detector_shape": (0, 128)}, "detector_shape"),
        ({"detector_shape": (64.5, 64)}, "detector_shape"),
        ({"oversample": 0}, "oversample"),
        ({"pixel_size": 0.0}, "pixel_size"),
        ({"dose": -5.0}, "dose"),
        ({"psf_sigma": -1.0}, "psf_sigma"),
        ({"background_fraction": 1.0}, "background_fraction"),
        ({"descan_matrix": ((1.0, 0.0),)}, "descan_matrix"),
        ({"dtype": "int8"}, "dtype"),
        ({"flip": "yes"}, "flip"),
    ],
)
def test_invalid_microscope_knobs_raise_naming_the_knob(kwargs, knob):
    with pytest.raises(ValueError, match=knob):
        sim.Microscope(**kwargs)


@pytest.mark.parametrize(
    ("call", "knob"),
    [
        (lambda: sim.simulate_crystal(scan_shape=(0, 3)), "scan_shape"),
        (lambda: sim.simulate_crystal(scan_shape=(2, 2, 2)), "scan_shape"),
        (lambda: sim.simulate_crystal(scan_shape=(2, 2), modulation=2.0), "modulation"),
        (lambda: sim.simulate_crystal(scan_shape=(2, 2), max_order=0), "max_order"),
        (lambda: sim.simulate_vacuum(scan_shape=(2, 2), seed=-1), "seed"),
        (lambda: sim.simulate_vacuum(scan_shape=(2, 2), jitter=-0.1), "jitter"),
        (lambda: sim.Lattice(a=0.0), "Lattice a"),
        (lambda: sim.StrainField(reference_fraction=1.0), "reference_fraction"),
        (
            lambda: sim.render_disks((32, 32), [[1.0, 2.0]], [1.0], radius=-2, edge_width=1),
            "radius",
        ),
        (lambda: sim.render_disks((32, 32), [1.0, 2.0], [1.0], 2.0, 1.0), "centers"),
        (lambda: sim.simulate_images(n_features=0), "n_features"),
        (lambda: sim.simulate_images(n_features=400), "n_features"),
        (lambda: sim.simulate_polycrystal(pixel_size_check(), scan_shape=(1, 1)), "ring"),
        (lambda: sim.disk_center_crb((32, 32), [[15.0, 15.0]], [1.0], dose=None), "dose"),
        (lambda: sim.disk_center_crb((32, 32), [[99.0, 99.0]], [1.0], dose=1e4), "no disk"),
        (lambda: sim.crystal_disk_crb(sim.simulate_vacuum(scan_shape=(1, 1))), "crystal"),
    ],
)
def test_invalid_arguments_raise_naming_the_problem(call, knob):
    with pytest.raises(ValueError, match=knob):
        call()


def pixel_size_check():
    """A pixel size so small that even the 111 ring falls off the detector."""
    return sim.Microscope(pixel_size=0.001)


# --------------------------------------------------------------------------- Cramér–Rao bound


def test_crb_scales_as_one_over_sqrt_dose():
    m = sim.Microscope()
    scan = sim.simulate_crystal(m, scan_shape=(1, 1))
    low = sim.crystal_disk_crb(scan, dose=2e5)
    high = sim.crystal_disk_crb(scan, dose=8e5)
    ok = np.isfinite(low.rms)
    np.testing.assert_allclose(high.rms[ok], low.rms[ok] / 2, rtol=1e-6)
    assert ok[low.order <= 2].all()


def test_crb_matches_a_finite_difference_fisher_matrix():
    shape, center = (40, 40), np.array([19.2, 20.7])
    kwargs = {"origin": (18.0, 21.0), "background_fraction": 0.05, "psf_sigma": 0.8, "dose": 2e4}
    centers = np.array([center, center + [14.0, 3.0]])
    amps = np.array([1.0, 0.6])
    bound = sim.disk_center_crb(shape, centers, amps, **kwargs)
    mu = sim.render_pattern(shape, centers, amps, **kwargs)
    relative = {**kwargs, "background_fraction": 0.0, "dose": None}
    # Parameters of disk 0: amplitude, x, y; the normalisation and the rest held fixed.
    scale = 0.95 * kwargs["dose"] / sim.render_pattern(shape, centers, amps, **relative).sum()
    background = mu - scale * sim.render_pattern(shape, centers, amps, **relative)

    def model(p):
        disks = sim.render_pattern(shape, [p[1:], centers[1]], [p[0], amps[1]], **relative)
        return scale * disks + background

    p0, h = np.array([1.0, *center]), 1e-4
    jac = [(model(p0 + h * e) - model(p0 - h * e)) / (2 * h) for e in np.eye(3)]
    fisher = np.array([[np.sum(a * b / mu) for b in jac] for a in jac])
    expected = np.linalg.inv(fisher)[1:, 1:]
    np.testing.assert_allclose(bound.covariance[0], expected, rtol=2e-3, atol=1e-9)
    assert bound.counts[0] == pytest.approx(scale * np.pi * 36.25, rel=1e-3)


def test_crb_is_reached_by_a_poisson_weighted_fit():
    shape, center, dose = (32, 32), np.array([15.3, 16.2]), 1e4
    kwargs = {"origin": center, "background_fraction": 0.04, "dose": dose}
    mu = sim.render_pattern(shape, [center], [1.0], **kwargs)
    background = dose * 0.04 * sim.render_background(shape, center)
    bound = sim.disk_center_crb(shape, [center], [1.0], **kwargs).rms[0]
    flat_top = (mu - background).max()

    def model(p):
        return p[2] * sim.render_disks(shape, [p[:2]], [1.0], 6.0, 0.5) + background

    rng = np.random.default_rng(12)
    errors = []
    for _ in range(200):
        counts = rng.poisson(mu)
        p = np.array([*center, flat_top])
        # Two passes of iteratively reweighted least squares = Poisson maximum likelihood.
        for weight in (1 / np.sqrt(np.maximum(counts, 1)), None):
            w = 1 / np.sqrt(model(p)) if weight is None else weight
            p = least_squares(lambda q, w=w, n=counts: ((model(q) - n) * w).ravel(), p).x
        errors.append(p[:2] - center)
    rms = np.sqrt(np.mean(np.sum(np.square(errors), axis=1)))
    assert rms == pytest.approx(bound, rel=0.15)


def test_crystal_crb_orders_and_counts():
    scan = sim.simulate_crystal(scan_shape=(1, 2), seed=0)
    bound = sim.crystal_disk_crb(scan, position=(0, 1), mean_amplitudes=True)
    first = bound.rms[bound.order == 1]
    second = bound.rms[bound.order == 2]
    assert np.median(first) < np.median(second)
    assert 0.02 < np.sqrt(np.mean(first**2)) < 0.04
    np.testing.assert_array_equal(bound.hk, scan.truth.hk)


def test_strain_precision_bound_at_the_reference_conditions():
    b = sim.strain_precision_bound()
    # the product's reference figures for these conditions: ≈0.035 %, 0.035 %, 0.025 %, 0.014°
    assert 0.028e-2 < b["exx"] < 0.040e-2 and 0.028e-2 < b["eyy"] < 0.040e-2
    assert 0.020e-2 < b["exy"] < 0.030e-2 and 0.011 < b["theta_deg"] < 0.017
    finer = sim.strain_precision_bound(sim.Microscope(dose=8e5))
    assert finer["exx"] == pytest.approx(b["exx"] / 2, rel=1e-6)
    with pytest.raises(ValueError, match="needs a Microscope with a dose"):
        sim.strain_precision_bound(sim.Microscope(dose=None))


def test_per_position_strain_bound_follows_the_local_counts():
    scan = sim.simulate_crystal(scan_shape=(2, 2), seed=3)
    where = np.array([[True, False], [False, True]])
    b = sim.crystal_strain_crb(scan, positions=where)
    assert np.isnan(b["exx"][0, 1]) and np.isfinite(b["exx"][0, 0])
    # with mean amplitudes and no strain it is the planning bound
    flat = sim.simulate_crystal(
        scan_shape=(1, 1), modulation=0.0, strain=sim.StrainField(exx=0, eyy=0, exy=0, theta_deg=0)
    )
    plan = sim.strain_precision_bound()
    one = sim.crystal_strain_crb(flat)
    for name in ("exx", "eyy", "exy", "theta_deg", "a_rel", "b_rel"):
        assert one[name][0, 0] == pytest.approx(plan[name], rel=1e-6)
    # a quarter of the dose doubles every bound
    low = sim.crystal_strain_crb(sim.simulate_crystal(sim.Microscope(dose=5e4), (1, 1)))
    high = sim.crystal_strain_crb(sim.simulate_crystal(sim.Microscope(dose=2e5), (1, 1)))
    assert low["eyy"][0, 0] / high["eyy"][0, 0] == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="boolean mask of the scan shape"):
        sim.crystal_strain_crb(scan, positions=np.ones((3, 3), bool))
