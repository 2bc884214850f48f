"""The numba kernel of the per-position lattice fit (see :func:`strainkit.lattice.fit_lattice`).

Each position's peaks are a contiguous run of the CSR table; positions run in parallel.
The steps are those of the vectorised numpy version, which stays as the reference:
index against the starting lattice, fit, index again against the position's own fit,
then Huber IRLS and a final fit.
"""

from __future__ import annotations

import math

import numba
import numpy as np

HUBER_C = 2.45  # 95th percentile of |(x, y)| for x, y ~ N(0, 1)
RAYLEIGH_MEDIAN = 1.1774  # median of |(x, y)| for x, y ~ N(0, 1)


@numba.njit(cache=True, inline="always")
def _index(qx, qy, o, g, tolerance, h, k, okidx):
    det = g[0, 0] * g[1, 1] - g[0, 1] * g[1, 0]
    i00, i01, i10, i11 = g[1, 1] / det, -g[0, 1] / det, -g[1, 0] / det, g[0, 0] / det
    glen = min(math.hypot(g[0, 0], g[1, 0]), math.hypot(g[0, 1], g[1, 1]))
    for n in range(len(qx)):
        rx, ry = qx[n] - o[0], qy[n] - o[1]
        hh = np.round(i00 * rx + i01 * ry)
        kk = np.round(i10 * rx + i11 * ry)
        dx = rx - (g[0, 0] * hh + g[0, 1] * kk)
        dy = ry - (g[1, 0] * hh + g[1, 1] * kk)
        h[n], k[n] = hh, kk
        okidx[n] = math.hypot(dx, dy) <= tolerance * glen


@numba.njit(cache=True)
def _solve(qx, qy, h, k, w, params, minv):
    """Weighted least squares of q = o + h g1 + k g2; False when ill conditioned."""
    m = np.zeros((3, 3))
    rx = np.zeros(3)
    ry = np.zeros(3)
    for n in range(len(qx)):
        b1, b2 = h[n], k[n]
        wn = w[n]
        m[0, 0] += wn
        m[0, 1] += wn * b1
        m[0, 2] += wn * b2
        m[1, 1] += wn * b1 * b1
        m[1, 2] += wn * b1 * b2
        m[2, 2] += wn * b2 * b2
        rx[0] += wn * qx[n]
        rx[1] += wn * b1 * qx[n]
        rx[2] += wn * b2 * qx[n]
        ry[0] += wn * qy[n]
        ry[1] += wn * b1 * qy[n]
        ry[2] += wn * b2 * qy[n]
    m[1, 0], m[2, 0], m[2, 1] = m[0, 1], m[0, 2], m[1, 2]
    # symmetric positive semi-definite: λmin/λmax >= det / trace³, so this refuses every
    # system the reference's singular-value test refuses (and a sliver more)
    c00 = m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]
    c01 = m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]
    c02 = m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]
    det = m[0, 0] * c00 + m[0, 1] * c01 + m[0, 2] * c02
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if not (math.isfinite(det) and det > 1e-10 * trace * trace * trace):
        return False
    inv = minv
    inv[0, 0], inv[1, 0], inv[2, 0] = c00 / det, c01 / det, c02 / det
    inv[0, 1] = (m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]) / det
    inv[1, 1] = (m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]) / det
    inv[2, 1] = (m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]) / det
    inv[0, 2] = (m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]) / det
    inv[1, 2] = (m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]) / det
    inv[2, 2] = (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) / det
    px = inv @ rx
    py = inv @ ry
    params[0], params[1] = px[0], py[0]
    params[2], params[3] = px[1], py[1]
    params[4], params[5] = px[2], py[2]
    return True


@numba.njit(cache=True, parallel=True)
def fit_segments(
    qx,
    qy,
    w0,
    starts,
    counts,
    origin,
    g,
    tolerance,
    robust,
    n_iter,
    params,
    minv,
    n_peaks,
    wss,
    rss,
    ok,
):
    """Fit every position; outputs are written in place (NaN/False where it fails)."""
    for p in numba.prange(len(starts)):
        s, c = starts[p], counts[p]
        ok[p] = False
        params[p] = np.nan
        n_peaks[p] = 0
        if c == 0:
            continue
        x, y, w0p = qx[s : s + c], qy[s : s + c], w0[s : s + c]
        h = np.empty(c)
        k = np.empty(c)
        okidx = np.empty(c, np.bool_)
        w = np.empty(c)
        _index(x, y, origin[p], g[p], tolerance, h, k, okidx)
        for n in range(c):
            w[n] = w0p[n] * okidx[n]
        first = np.empty(6)
        mi = np.empty((3, 3))
        if _solve(x, y, h, k, w, first, mi) and np.isfinite(first).all():
            own_o = np.array([first[0], first[1]])
            own_g = np.array([[first[2], first[4]], [first[3], first[5]]])
            _index(x, y, own_o, own_g, tolerance, h, k, okidx)
        else:
            _index(x, y, origin[p], g[p], tolerance, h, k, okidx)
        count = 0
        for n in range(c):
            w[n] = w0p[n] * okidx[n]
            count += okidx[n]
        n_peaks[p] = count
        rw = np.ones(c)
        u = np.empty(c)
        good = True
        for _ in range(n_iter if robust else 0):
            for n in range(c):
                u[n] = w[n] * rw[n]
            cur = np.zeros(6)
            solved = _solve(x, y, h, k, u, cur, mi)
            if not solved:
                cur[:] = 0.0  # as the reference: residuals of a failed fit use zeros
            sel = np.empty(count)
            j = 0
            for n in range(c):
                rx = x[n] - (cur[0] + h[n] * cur[2] + k[n] * cur[4])
                ry = y[n] - (cur[1] + h[n] * cur[3] + k[n] * cur[5])
                u[n] = math.sqrt(w[n]) * math.hypot(rx, ry)
                if okidx[n]:
                    sel[j] = u[n]
                    j += 1
            scale = np.nan
            if count > 0:
                srt = np.sort(sel)
                scale = 0.5 * (srt[(count - 1) // 2] + srt[count // 2]) / RAYLEIGH_MEDIAN
            tiny = 2.2250738585072014e-308
            for n in range(c):
                z = u[n] / max(scale, tiny) if (np.isfinite(scale) and scale > tiny) else 0.0
                rw[n] = min(1.0, HUBER_C / max(z, tiny))
        for n in range(c):
            u[n] = w[n] * rw[n]
        good = _solve(x, y, h, k, u, params[p], minv[p])
        if not good:
            params[p] = np.nan
            continue
        ok[p] = True
        a = 0.0
        b = 0.0
        q = params[p]
        for n in range(c):
            rx = x[n] - (q[0] + h[n] * q[2] + k[n] * q[4])
            ry = y[n] - (q[1] + h[n] * q[3] + k[n] * q[5])
            r2 = rx * rx + ry * ry
            a += u[n] * r2
            if okidx[n]:
                b += r2
        wss[p] = a
        rss[p] = b
