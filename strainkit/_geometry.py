"""The coordinate conventions of strainkit, written once as small array functions.

Every module that turns vectors between frames imports these, so the simulator
(which defines the truth) and the calibrators (which measure it) cannot drift apart.

Conventions (see DESIGN.md):

* x is array axis 0 (rows), y is axis 1 (columns), in real and diffraction space.
* ``rotation_matrix(phi)`` = [[cos, -sin], [sin, cos]] acting on column vectors (x, y):
  a positive angle turns +x toward +y.
* A real-space vector ``v_R`` appears on the ellipse-corrected detector as
  ``v_Q = R(phi) @ P @ v_R`` with ``P`` the x<->y swap when ``flip`` is True.
* The elliptical distortion has semi-axes ``a >= b`` with the major axis at ``angle``
  from +Qx toward +Qy; its correction maps the ellipse onto the circle of radius ``b``
  (the minor axis is kept).
* With ``A = F @ A0`` (columns are real-space lattice vectors), reciprocal lattices obey
  ``G = inv(F).T @ G0``; strain is ``(F + F.T)/2 - I`` and rotation ``(F[1,0] - F[0,1])/2``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "deformation_from_g",
    "deformation_from_strain",
    "distortion_matrix",
    "flip_matrix",
    "reciprocal_from_real",
    "rotation_matrix",
    "strain_from_deformation",
]

_SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])


def rotation_matrix(phi_rad: float | np.ndarray) -> np.ndarray:
    """Rotation turning +x toward +y by ``phi_rad``; broadcasts to shape (..., 2, 2).

    Examples
    --------
    >>> rotation_matrix(np.pi / 2) @ [1.0, 0.0]
    array([6.123...e-17, 1.000...e+00])
    """
    phi = np.asarray(phi_rad, dtype=float)
    c, s = np.cos(phi), np.sin(phi)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def flip_matrix(flip: bool) -> np.ndarray:
    """The x<->y swap when ``flip`` is True, else the identity.

    Examples
    --------
    >>> flip_matrix(True) @ [1.0, 2.0]
    array([2., 1.])
    """
    return _SWAP.copy() if flip else np.eye(2)


def distortion_matrix(a: float, b: float, angle_deg: float) -> np.ndarray:
    """Linear map taking the corrected (circular) frame to the distorted detector frame.

    The circle of radius ``b`` becomes the ellipse with semi-axes ``a`` (at ``angle_deg``
    from +x toward +y) and ``b``. Its inverse is the ellipse correction.

    Examples
    --------
    >>> D = distortion_matrix(1.1, 1.0, 0.0)
    >>> D @ [1.0, 1.0]
    array([1.1, 1. ])
    """
    r = rotation_matrix(np.deg2rad(angle_deg))
    return r @ np.diag([a / b, 1.0]) @ r.T


def reciprocal_from_real(a_real: np.ndarray) -> np.ndarray:
    """Reciprocal lattice (columns g1, g2; no factor 2π) of real lattice columns.

    Broadcasts over leading axes.

    Examples
    --------
    >>> reciprocal_from_real(np.diag([2.0, 4.0]))
    array([[0.5 , 0.  ],
           [0.  , 0.25]])
    """
    return np.swapaxes(np.linalg.inv(a_real), -1, -2)


def deformation_from_g(g: np.ndarray, g0: np.ndarray) -> np.ndarray:
    """Exact deformation gradient F from local reciprocal lattice ``g`` and reference ``g0``.

    ``g`` and ``g0`` hold g1, g2 as columns, shape (..., 2, 2). From ``G = F^-T G0``
    follows ``F = G^-T G0^T``.

    Examples
    --------
    >>> g0 = np.eye(2)
    >>> deformation_from_g(g0 / 1.01, g0)
    array([[1.01, 0.  ],
           [0.  , 1.01]])
    """
    return np.swapaxes(np.linalg.inv(g), -1, -2) @ np.swapaxes(g0, -1, -2)


def strain_from_deformation(f: np.ndarray) -> tuple[np.ndarray, ...]:
    """(exx, eyy, exy, theta_rad) of deformation gradients of shape (..., 2, 2).

    ``exy`` is the tensor component (half the engineering shear); tension is positive.

    Examples
    --------
    >>> strain_from_deformation(np.array([[1.02, 0.0], [0.0, 0.99]]))
    (np.float64(0.02...), np.float64(-0.01...), np.float64(0.0), np.float64(0.0))
    """
    exx = f[..., 0, 0] - 1.0
    eyy = f[..., 1, 1] - 1.0
    exy = 0.5 * (f[..., 0, 1] + f[..., 1, 0])
    theta = 0.5 * (f[..., 1, 0] - f[..., 0, 1])
    return exx, eyy, exy, theta


def deformation_from_strain(exx, eyy, exy, theta_rad) -> np.ndarray:
    """The deformation gradient whose strain and rotation (as defined above) are given.

    Exact inverse of :func:`strain_from_deformation`: ``F = I + eps + [[0, -t], [t, 0]]``.

    Examples
    --------
    >>> deformation_from_strain(0.01, 0.0, 0.0, 0.0)
    array([[1.01, 0.  ],
           [0.  , 1.  ]])
    """
    exx, eyy, exy, t = np.broadcast_arrays(
        *(np.asarray(v, float) for v in (exx, eyy, exy, theta_rad))
    )
    f = np.empty(exx.shape + (2, 2))
    f[..., 0, 0] = 1.0 + exx
    f[..., 1, 1] = 1.0 + eyy
    f[..., 0, 1] = exy - t
    f[..., 1, 0] = exy + t
    return f
