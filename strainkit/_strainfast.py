"""The numba kernel of :func:`strainkit.strain.strain_from_lattice`: one pass over positions.

Per position it forms ``H = G⁻ᵀ`` in closed form, ``F = H G0ᵀ``, the strain in the rotated
axes and θ, their standard errors from the 4×4 covariance of (g1x, g1y, g2x, g2y) through
the analytic Jacobian ``dF = −H dGᵀ F`` (for the unit perturbation of ``G[i, j]`` this is the
outer product ``−H[:, j] F[i, :]``), and the lattice parameters of ``A = H`` with their
errors through ``dA = −H dGᵀ H``. The formulas are those of the numpy reference
``strainkit.strain._strain_from_lattice_numpy``; the results agree to rounding.
Results go straight into preallocated rows, NaN where a position is not valid.
"""

from __future__ import annotations

import math

import numba
import numpy as np

ROWS = (
    "exx",
    "eyy",
    "exy",
    "theta_deg",
    "sigma_exx",
    "sigma_eyy",
    "sigma_exy",
    "sigma_theta_deg",
    "a",
    "b",
    "gamma_deg",
    "sigma_a",
    "sigma_b",
)
_DEG = 180.0 / math.pi  # as np.rad2deg
# (i, j) of G[i, j] for the parameters (g1x, g1y, g2x, g2y): g1, g2 are G's columns
_PARAM_I = (0, 1, 0, 1)
_PARAM_J = (0, 0, 1, 1)


@numba.njit(cache=True, error_model="numpy", inline="always")
def _quad(j0, j1, j2, j3, cov, p, o):
    """``jᵀ C j`` for the 4×4 block of ``cov[p]`` starting at ``o``, clipped at 0."""
    v = 0.0
    for k in range(4):
        jk = j0 if k == 0 else (j1 if k == 1 else (j2 if k == 2 else j3))
        row = j0 * cov[p, o + k, o] + j1 * cov[p, o + k, o + 1]
        row += j2 * cov[p, o + k, o + 2] + j3 * cov[p, o + k, o + 3]
        v += jk * row
    return math.sqrt(np.maximum(v, 0.0))  # NaN stays NaN, as np.clip


@numba.njit(cache=True, parallel=True, error_model="numpy")
def strain_rows(g1, g2, valid, g0, phi_c, phi_s, cov, offset, has_cov, out):
    """Fill ``out`` (rows as :data:`ROWS`, as many as it has) for every position.

    ``g1``, ``g2``: (n, 2); ``valid``: (n,) bool; ``g0``: (2, 2) reference, columns g1,
    g2; ``phi_c``, ``phi_s``: cos and sin of the frame angle; ``cov``: (n, m, m) whose
    block at ``offset`` is the covariance of (g1x, g1y, g2x, g2y), unused unless
    ``has_cov`` (without it ``out`` has no sigma rows: the 3 lattice rows, if any,
    follow the 4 strain rows). Returns the number of valid positions whose G is
    singular (their rows are left non-finite).

    Examples
    --------
    >>> g1, g2 = np.array([[1 / 1.01, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])
    >>> out = np.empty((4, 2))
    >>> strain_rows(g1, g2, np.array([True, False]), np.eye(2), 1.0, 0.0,
    ...             np.zeros((1, 4, 4)), 0, False, out)
    0
    >>> out.round(12)
    array([[0.01,  nan],
           [0.  ,  nan],
           [0.  ,  nan],
           [0.  ,  nan]])
    """
    n = g1.shape[0]
    n_rows = out.shape[0]
    first_lat = 8 if has_cov else 4
    lattice = n_rows > first_lat
    c, s = phi_c, phi_s
    cc, ss, cs = c * c, s * s, c * s
    q00, q01, q10, q11 = g0[0, 0], g0[0, 1], g0[1, 0], g0[1, 1]
    singular = 0
    for p in numba.prange(n):
        if not valid[p]:
            for r in range(n_rows):
                out[r, p] = np.nan
            continue
        a, b = g1[p, 0], g1[p, 1]  # G = [[a, cx], [b, d]]: columns g1 = (a, b), g2
        cx, d = g2[p, 0], g2[p, 1]
        det = a * d - cx * b
        if det == 0.0:
            singular += 1
        # H = G⁻ᵀ = [[d, -b], [-cx, a]] / det
        h00, h01, h10, h11 = d / det, -b / det, -cx / det, a / det
        # F = H G0ᵀ
        f00 = h00 * q00 + h01 * q01
        f01 = h00 * q10 + h01 * q11
        f10 = h10 * q00 + h11 * q01
        f11 = h10 * q10 + h11 * q11
        e00, e11 = f00 - 1.0, f11 - 1.0
        e01 = 0.5 * (f01 + f10)
        out[0, p] = cc * e00 + 2.0 * cs * e01 + ss * e11
        out[1, p] = ss * e00 - 2.0 * cs * e01 + cc * e11
        out[2, p] = -cs * e00 + (cc - ss) * e01 + cs * e11
        out[3, p] = 0.5 * (f10 - f01) * _DEG
        if has_cov:
            # dF for G[i, j] += 1: -H[:, j] F[i, :]; the four outputs of each, linear
            jx0 = jx1 = jx2 = jx3 = 0.0  # d exx' / d param
            jy0 = jy1 = jy2 = jy3 = 0.0
            jz0 = jz1 = jz2 = jz3 = 0.0  # d exy'
            jt0 = jt1 = jt2 = jt3 = 0.0  # d theta
            for k in range(4):
                i, j = _PARAM_I[k], _PARAM_J[k]
                hj0 = h00 if j == 0 else h01
                hj1 = h10 if j == 0 else h11
                fi0 = f00 if i == 0 else f10
                fi1 = f01 if i == 0 else f11
                d00, d01, d10, d11 = -hj0 * fi0, -hj0 * fi1, -hj1 * fi0, -hj1 * fi1
                s01 = 0.5 * (d01 + d10)
                vx = cc * d00 + 2.0 * cs * s01 + ss * d11
                vy = ss * d00 - 2.0 * cs * s01 + cc * d11
                vz = -cs * d00 + (cc - ss) * s01 + cs * d11
                vt = 0.5 * (d10 - d01)
                if k == 0:
                    jx0, jy0, jz0, jt0 = vx, vy, vz, vt
                elif k == 1:
                    jx1, jy1, jz1, jt1 = vx, vy, vz, vt
                elif k == 2:
                    jx2, jy2, jz2, jt2 = vx, vy, vz, vt
                else:
                    jx3, jy3, jz3, jt3 = vx, vy, vz, vt
            out[4, p] = _quad(jx0, jx1, jx2, jx3, cov, p, offset)
            out[5, p] = _quad(jy0, jy1, jy2, jy3, cov, p, offset)
            out[6, p] = _quad(jz0, jz1, jz2, jz3, cov, p, offset)
            out[7, p] = _quad(jt0, jt1, jt2, jt3, cov, p, offset) * _DEG
        if lattice:
            # A = H: a1 = H[:, 0], a2 = H[:, 1]
            la, lb = math.hypot(h00, h10), math.hypot(h01, h11)
            cosg = (h00 * h01 + h10 * h11) / (la * lb)
            cosg = min(max(cosg, -1.0), 1.0)
            out[first_lat, p] = la
            out[first_lat + 1, p] = lb
            out[first_lat + 2, p] = math.acos(cosg) * _DEG
            if has_cov:
                # dA for G[i, j] += 1: -H[:, j] H[i, :]; d|a1| = dA[:, 0]·a1 / |a1|
                # = -(H[:, j]·a1) H[i, 0] / |a1|
                p1 = (h00 * h00 + h10 * h10, h00 * h01 + h10 * h11)  # H[:, j]·a1
                p2 = (h01 * h00 + h11 * h10, h01 * h01 + h11 * h11)  # H[:, j]·a2
                ja0 = -p1[0] * h00 / la
                ja1 = -p1[0] * h10 / la
                ja2 = -p1[1] * h00 / la
                ja3 = -p1[1] * h10 / la
                jb0 = -p2[0] * h01 / lb
                jb1 = -p2[0] * h11 / lb
                jb2 = -p2[1] * h01 / lb
                jb3 = -p2[1] * h11 / lb
                out[first_lat + 3, p] = _quad(ja0, ja1, ja2, ja3, cov, p, offset)
                out[first_lat + 4, p] = _quad(jb0, jb1, jb2, jb3, cov, p, offset)
    return singular


@numba.njit(cache=True, parallel=True, error_model="numpy")
def median_lattice(g1, g2, valid):
    """The component-wise median (2, 2) of the valid lattices, as ``np.median(g, axis=0)``.

    ``g1``, ``g2``: (n, 2); ``valid``: (n,) bool with at least one True.

    Examples
    --------
    >>> g1 = np.array([[1.0, 0.0], [2.0, 0.1], [4.0, 0.2]])
    >>> median_lattice(g1, g1[:, ::-1], np.array([True, True, False]))
    array([[1.5 , 0.05],
           [0.05, 1.5 ]])
    """
    n = len(valid)
    idx = np.empty(n, np.int64)
    m = 0
    for p in range(n):
        idx[m] = p
        m += valid[p]
    out = np.empty(4)  # g1x, g1y, g2x, g2y
    for comp in numba.prange(4):
        src = g1 if comp < 2 else g2
        col = comp % 2
        vals = np.empty(m)
        for i in range(m):
            vals[i] = src[idx[i], col]
        out[comp] = np.median(vals)
    g0 = np.empty((2, 2))
    g0[0, 0], g0[1, 0], g0[0, 1], g0[1, 1] = out[0], out[1], out[2], out[3]
    return g0
