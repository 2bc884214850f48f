"""Strain, rotation and lattice parameters from a lattice map and a reference lattice.

With the reference reciprocal lattice ``G0`` and the local one ``G`` (columns g1, g2), the
exact deformation gradient is ``F = G⁻ᵀ G0ᵀ`` (:func:`~strainkit._geometry.deformation_from_g`);
strainkit reports ``ε = (F + Fᵀ)/2 − I`` and ``θ = (F₁₀ − F₀₁)/2`` (no linearisation in G;
tension positive; ``exy`` is the tensor component). With ``frame_angle_deg = φ`` the
tensor is given in axes turned by φ (+x toward +y): ``ε' = Rᵀ ε R``, ``R = R(φ)``; θ does
not change. Standard errors come from the lattice covariance of (g1x, g1y, g2x, g2y)
through the analytic Jacobian ``dF = −G⁻ᵀ dGᵀ F`` (the reference is taken as exact).
In Å⁻¹, the real lattice ``A = G⁻ᵀ`` gives ``a = |a1|``, ``b = |a2|`` (Å) and the angle
γ between a1 and a2.

The pure function :func:`strain_from_lattice` does the work, in one numba pass over
positions (:mod:`strainkit._strainfast`; the vectorised numpy version is kept as the
reference, ``_strain_from_lattice_numpy``); :class:`StrainCalculator` learns the reference
and runs the same kernel on the lattice map's arrays, masked positions included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic
from sklearn.base import TransformerMixin

from strainkit._base import Estimator, ParamsModel
from strainkit._geometry import (
    deformation_from_g,
    reciprocal_from_real,
    rotation_matrix,
    strain_from_deformation,
)
from strainkit._strainfast import ROWS, median_lattice, strain_rows
from strainkit.containers import LatticeMap, StrainMap

__all__ = ["StrainCalculator", "reference_lattice", "strain_from_lattice"]

_G_SLICE = slice(2, 6)  # (g1x, g1y, g2x, g2y) in the LatticeMap covariance


def _components(f: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(exx, eyy, exy, theta_rad) in axes rotated by ``r``, stacked on the last axis."""
    exx, eyy, exy, theta = strain_from_deformation(f)
    eps = np.stack([np.stack([exx, exy], -1), np.stack([exy, eyy], -1)], -2)
    rot = r.T @ eps @ r
    return np.stack([rot[..., 0, 0], rot[..., 1, 1], rot[..., 0, 1], theta], axis=-1)


def _linear_components(df: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The same components of a perturbation ``df`` of F (linear, no −I)."""
    sym = 0.5 * (df + np.swapaxes(df, -1, -2))
    rot = r.T @ sym @ r
    theta = 0.5 * (df[..., 1, 0] - df[..., 0, 1])
    return np.stack([rot[..., 0, 0], rot[..., 1, 1], rot[..., 0, 1], theta], axis=-1)


_UNIT = np.zeros((4, 2, 2))  # dG for each of (g1x, g1y, g2x, g2y)
_UNIT[0, 0, 0] = _UNIT[1, 1, 0] = _UNIT[2, 0, 1] = _UNIT[3, 1, 1] = 1.0


def strain_from_lattice(
    g: np.ndarray,
    g0: np.ndarray,
    covariance: np.ndarray | None = None,
    frame_angle_deg: float = 0.0,
    lattice_parameters: bool = False,
) -> dict[str, np.ndarray]:
    """Strain, rotation, their standard errors and lattice parameters, per position.

    Parameters
    ----------
    g : array, shape (n, 2, 2)
        Local reciprocal lattices, columns g1, g2 (finite).
    g0 : array, shape (2, 2)
        Reference reciprocal lattice, columns g1, g2.
    covariance : array, shape (n, 4, 4), optional
        Covariance of (g1x, g1y, g2x, g2y).
    frame_angle_deg : float
        Express the tensor in axes rotated by this angle (+x toward +y).
    lattice_parameters : bool
        Also return ``a``, ``b`` (1 / the units of g), ``gamma_deg`` and ``sigma_a``,
        ``sigma_b``.

    Returns
    -------
    dict
        ``exx``, ``eyy``, ``exy``, ``theta_deg`` (n,), with ``covariance`` also
        ``sigma_exx`` .. ``sigma_theta_deg``, and the lattice parameters when asked.

    Examples
    --------
    >>> g0 = np.eye(2)
    >>> out = strain_from_lattice(np.diag([1 / 1.01, 1.0])[None], g0)
    >>> out["exx"].round(12), out["eyy"]
    (array([0.01]), array([0.]))
    >>> strain_from_lattice(np.diag([1 / 1.01, 1.0])[None], g0, frame_angle_deg=90)["eyy"]
    array([0.01])
    """
    g = np.asarray(g, float)
    if g.ndim != 3 or g.shape[1:] != (2, 2):
        raise ValueError(f"strain_from_lattice: g must have shape (n, 2, 2), got {g.shape}")
    n = g.shape[0]
    cov = None
    if covariance is not None:
        cov = np.asarray(covariance, float)
        if cov.shape != (n, 4, 4):
            raise ValueError(
                f"strain_from_lattice: covariance must have shape ({n}, 4, 4), got {cov.shape}"
            )
    out = _strain_rows(
        np.ascontiguousarray(g[:, :, 0]),
        np.ascontiguousarray(g[:, :, 1]),
        np.ones(n, dtype=bool),
        g0,
        cov,
        0,
        frame_angle_deg,
        lattice_parameters,
    )
    return {name: row.copy() for name, row in out.items()}


def _strain_rows(g1, g2, valid, g0, cov, offset, frame_angle_deg, lattice_parameters):
    """Run the kernel: a dict of read-only rows (n,) named as ``ROWS``, NaN where invalid.

    ``cov``: (n, m, m) or None, the covariance of (g1x, g1y, g2x, g2y) at ``offset``.
    """
    g0 = np.ascontiguousarray(g0, dtype=float)
    if g0.shape != (2, 2):
        raise ValueError(f"strain_from_lattice: g0 must have shape (2, 2), got {g0.shape}")
    phi = np.deg2rad(float(frame_angle_deg))
    has_cov = cov is not None
    names = ROWS[:8] if has_cov else ROWS[:4]
    if lattice_parameters:
        names += ROWS[8:] if has_cov else ROWS[8:11]
    if not has_cov:
        cov = np.zeros((1, 4, 4))
    out = np.empty((len(names), len(valid)))
    c, s = float(np.cos(phi)), float(np.sin(phi))
    singular = strain_rows(g1, g2, valid, g0, c, s, cov, offset, has_cov, out)
    if singular:
        raise np.linalg.LinAlgError(
            f"strain_from_lattice: {singular} lattice(s) with g1, g2 collinear (singular G)"
        )
    out.flags.writeable = False
    return dict(zip(names, out))


def _strain_from_lattice_numpy(
    g: np.ndarray,
    g0: np.ndarray,
    covariance: np.ndarray | None = None,
    frame_angle_deg: float = 0.0,
    lattice_parameters: bool = False,
) -> dict[str, np.ndarray]:
    """The vectorised numpy version of :func:`strain_from_lattice` (the kernel's reference)."""
    g = np.asarray(g, float)
    g0 = np.asarray(g0, float)
    r = rotation_matrix(np.deg2rad(frame_angle_deg))
    f = deformation_from_g(g, g0)
    comp = _components(f, r)
    out = {
        "exx": comp[:, 0],
        "eyy": comp[:, 1],
        "exy": comp[:, 2],
        "theta_deg": np.rad2deg(comp[:, 3]),
    }
    ht = reciprocal_from_real(g)  # G⁻ᵀ: the map is its own inverse, so A = G⁻ᵀ
    # dF = −G⁻ᵀ dGᵀ F and dA = −G⁻ᵀ dGᵀ G⁻ᵀ, for the 4 unit perturbations: (n, 4, 2, 2)
    dgt = np.swapaxes(_UNIT, -1, -2)
    if covariance is not None:
        df = -np.einsum("nij,kjl,nlm->nkim", ht, dgt, f)
        jac = _linear_components(df, r)  # (n, 4 params, 4 outputs)
        var = np.einsum("nko,nkl,nlo->no", jac, np.asarray(covariance, float), jac)
        sig = np.sqrt(np.clip(var, 0.0, None))
        out.update(
            sigma_exx=sig[:, 0],
            sigma_eyy=sig[:, 1],
            sigma_exy=sig[:, 2],
            sigma_theta_deg=np.rad2deg(sig[:, 3]),
        )
    if lattice_parameters:
        a1, a2 = ht[:, :, 0], ht[:, :, 1]
        la, lb = np.hypot(a1[:, 0], a1[:, 1]), np.hypot(a2[:, 0], a2[:, 1])
        cosg = np.clip(np.einsum("ni,ni->n", a1, a2) / (la * lb), -1.0, 1.0)
        out.update(a=la, b=lb, gamma_deg=np.rad2deg(np.arccos(cosg)))
        if covariance is not None:
            da = -np.einsum("nij,kjl,nlm->nkim", ht, dgt, ht)  # (n, 4, 2, 2)
            ja = np.einsum("nki,ni->nk", da[..., 0], a1) / la[:, None]
            jb = np.einsum("nki,ni->nk", da[..., 1], a2) / lb[:, None]
            cov = np.asarray(covariance, float)
            out["sigma_a"] = np.sqrt(np.clip(np.einsum("nk,nkl,nl->n", ja, cov, ja), 0, None))
            out["sigma_b"] = np.sqrt(np.clip(np.einsum("nk,nkl,nl->n", jb, cov, jb), 0, None))
    return out


def reference_lattice(
    g: np.ndarray, covariance: np.ndarray | None = None, *, statistic: str = "mean"
) -> np.ndarray:
    """Reference reciprocal lattice (2, 2) from the lattices ``g`` (n, 2, 2) of a region.

    ``statistic='mean'``: the mean, weighted by the inverse variance of each component
    when ``covariance`` (n, 4, 4) is given and positive; ``'median'``: the
    component-wise median.

    Examples
    --------
    >>> g = np.stack([np.eye(2), 1.02 * np.eye(2), 1.01 * np.eye(2)])
    >>> reference_lattice(g, statistic="median")
    array([[1.01, 0.  ],
           [0.  , 1.01]])
    """
    g = np.asarray(g, float)
    if g.ndim != 3 or g.shape[0] == 0:
        raise ValueError("reference_lattice: needs at least one valid lattice")
    if statistic == "median":
        return np.median(g, axis=0)
    flat = np.concatenate([g[:, :, 0], g[:, :, 1]], axis=1)  # (g1x, g1y, g2x, g2y)
    if covariance is not None:
        var = np.diagonal(np.asarray(covariance, float), axis1=-2, axis2=-1)
        if np.isfinite(var).all() and (var > 0).all():
            w = 1.0 / var
            mean = (w * flat).sum(axis=0) / w.sum(axis=0)
            return np.stack([mean[0:2], mean[2:4]], axis=-1)
    mean = flat.mean(axis=0)
    return np.stack([mean[0:2], mean[2:4]], axis=-1)


class StrainCalculator(TransformerMixin, Estimator):
    """Strain and rotation maps (with standard errors) from a lattice map and a reference.

    ``fit`` learns the reference reciprocal lattice ``g0_`` (columns g1, g2); ``transform``
    computes, per valid position, the exact F, the strain in axes rotated by
    ``frame_angle_deg``, θ, their standard errors, and in Å⁻¹ the absolute lattice
    parameters (see the module docstring). Invalid positions stay NaN.

    Parameters
    ----------
    reference : None, bool array (Rx, Ry), LatticeMap or float array (2, 2)
        None: the median lattice of the whole scan. A boolean mask: the mean over the valid
        masked positions of the scan given to ``fit``. A ``LatticeMap`` (another scan): the
        mean over its valid positions. A float (2, 2) array: g1, g2 as columns, in the
        lattice map's units and frame.
    weighted : bool
        Weight the reference mean by the inverse variance of each component.
    frame_angle_deg : float
        Rotation of the output axes from the frame's x axis (+x toward +y), degrees.

    Attributes
    ----------
    g0_ : ndarray (2, 2)
        The reference reciprocal lattice, columns g1, g2.
    n_reference_ : int
        Positions averaged (0 for a given array).
    units_ : str or None
        Units of the reference (None for a given array).

    Examples
    --------
    >>> g = np.stack([np.eye(2), np.eye(2) / 1.01]).reshape(2, 1, 2, 2)
    >>> lm = LatticeMap(origin=np.zeros((2, 1, 2)), g1=g[..., 0], g2=g[..., 1],
    ...                 covariance=np.tile(1e-8 * np.eye(6), (2, 1, 1, 1)),
    ...                 residual=np.zeros((2, 1)), n_peaks=np.full((2, 1), 9),
    ...                 mask=np.ones((2, 1), bool), units="A^-1", frame="real")
    >>> ref = np.array([[True], [False]])
    >>> strain = StrainCalculator(reference=ref).fit_transform(lm)
    >>> strain.exx.ravel().round(12), strain.a.ravel().round(6)
    (array([0.  , 0.01]), array([1.  , 1.01]))
    """

    class Params(ParamsModel):
        reference: Any = None
        weighted: bool = True
        frame_angle_deg: float = pydantic.Field(0.0, allow_inf_nan=False)

    def fit(self, X: LatticeMap, y=None) -> StrainCalculator:
        """Learn the reference lattice ``g0_`` (see ``reference``) for the scan ``X``."""
        p = self._validated()
        name = type(self).__name__
        if not isinstance(X, LatticeMap):
            raise ValueError(f"{name}: expected a LatticeMap, got {type(X).__name__}")
        ref = p.reference
        units = X.units
        if ref is None:
            if X.n_valid == 0:
                raise ValueError(f"{name}: the lattice map has no valid position")
            n = X.mask.size  # = reference_lattice(X.g[X.mask], statistic="median")
            g0 = median_lattice(X.g1.reshape(n, 2), X.g2.reshape(n, 2), X.mask.reshape(n))
            n = X.n_valid
        elif isinstance(ref, LatticeMap):
            if ref.n_valid == 0:
                raise ValueError(f"{name}: the reference LatticeMap has no valid position")
            if ref.units != X.units or ref.frame != X.frame:
                raise ValueError(
                    f"{name}: the reference LatticeMap is in units={ref.units!r}, "
                    f"frame={ref.frame!r} but the scan in units={X.units!r}, "
                    f"frame={X.frame!r}; calibrate both the same way"
                )
            g0, n = self._mean(ref, ref.mask, p.weighted), ref.n_valid
        else:
            arr = np.asarray(ref)
            if arr.dtype == bool:
                if arr.shape != tuple(X.scan_shape):
                    raise ValueError(
                        f"{name}: invalid parameter reference: the mask has shape {arr.shape} "
                        f"but the scan has shape {tuple(X.scan_shape)}"
                    )
                use = arr & X.mask
                if not use.any():
                    raise ValueError(
                        f"{name}: invalid parameter reference: the mask selects "
                        f"{int(arr.sum())} position(s), none of them valid in the lattice map"
                    )
                g0, n = self._mean(X, use, p.weighted), int(use.sum())
            elif (
                arr.shape == (2, 2)
                and np.issubdtype(arr.dtype, np.number)
                and np.isfinite(arr).all()
                and abs(np.linalg.det(arr.astype(float))) > 0
            ):
                g0, n, units = arr.astype(float), 0, None
            else:
                raise ValueError(
                    f"{name}: invalid parameter reference={ref!r}: give None, a boolean mask "
                    "of the scan shape, a LatticeMap, or a non-singular float (2, 2) array "
                    "with g1, g2 as columns"
                )
        self.g0_ = np.asarray(g0, float)
        self.n_reference_ = int(n)
        self.units_ = units
        return self

    @staticmethod
    def _mean(lm: LatticeMap, use: np.ndarray, weighted: bool) -> np.ndarray:
        cov = lm.covariance[use][:, _G_SLICE, _G_SLICE] if weighted else None
        return reference_lattice(lm.g[use], cov)

    def transform(self, X: LatticeMap) -> StrainMap:
        """Strain map of the lattice map ``X`` against the reference ``g0_``."""
        self._check_fitted()
        p = self._validated()
        name = type(self).__name__
        if not isinstance(X, LatticeMap):
            raise ValueError(f"{name}: expected a LatticeMap, got {type(X).__name__}")
        if self.units_ is not None and X.units != self.units_:
            raise ValueError(
                f"{name}: the reference is in {self.units_!r} but the lattice map in {X.units!r}"
            )
        mask = X.mask
        n = mask.size
        rows = _strain_rows(  # the kernel reads the map's arrays; NaN where not valid
            X.g1.reshape(n, 2),
            X.g2.reshape(n, 2),
            mask.reshape(n),
            self.g0_,
            X.covariance.reshape(n, 6, 6),
            _G_SLICE.start,
            p.frame_angle_deg,
            X.units == "A^-1",
        )
        fields = {key: row.reshape(mask.shape) for key, row in rows.items()}  # read-only
        return StrainMap(
            mask=mask,
            frame=X.frame,
            frame_angle_deg=p.frame_angle_deg,
            reference_g=self.g0_,
            metadata={"units": X.units},
            **fields,
        )
