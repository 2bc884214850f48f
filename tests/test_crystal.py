"""d-spacings of the standards against hand-computed values and selection rules."""

import numpy as np
import pytest

from strainkit import crystal


def _names(refl):
    return [tuple(int(v) for v in hkl) for hkl in refl.hkl]


def test_gold_d_spacings_match_textbook_values():
    refl = crystal.fcc(4.078).reflections(d_min=1.1)
    assert _names(refl) == [(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2)]
    np.testing.assert_allclose(refl.d, [2.3544, 2.039, 1.4418, 1.2296, 1.1772], atol=1e-4)
    np.testing.assert_array_equal(refl.multiplicity, [8, 6, 12, 24, 8])
    # 100 (d = 4.078 Å) and 110 (2.884 Å) are extinct for fcc.
    d = crystal.fcc(4.078).d_spacings(d_min=1.1)
    assert not np.any(np.isclose(d, 4.078)) and not np.any(np.isclose(d, 4.078 / np.sqrt(2)))


def test_d_spacings_descend_and_are_unique():
    d = crystal.fcc(4.078).d_spacings(d_min=0.5)
    assert np.all(np.diff(d) < -1e-6)
    assert d.min() >= 0.5


def test_bcc_starts_with_110_and_has_no_100():
    refl = crystal.bcc(3.165).reflections(d_min=1.0)
    assert _names(refl)[:3] == [(1, 1, 0), (2, 0, 0), (2, 1, 1)]
    assert not np.any(np.isclose(refl.d, 3.165))
    assert refl.multiplicity[0] == 12


def test_diamond_lacks_200_and_222():
    si = crystal.diamond(5.431)
    names = _names(si.reflections(d_min=1.0))
    assert names[:4] == [(1, 1, 1), (2, 2, 0), (3, 1, 1), (4, 0, 0)]
    assert (2, 0, 0) not in names and (2, 2, 2) not in names
    d = si.d_spacings(d_min=1.0)
    for forbidden in (5.431 / 2, 5.431 / np.sqrt(12)):
        assert not np.any(np.abs(d - forbidden) < 1e-6)


def test_hcp_first_rings_and_forbidden_001():
    ti = crystal.hcp(2.95, 4.68)
    refl = ti.reflections(d_min=1.2)
    assert _names(refl)[:6] == [(1, 0, 0), (0, 0, 2), (1, 0, 1), (1, 0, 2), (1, 1, 0), (1, 0, 3)]
    a, c = 2.95, 4.68
    np.testing.assert_allclose(refl.d[:3], [a * np.sqrt(3) / 2, c / 2, 2.2424130], rtol=1e-7)
    assert not np.any(np.isclose(refl.d, c))  # 001
    np.testing.assert_array_equal(refl.multiplicity[:3], [6, 2, 12])


def test_cell_based_crystal_equals_factories():
    a = 4.078
    fcc_basis = ((0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0))
    from_cell = crystal.from_cell(a, a, a, 90, 90, 90, basis=fcc_basis)
    np.testing.assert_array_equal(from_cell.d_spacings(), crystal.fcc(a).d_spacings())
    hcp_basis = ((1 / 3, 2 / 3, 0.25), (2 / 3, 1 / 3, 0.75))
    hexagonal = crystal.from_cell(2.95, 2.95, 4.68, 90, 90, 120, basis=hcp_basis)
    np.testing.assert_allclose(hexagonal.d_spacings(), crystal.hcp(2.95, 4.68).d_spacings())
    np.testing.assert_array_equal(
        crystal.from_cell(3.0, 3.0, 3.0).d_spacings(), crystal.cubic(3.0).d_spacings()
    )
    assert from_cell == crystal.fcc(a)


def test_metric_tensor_formula_for_a_triclinic_cell():
    cell = crystal.from_cell(3.1, 4.2, 5.3, 80.0, 95.0, 105.0)
    # Independent route: build the lattice vectors, invert for the reciprocal basis.
    al, be, ga = np.deg2rad([80.0, 95.0, 105.0])
    a1 = [3.1, 0, 0]
    a2 = [4.2 * np.cos(ga), 4.2 * np.sin(ga), 0]
    cx = 5.3 * np.cos(be)
    cy = 5.3 * (np.cos(al) - np.cos(be) * np.cos(ga)) / np.sin(ga)
    a3 = [cx, cy, np.sqrt(5.3**2 - cx**2 - cy**2)]
    recip = np.linalg.inv(np.array([a1, a2, a3]).T)  # rows are b1, b2, b3
    hkl = np.array([[1, 0, 0], [1, -2, 3], [2, 1, -1]])
    expected = 1 / np.linalg.norm(hkl @ recip, axis=1)
    np.testing.assert_allclose(cell.d_spacing(hkl), expected, rtol=1e-12)


def test_relative_intensity_is_multiplicity_times_structure_factor():
    d, intensity = crystal.fcc(4.078).d_spacings(d_min=1.1, relative_intensity=True)
    # All allowed fcc reflections have |F|² = 16, so intensity follows multiplicity.
    np.testing.assert_allclose(intensity, np.array([8, 6, 12, 24, 8]) / 24)
    assert len(d) == len(intensity)


def test_weights_change_the_structure_factor():
    # Two atoms per bcc cell with different weights (CsCl): 100 is allowed, but weak.
    cscl = crystal.from_cell(4.12, 4.12, 4.12, basis=((0, 0, 0), (0.5, 0.5, 0.5)), weights=(2, 1))
    refl = cscl.reflections(d_min=2.0)
    assert _names(refl)[0] == (1, 0, 0)
    np.testing.assert_allclose(refl.structure_factor[:2], [1.0, 9.0])


def test_no_reflections_above_the_largest_d():
    refl = crystal.fcc(4.078).reflections(d_min=5.0)
    assert len(refl) == 0 and refl.hkl.shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "knob"),
    [
        ({"a": -1.0, "b": 1.0, "c": 1.0}, "a"),
        ({"a": 1.0, "b": 1.0, "c": 1.0, "gamma": 180.0}, "gamma"),
        ({"a": 1.0, "b": 1.0, "c": 1.0, "alpha": 170, "beta": 170, "gamma": 170}, "angles"),
        ({"a": 1.0, "b": 1.0, "c": 1.0, "basis": ((0, 0),)}, "basis"),
        ({"a": 1.0, "b": 1.0, "c": 1.0, "weights": (1.0, 2.0)}, "weights"),
    ],
)
def test_invalid_cells_raise_naming_the_knob(kwargs, knob):
    with pytest.raises(ValueError, match=knob):
        crystal.Crystal(**kwargs)


def test_invalid_d_min_raises():
    with pytest.raises(ValueError, match="d_min"):
        crystal.fcc(4.0).d_spacings(d_min=0.0)
