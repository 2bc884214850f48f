"""The probe template: alignment, disk measurement, kernels and bad input."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import strainkit as sk
from strainkit import simulate
from strainkit.probe import ProbeTemplate, disk_model, fit_disk, make_kernel, support_radius


@pytest.fixture(scope="module")
def vacuum():
    return simulate.simulate_vacuum(scan_shape=(6, 6), jitter=0.4, seed=2)


def test_fit_measures_radius_and_aligns_every_pattern(vacuum):
    probe = ProbeTemplate().fit(sk.DataCube(vacuum.data))
    assert probe.n_frames_ == 36
    assert probe.radius_ == pytest.approx(6.0, abs=0.1)
    # aligned on the first pattern: the template's disk sits at its origin
    np.testing.assert_allclose(probe.center_, vacuum.truth.origins[0, 0], atol=0.05)
    # aligning matters: the plain average of jittered patterns has a blurred edge
    plain = ProbeTemplate(align=False).fit(sk.DataCube(vacuum.data))
    assert plain.edge_width_ > probe.edge_width_ + 0.05


def test_fit_accepts_a_single_pattern_and_a_vacuum_region(vacuum):
    single = ProbeTemplate().fit(vacuum.data[0, 0])
    assert single.n_frames_ == 1 and single.radius_ == pytest.approx(6.0, abs=0.15)
    mask = np.zeros((6, 6), bool)
    mask[:2] = True
    region = ProbeTemplate().fit(sk.DataCube(vacuum.data), mask=mask)
    assert region.n_frames_ == 12


def test_synthetic_probe():
    probe = ProbeTemplate.synthetic(5.0, 0.5, (64, 64), kernel="flat")
    assert probe.center_ == (32.0, 32.0) and probe.radius_ == pytest.approx(5.0, abs=1e-3)
    assert probe.kernel_.sum() == pytest.approx(1.0)


def test_fit_disk_is_robust_to_background_and_outside_intensity():
    img = disk_model((64, 64), (30.4, 33.7), 8.0, 0.7, amplitude=50, background=5)
    img[50:60, 50:60] += 40  # a bright blob that would pull a centre of mass
    fit = fit_disk(img)
    assert abs(fit["center_x"] - 30.4) < 0.01 and abs(fit["center_y"] - 33.7) < 0.01
    assert fit["radius"] == pytest.approx(8.0, abs=0.01)


@pytest.mark.parametrize(("kind", "total"), [("flat", 1.0), ("poisson", 1.0), ("zero_sum", 0.0)])
def test_kernel_kinds(kind, total):
    t = disk_model((64, 64), (30.2, 33.7), 6.0, 0.5)
    k = make_kernel(t, (30.2, 33.7), 6.0, 0.5, kind=kind, spacing=16.0)
    assert k.sum() == pytest.approx(total, abs=1e-9)
    # the kernel sits at the origin (wrapped): its mass is within ~R+3w of pixel (0, 0)
    far = np.abs(np.fft.fftshift(k))[32 - 12 : 32 + 12, 32 - 12 : 32 + 12].sum()
    assert far == pytest.approx(np.abs(k).sum(), rel=1e-6)


def test_zero_sum_kernel_stays_clear_of_neighbours():
    assert support_radius(6.0, 0.5, None) == 8.0
    assert support_radius(6.0, 0.5, 15.0) == pytest.approx(7.5)  # 15 - 6 - 3 x 0.5


def test_parameters_are_validated_and_cloned():
    with pytest.raises(ValueError, match=r"kernel='gauss': Input should be 'poisson', 'flat'"):
        ProbeTemplate(kernel="gauss").fit(np.ones((8, 8)))
    with pytest.raises(ValueError, match="spacing=-3"):
        ProbeTemplate(spacing=-3).fit(np.ones((8, 8)))
    assert clone(ProbeTemplate(kernel="flat")).kernel == "flat"
    with pytest.raises(NotFittedError):
        ProbeTemplate().build_kernel()


def test_bad_vacuum_input(vacuum):
    cube = sk.DataCube(vacuum.data)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 3\) but the scan is \(6, 6\)"):
        ProbeTemplate().fit(cube, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="marks no scan position as vacuum"):
        ProbeTemplate().fit(cube, mask=np.zeros((6, 6), bool))
    with pytest.raises(ValueError, match="no bright disk"):
        ProbeTemplate().fit(np.zeros((32, 32)))


def test_fitted_probe_round_trips(tmp_path, vacuum):
    probe = ProbeTemplate().fit(vacuum.data[0, 0])
    back = sk.load_model(sk.save(probe, tmp_path / "probe.h5"))
    np.testing.assert_array_equal(back.kernel_, probe.kernel_)
    assert back.center_ == probe.center_
