"""d-spacings of calibration standards, from a unit cell and a basis (kinematic theory).

A :class:`Crystal` is a unit cell (a, b, c in Å; alpha, beta, gamma in degrees) plus basis
atoms at fractional coordinates, each with a scattering weight. The d-spacing of a
reflection hkl comes from the general metric-tensor formula ``1/d² = hᵀ G* h`` with
``G* = G⁻¹`` the reciprocal metric tensor, so any cell works, triclinic included.
A reflection is allowed when its kinematic structure factor
``F = Σ_j w_j exp(2πi (h x_j + k y_j + l z_j))`` does not vanish: ``|F|² < 1e-6 (Σ w)²``
counts as extinct. Double diffraction (which can light up kinematically forbidden
reflections such as Si 200) is not modelled.

The factories :func:`cubic`, :func:`fcc`, :func:`bcc`, :func:`diamond` and :func:`hcp` build
the usual standards; :func:`from_cell` builds any other.

Examples
--------
>>> from strainkit import crystal
>>> crystal.fcc(4.078).d_spacings(d_min=1.4)
array([2.3544..., 2.039 , 1.4418...])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from strainkit._registry import register

__all__ = [
    "Crystal",
    "Reflections",
    "bcc",
    "cubic",
    "diamond",
    "fcc",
    "from_cell",
    "hcp",
]

# |F|² below this fraction of the largest possible value, (Σ w)², is an extinction.
_EXTINCTION = 1e-6
# Reflections whose d differ by less than this (Å) are one ring.
_D_TOLERANCE = 1e-6

_FCC_BASIS = ((0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0))
_BCC_BASIS = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5))
_DIAMOND_BASIS = _FCC_BASIS + tuple((x + 0.25, y + 0.25, z + 0.25) for x, y, z in _FCC_BASIS)
_HCP_BASIS = ((1.0 / 3.0, 2.0 / 3.0, 0.25), (2.0 / 3.0, 1.0 / 3.0, 0.75))


@dataclass(frozen=True)
class Reflections:
    """Allowed reflections grouped by unique d-spacing, strongest d first (descending d).

    Attributes
    ----------
    hkl : ndarray of int, shape (n, 3)
        A representative of each group: the member with the fewest negative indices,
        preferring ``h >= k >= l``, then the largest (h, k, l).
    d : ndarray, shape (n,)
        d-spacing in Å, descending.
    multiplicity : ndarray of int, shape (n,)
        Number of allowed hkl (Friedel mates counted separately) with this d.
    structure_factor : ndarray, shape (n,)
        Mean kinematic ``|F|²`` over the members, with the basis weights as form factors.

    Examples
    --------
    >>> r = fcc(4.078).reflections(d_min=2.0)
    >>> r.hkl
    array([[1, 1, 1],
           [2, 0, 0]])
    >>> r.multiplicity
    array([8, 6])
    """

    hkl: np.ndarray
    d: np.ndarray
    multiplicity: np.ndarray
    structure_factor: np.ndarray

    @property
    def intensity(self) -> np.ndarray:
        """Kinematic powder intensity of each group, ``multiplicity * |F|²``.

        Examples
        --------
        >>> fcc(4.078).reflections(d_min=2.0).intensity
        array([128.,  96.])
        """
        return self.multiplicity * self.structure_factor

    @property
    def relative_intensity(self) -> np.ndarray:
        """:attr:`intensity` divided by its maximum.

        Examples
        --------
        >>> fcc(4.078).reflections(d_min=2.0).relative_intensity
        array([1.  , 0.75])
        """
        intensity = self.intensity
        return intensity / intensity.max() if intensity.size else intensity

    def __len__(self) -> int:
        return int(self.d.size)


@register
@dataclass(frozen=True)
class Crystal:
    """A unit cell with a basis of atoms, from which d-spacings follow.

    Parameters
    ----------
    a, b, c : float
        Cell lengths in Å (positive).
    alpha, beta, gamma : float
        Cell angles in degrees, each in (0, 180), forming a cell of positive volume.
    basis : sequence of (x, y, z)
        Fractional coordinates of the atoms in the cell; default one atom at the origin.
    weights : sequence of float, optional
        Scattering weight of each basis atom (a stand-in for its form factor); default
        all equal to 1.
    name : str
        A label, e.g. ``"fcc"``.

    Examples
    --------
    >>> si = Crystal(5.431, 5.431, 5.431, basis=((0, 0, 0), (0.25, 0.25, 0.25)))
    >>> si.volume
    160.19...
    """

    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0
    basis: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0),)
    weights: tuple[float, ...] | None = None
    name: str = field(default="", compare=False)

    def _to_state(self) -> dict:
        """What :func:`strainkit.save` stores: the constructor's arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def _from_state(cls, state: dict) -> Crystal:
        return cls(**state)

    def __post_init__(self) -> None:
        for knob in ("a", "b", "c"):
            value = float(getattr(self, knob))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Crystal {knob}={value!r}: a cell length must be > 0 Å")
            object.__setattr__(self, knob, value)
        for knob in ("alpha", "beta", "gamma"):
            value = float(getattr(self, knob))
            if not 0.0 < value < 180.0:
                raise ValueError(
                    f"Crystal {knob}={value!r}: a cell angle must lie in (0, 180) degrees"
                )
            object.__setattr__(self, knob, value)
        if _cell_volume_factor(self.alpha, self.beta, self.gamma) <= 0:
            raise ValueError(
                f"Crystal angles alpha={self.alpha}, beta={self.beta}, gamma={self.gamma} do "
                "not form a cell (zero or negative volume); check the angles"
            )
        basis = np.asarray(self.basis, dtype=float)
        if basis.ndim != 2 or basis.shape[1] != 3 or basis.shape[0] == 0:
            raise ValueError(
                f"Crystal basis has shape {basis.shape}; give one (x, y, z) triple of "
                "fractional coordinates per atom, shape (n_atoms, 3)"
            )
        if not np.isfinite(basis).all():
            raise ValueError("Crystal basis holds non-finite coordinates")
        weights = np.ones(len(basis)) if self.weights is None else np.asarray(self.weights, float)
        if weights.shape != (len(basis),) or not np.all(weights >= 0) or weights.sum() <= 0:
            raise ValueError(
                f"Crystal weights={self.weights!r}: give one non-negative weight per basis "
                f"atom ({len(basis)}), not all zero"
            )
        object.__setattr__(self, "basis", tuple(tuple(float(v) for v in row) for row in basis))
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))

    @property
    def metric_tensor(self) -> np.ndarray:
        """Real-space metric tensor ``G`` (Å²), ``G_ij = a_i · a_j``.

        Examples
        --------
        >>> cubic(2.0).metric_tensor
        array([[4., 0., 0.],
               [0., 4., 0.],
               [0., 0., 4.]])
        """
        lengths = np.array([self.a, self.b, self.c])
        ca, cb, cg = (math.cos(math.radians(v)) for v in (self.alpha, self.beta, self.gamma))
        # Rounding cos(90°) to 0 keeps orthogonal cells exactly orthogonal.
        cosines = np.round(np.array([[1.0, cg, cb], [cg, 1.0, ca], [cb, ca, 1.0]]), 15)
        return cosines * np.outer(lengths, lengths)

    @property
    def volume(self) -> float:
        """Cell volume in Å³.

        Examples
        --------
        >>> cubic(2.0).volume
        8.0
        """
        return float(math.sqrt(np.linalg.det(self.metric_tensor)))

    def d_spacing(self, hkl) -> np.ndarray:
        """d-spacing (Å) of reflections ``hkl`` (shape (..., 3)); ``inf`` for 000.

        Examples
        --------
        >>> cubic(4.0).d_spacing([[1, 0, 0], [1, 1, 0]])
        array([4.        , 2.82842712])
        """
        hkl = np.asarray(hkl, dtype=float)
        inv_d2 = np.einsum("...i,ij,...j->...", hkl, np.linalg.inv(self.metric_tensor), hkl)
        with np.errstate(divide="ignore"):
            return 1.0 / np.sqrt(np.maximum(inv_d2, 0.0))

    def structure_factor(self, hkl) -> np.ndarray:
        """Kinematic ``|F|²`` of reflections ``hkl`` (shape (..., 3)) with the basis weights.

        Examples
        --------
        >>> fcc(4.0).structure_factor([[1, 1, 1], [1, 0, 0]])
        array([16.,  0.])
        """
        hkl = np.asarray(hkl, dtype=float)
        phases = 2j * np.pi * (hkl @ np.asarray(self.basis).T)
        f = np.exp(phases) @ np.asarray(self.weights)
        # Drop the rounding residue of exactly cancelling terms.
        return np.round(np.abs(f) ** 2, 12)

    def reflections(self, d_min: float = 0.5) -> Reflections:
        """All allowed reflections with ``d >= d_min``, grouped by unique d.

        Parameters
        ----------
        d_min : float
            Smallest d-spacing (Å) to include.

        Returns
        -------
        Reflections
            One entry per unique d (equal within 1e-6 Å), descending d.

        Examples
        --------
        >>> bcc(3.165).reflections(d_min=1.5).hkl
        array([[1, 1, 0],
               [2, 0, 0]])
        """
        d_min = float(d_min)
        if not (math.isfinite(d_min) and d_min > 0):
            raise ValueError(f"d_min={d_min!r}: give the smallest d-spacing in Å, > 0")
        hkl = self._indices_within(d_min)
        d = self.d_spacing(hkl)
        f2 = self.structure_factor(hkl)
        keep = (d >= d_min) & (f2 >= _EXTINCTION * sum(self.weights) ** 2)
        hkl, d, f2 = hkl[keep], d[keep], f2[keep]
        order = np.argsort(-d, kind="stable")
        hkl, d, f2 = hkl[order], d[order], f2[order]
        if d.size == 0:
            return Reflections(np.zeros((0, 3), int), d, np.zeros(0, int), f2)
        starts = np.flatnonzero(np.r_[True, np.diff(-d) > _D_TOLERANCE])
        counts = np.diff(np.r_[starts, d.size])
        return Reflections(
            hkl=_representatives(hkl, np.repeat(np.arange(starts.size), counts)),
            d=np.add.reduceat(d, starts) / counts,
            multiplicity=counts.astype(int),
            structure_factor=np.add.reduceat(f2, starts) / counts,
        )

    def d_spacings(
        self, d_min: float = 0.5, *, relative_intensity: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Unique allowed d-spacings (Å, descending) down to ``d_min``.

        Parameters
        ----------
        d_min : float
            Smallest d-spacing (Å) to include.
        relative_intensity : bool
            Also return the kinematic powder intensity ``multiplicity * |F|²`` of each
            ring, divided by its maximum.

        Returns
        -------
        d : ndarray
            The d-spacings; or ``(d, intensity)`` when ``relative_intensity`` is True.

        Examples
        --------
        >>> diamond(5.431).d_spacings(d_min=1.5)
        array([3.1356..., 1.9201..., 1.6375...])
        """
        refl = self.reflections(d_min)
        return (refl.d, refl.relative_intensity) if relative_intensity else refl.d

    def _indices_within(self, d_min: float) -> np.ndarray:
        # |h| = |g · a1| <= |g| |a1| = |a1| / d, so these bounds hold for any cell.
        bounds = [math.ceil(length / d_min) for length in (self.a, self.b, self.c)]
        axes = [np.arange(-n, n + 1) for n in bounds]
        hkl = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        return hkl[np.any(hkl != 0, axis=1)]


def _representatives(hkl: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The conventional name of each group: fewest negatives, then h >= k >= l, then largest."""
    h, k, l = hkl.T  # noqa: E741 (Miller index l)
    negatives = (hkl < 0).sum(axis=1)
    descending = (h >= k) & (k >= l)
    # lexsort sorts by the last key first; the best member of each group ends up last.
    order = np.lexsort((l, k, h, descending, -negatives, group))
    last = np.flatnonzero(np.r_[group[order][1:] != group[order][:-1], True])
    return hkl[order[last]].astype(int).reshape(-1, 3)


def _cell_volume_factor(alpha: float, beta: float, gamma: float) -> float:
    ca, cb, cg = (math.cos(math.radians(v)) for v in (alpha, beta, gamma))
    return 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg


def from_cell(
    a: float,
    b: float,
    c: float,
    alpha: float = 90.0,
    beta: float = 90.0,
    gamma: float = 90.0,
    basis=None,
    weights=None,
) -> Crystal:
    """A crystal from any unit cell; ``basis=None`` puts one atom at the origin.

    Examples
    --------
    >>> from_cell(3.0, 3.0, 5.0).d_spacings(d_min=2.0)
    array([5. , 3. , 2.5724..., 2.5 , 2.1213...])
    """
    basis = ((0.0, 0.0, 0.0),) if basis is None else basis
    return Crystal(a, b, c, alpha, beta, gamma, basis=basis, weights=weights, name="cell")


def cubic(a: float) -> Crystal:
    """Simple cubic lattice with lattice constant ``a`` (Å).

    Examples
    --------
    >>> cubic(4.0).d_spacings(d_min=2.0)
    array([4.        , 2.82842712, 2.30940108, 2.        ])
    """
    return Crystal(a, a, a, name="cubic")


def fcc(a: float) -> Crystal:
    """Face-centred cubic lattice (Au, Al, Cu, Ag, Pt...) with lattice constant ``a`` (Å).

    Examples
    --------
    >>> fcc(4.078).reflections(d_min=1.1).hkl
    array([[1, 1, 1],
           [2, 0, 0],
           [2, 2, 0],
           [3, 1, 1],
           [2, 2, 2]])
    """
    return Crystal(a, a, a, basis=_FCC_BASIS, name="fcc")


def bcc(a: float) -> Crystal:
    """Body-centred cubic lattice (Fe, W, Mo, Cr...) with lattice constant ``a`` (Å).

    Examples
    --------
    >>> bcc(3.165).reflections(d_min=1.5).hkl[0]
    array([1, 1, 0])
    """
    return Crystal(a, a, a, basis=_BCC_BASIS, name="bcc")


def diamond(a: float) -> Crystal:
    """Diamond-cubic lattice (Si, Ge, C) with lattice constant ``a`` (Å).

    200 and 222 are kinematically forbidden and therefore absent.

    Examples
    --------
    >>> diamond(5.431).reflections(d_min=1.0).hkl[:4]
    array([[1, 1, 1],
           [2, 2, 0],
           [3, 1, 1],
           [4, 0, 0]])
    """
    return Crystal(a, a, a, basis=_DIAMOND_BASIS, name="diamond")


def hcp(a: float, c: float) -> Crystal:
    """Hexagonal close-packed lattice (Ti, Mg, Zn, Co...) with lattice constants a, c (Å).

    Three-index (hkl) notation with gamma = 120°; 001 is forbidden.

    Examples
    --------
    >>> hcp(2.95, 4.68).reflections(d_min=2.0).hkl
    array([[1, 0, 0],
           [0, 0, 2],
           [1, 0, 1]])
    """
    return Crystal(a, a, c, 90.0, 90.0, 120.0, basis=_HCP_BASIS, name="hcp")
