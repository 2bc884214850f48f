"""The numba kernel of the per-position lattice fit (see :func:`strainkit.lattice.fit_lattice`).

Each position's peaks are a contiguous run of the CSR table; blocks of positions run in
parallel. The steps are those of the vectorised numpy version, which stays as the
reference (``_fit_lattice_numpy``): index against the starting lattice, fit, index again
against the position's own fit, Huber IRLS, a final fit, then the covariance
``s² (AᵀWA)⁻¹`` (the scan's median ``s²`` where a position has too few degrees of freedom).

Nothing is allocated per position: the 3×3 normal equations (x and y share the design)
are twelve scalar sums solved in closed form, and each block of positions allocates its
scratch (indices, weights, u² of one position) once. The loops over a position's peaks
vectorise: they index slices from 0 (no negative-index wraparound, which would turn the
loads into gathers) and ``fastmath`` allows reassociating the sums (``reassoc`` and
``contract`` only: NaN and inf behave as in the reference). The results equal the
reference's to rounding.

The median of the standardised residuals u (the IRLS scale) is selected on u² = w |r|²
(sqrt is monotonic), by walking value by value (integer keys: the bits of non-negative
doubles are in their order) from a guess: for the first iteration from the nearer of the
thresholds around the previous position's median that enclose the middle; later from the
last iteration's median, where the count below it and its nearest neighbours usually give
the median at once. Anything unusual (NaN, a negative weight, no usable guess, a long
walk) falls back to a full selection with the reference's NaN order.
"""

from __future__ import annotations

import math

import numba
import numpy as np

HUBER_C = 2.45  # 95th percentile of |(x, y)| for x, y ~ N(0, 1)
RAYLEIGH_MEDIAN = 1.1774  # median of |(x, y)| for x, y ~ N(0, 1)
MIN_DOF_OWN_SCALE = 10  # fewer degrees of freedom: use the scan's median scale
_TINY = 2.2250738585072014e-308  # np.finfo(float).tiny
_FASTMATH = {"reassoc", "contract"}  # sums may vectorise; NaN/inf semantics are kept
_BLOCK = 64  # positions per parallel work item (their scratch is allocated once)
_BIG = np.iinfo(np.int64).max
_MAX_STEPS = 6  # a median this many distinct values from its guess: full selection
_STEP = 1.25  # ratio of the thresholds around the first guess of the median u²


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _solve3(m00, m01, m02, m11, m12, m22, bx0, bx1, bx2, by0, by1, by2):
    """Closed-form solution of the 3×3 normal equations (shared by x and y).

    Returns ``(ok, ox, oy, g1x, g1y, g2x, g2y, i00, i01, i02, i11, i12, i22)`` with the
    symmetric inverse ``i``; ``ok`` is False when the system is ill conditioned: for a
    symmetric positive semi-definite matrix λmin/λmax >= det / trace³, so this refuses
    every system the reference's singular-value test refuses (and a sliver more).
    """
    c00 = m11 * m22 - m12 * m12
    c01 = m12 * m02 - m01 * m22
    c02 = m01 * m12 - m11 * m02
    det = m00 * c00 + m01 * c01 + m02 * c02
    trace = m00 + m11 + m22
    if not (math.isfinite(det) and det > 1e-10 * trace * trace * trace):
        z = 0.0
        return False, z, z, z, z, z, z, z, z, z, z, z, z
    c11 = m00 * m22 - m02 * m02
    c12 = m02 * m01 - m00 * m12
    c22 = m00 * m11 - m01 * m01
    d = 1.0 / det
    i00, i01, i02 = c00 * d, c01 * d, c02 * d
    i11, i12, i22 = c11 * d, c12 * d, c22 * d
    return (
        True,
        i00 * bx0 + i01 * bx1 + i02 * bx2,
        i00 * by0 + i01 * by1 + i02 * by2,
        i01 * bx0 + i11 * bx1 + i12 * bx2,
        i01 * by0 + i11 * by1 + i12 * by2,
        i02 * bx0 + i12 * bx1 + i22 * bx2,
        i02 * by0 + i12 * by1 + i22 * by2,
        i00,
        i01,
        i02,
        i11,
        i12,
        i22,
    )


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _weighted_fit(qx, qy, hs, ks, w, c):
    """Weighted least squares of ``q = o + h g1 + k g2`` over the first ``c`` peaks.

    Accumulates the 3×3 normal equations (shared by x and y) and solves them with
    :func:`_solve3`, whose tuple it returns.
    """
    m00 = m01 = m02 = m11 = m12 = m22 = 0.0
    bx0 = bx1 = bx2 = by0 = by1 = by2 = 0.0
    for n in range(c):
        x, y, h, k, wn = qx[n], qy[n], hs[n], ks[n], w[n]
        wh, wk = wn * h, wn * k
        m00 += wn
        m01 += wh
        m02 += wk
        m11 += wh * h
        m12 += wh * k
        m22 += wk * k
        bx0 += wn * x
        bx1 += wh * x
        bx2 += wk * x
        by0 += wn * y
        by1 += wh * y
        by2 += wk * y
    return _solve3(m00, m01, m02, m11, m12, m22, bx0, bx1, bx2, by0, by1, by2)


@numba.njit(cache=True, error_model="numpy")
def _indexer(gxx, gyx, gxy, gyy, tolerance):
    """The inverse of the lattice (columns g1, g2) and the squared indexing distance."""
    d = 1.0 / (gxx * gyy - gxy * gyx)
    lim = tolerance * math.sqrt(min(gxx * gxx + gyx * gyx, gxy * gxy + gyy * gyy))
    return gyy * d, -gxy * d, -gyx * d, gxx * d, lim * lim


@numba.njit(cache=True, error_model="numpy")
def _index(rx, ry, a00, a01, a10, a11, gxx, gyx, gxy, gyy):
    """Nearest (h, k) of the offset (rx, ry) from the origin, and its squared distance
    to h g1 + k g2 (``a..`` the lattice's inverse, from :func:`_indexer`)."""
    h = np.rint(a00 * rx + a01 * ry)
    k = np.rint(a10 * rx + a11 * ry)
    dx = rx - (gxx * h + gxy * k)
    dy = ry - (gyx * h + gyy * k)
    return h, k, dx * dx + dy * dy


@numba.njit(cache=True, error_model="numpy")
def _finite6(a, b, c, d, e, f):
    return (
        math.isfinite(a)
        and math.isfinite(b)
        and math.isfinite(c)
        and math.isfinite(d)
        and math.isfinite(e)
        and math.isfinite(f)
    )


@numba.njit(cache=True, error_model="numpy")
def _select(a, n, k):
    """The k-th smallest of ``a[:n]`` (Wirth's selection; reorders ``a[:n]``)."""
    lo, hi = 0, n - 1
    while lo < hi:
        x = a[k]
        i, j = lo, hi
        while True:
            while a[i] < x:
                i += 1
            while x < a[j]:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
            if i > j:
                break
        if j < k:
            lo = i
        if k < i:
            hi = j
    return a[k]


@numba.njit(cache=True, error_model="numpy")
def _sort_small(a, n):
    """Insertion sort of ``a[:n]``, NaN last (as ``np.sort``)."""
    for i in range(1, n):
        v = a[i]
        j = i - 1
        if v != v:  # NaN stays where it is: after every number
            continue
        while j >= 0 and not (a[j] <= v):
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@numba.njit(cache=True, error_model="numpy")
def _min_above(keys, oks, c, lo):
    """The smallest indexed key >= ``lo`` (``_BIG`` if none); vectorises."""
    m = _BIG
    for n in range(c):
        kk = keys[n]
        m = min(m, kk if oks[n] & (kk >= lo) else _BIG)
    return m


@numba.njit(cache=True, error_model="numpy")
def _max_below(keys, oks, c, hi):
    """The largest indexed key < ``hi`` (-1 if none); vectorises."""
    m = -1
    for n in range(c):
        kk = keys[n]
        m = max(m, kk if oks[n] & (kk < hi) else -1)
    return m


@numba.njit(cache=True, error_model="numpy")
def _count_equal(keys, oks, c, key):
    e = 0
    for n in range(c):
        e += oks[n] & (keys[n] == key)
    return e


@numba.njit(cache=True, error_model="numpy")
def _walk(keys, oks, c, k1, k2, nb, pk):
    """The k1-th and k2-th smallest indexed keys, from ``nb`` of them below ``pk``.

    The keys are the bits of non-negative doubles (NaN last), so integer order is their
    order. Walks value by value from the pivot ``pk``: cheap when it is near the middle;
    gives up (False) after a few steps.
    """
    if nb <= k1:  # up from pk
        r = k1 - nb
        lo = pk
        for _ in range(_MAX_STEPS):
            m = _min_above(keys, oks, c, lo)
            e = _count_equal(keys, oks, c, m)
            if r < e:
                if k2 == k1 or r + 1 < e:
                    return m, m, True
                return m, _min_above(keys, oks, c, m + 1), True
            r -= e
            lo = m + 1
        return 0, 0, False
    r = nb - 1 - k1  # down from pk: r values above the k1-th are below pk
    hi = pk
    for _ in range(_MAX_STEPS):
        m = _max_below(keys, oks, c, hi)
        e = _count_equal(keys, oks, c, m)
        if r < e:
            if k2 == k1 or r > 0:
                return m, m, True
            return m, _min_above(keys, oks, c, m + 1), True
        r -= e
        hi = m
    return 0, 0, False


@numba.njit(cache=True, error_model="numpy")
def _median_u(us, oks, c, count, plain, tmp):
    """Median of u = sqrt(u²) over the indexed ``us`` (u²), as ``np.median``, NaN last."""
    k1, k2 = (count - 1) // 2, count // 2
    j = 0
    for n in range(c):
        tmp[j] = us[n]
        j += oks[n]
    if plain:  # non-negative numbers: select on u² (sqrt is monotonic)
        a = _select(tmp, count, k1)
        b = a
        if k2 > k1:
            b = tmp[k1 + 1]
            for i in range(k1 + 2, count):  # after the selection a[k1+1:] >= a[k1]
                b = min(b, tmp[i])
        return 0.5 * (math.sqrt(a) + math.sqrt(b)), a
    for i in range(count):
        tmp[i] = math.sqrt(tmp[i])  # NaN for a negative weight, as the reference
    _sort_small(tmp, count)
    return 0.5 * (tmp[k1] + tmp[k2]), np.nan


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _fit_position(
    qx, qy, w0, s, c, o, g, tolerance, robust, n_iter, hs, ks, ws, oks, us, keys, ue, tmp,
    out_p, out_i, guess,
):  # fmt: skip
    """Fit one position; returns (ok, n_indexed, wss, rss); params in out_p, inverse in out_i.

    ``guess[0]`` is the median u² of the previous position's first IRLS iteration (this
    position's replaces it).
    """
    # slices, so that the loops index from 0 and vectorise (no negative-index wraparound)
    qx, qy, w0 = qx[s : s + c], qy[s : s + c], w0[s : s + c]
    # ---- index against the starting lattice and fit (one pass, no storage)
    ox, oy = o[0], o[1]
    gxx, gyx, gxy, gyy = g[0, 0], g[1, 0], g[0, 1], g[1, 1]
    a00, a01, a10, a11, lim2 = _indexer(gxx, gyx, gxy, gyy, tolerance)
    for n in range(c):
        h, k, d2 = _index(qx[n] - ox, qy[n] - oy, a00, a01, a10, a11, gxx, gyx, gxy, gyy)
        hs[n], ks[n], ws[n] = h, k, w0[n] * (d2 <= lim2)
    r = _weighted_fit(qx, qy, hs, ks, ws, c)
    if r[0] and _finite6(r[1], r[2], r[3], r[4], r[5], r[6]):
        # index again against the position's own lattice
        ox, oy, gxx, gyx, gxy, gyy = r[1], r[2], r[3], r[4], r[5], r[6]
        a00, a01, a10, a11, lim2 = _indexer(gxx, gyx, gxy, gyy, tolerance)
    # ---- index (again): h, k and the weights; sums of the first (unweighted) IRLS fit
    count = 0
    for n in range(c):
        h, k, d2 = _index(qx[n] - ox, qy[n] - oy, a00, a01, a10, a11, gxx, gyx, gxy, gyy)
        good = d2 <= lim2
        w = w0[n] * good
        hs[n], ks[n], ws[n], oks[n], ue[n] = h, k, w, good, w
        count += good
    r = _weighted_fit(qx, qy, hs, ks, ue, c)
    # ---- Huber IRLS: the scale is the median standardised residual distance u
    k1, k2 = (count - 1) // 2, count // 2
    pivot = guess[0]  # the median u² of the previous position's first iteration
    for it in range(n_iter if robust else 0):
        # as the reference: the residuals of a failed fit use zeros
        c0, c1, c2, c3, c4, c5 = r[1], r[2], r[3], r[4], r[5], r[6]
        # u² = w |r|² (+ 0.0: no -0.0), and where the median of the indexed u² lies
        # relative to a guess, the pivot (sqrt is monotonic: select on u²)
        odd = 0  # indexed peaks of negative weight or NaN u²: the reference's way
        found = False
        if it == 0:
            # the guess is the previous position's: count below 7 thresholds around it
            t3 = pivot
            t4, t2 = t3 * _STEP, t3 / _STEP
            t5, t1 = t4 * _STEP, t2 / _STEP
            t6, t0 = t5 * _STEP, t1 / _STEP
            n0 = n1 = n2 = n3 = n4 = n5 = n6 = 0
            for n in range(c):
                rx = qx[n] - (c0 + hs[n] * c2 + ks[n] * c4)
                ry = qy[n] - (c1 + hs[n] * c3 + ks[n] * c5)
                v = ws[n] * (rx * rx + ry * ry) + 0.0
                us[n] = v
                o = oks[n]
                n0 += o & (v < t0)
                n1 += o & (v < t1)
                n2 += o & (v < t2)
                n3 += o & (v < t3)
                n4 += o & (v < t4)
                n5 += o & (v < t5)
                n6 += o & (v < t6)
                odd += o & ((ws[n] < 0.0) | (v != v))
            if count > 0 and odd == 0 and pivot > 0.0 and pivot < np.inf:
                # the nearest thresholds below and above the middle, and a walk from the
                # nearer one (integer keys: the bits of non-negative doubles, in order)
                lo, nlo, hi, nhi, bounded = -1.0, 0, np.inf, count, False
                for t, m in ((t0, n0), (t1, n1), (t2, n2), (t3, n3), (t4, n4), (t5, n5), (t6, n6)):
                    if m <= k1:
                        lo, nlo = t, m
                    elif m > k2 and not bounded:
                        hi, nhi, bounded = t, m, True
                if lo >= 0.0 and (k1 - nlo <= nhi - 1 - k2 or not bounded):
                    ka, kb, found = _walk(keys, oks, c, k1, k2, nlo, np.float64(lo).view(np.int64))
                else:
                    ka, kb, found = _walk(keys, oks, c, k1, k2, nhi, np.float64(hi).view(np.int64))
                a = np.int64(ka).view(np.float64)
                b = np.int64(kb).view(np.float64)
        else:
            # the guess is the last median: count those below and find the nearest on
            # either side (as integer keys, the bits of non-negative doubles, in order):
            # that is the median unless the order changed near it
            pk = np.float64(pivot).view(np.int64)
            nb = 0
            up = _BIG  # the smallest key >= pk
            dn = -1  # the largest key < pk
            for n in range(c):
                rx = qx[n] - (c0 + hs[n] * c2 + ks[n] * c4)
                ry = qy[n] - (c1 + hs[n] * c3 + ks[n] * c5)
                v = ws[n] * (rx * rx + ry * ry) + 0.0
                us[n] = v
                kv = np.float64(v).view(np.int64)
                o = oks[n]
                below = o & (kv < pk)
                nb += below
                up = min(up, kv if o & (kv >= pk) else _BIG)
                dn = max(dn, kv if below else -1)
                odd += o & ((ws[n] < 0.0) | (v != v))
            if count > 0 and odd == 0 and pivot > 0.0 and pivot < np.inf:
                if nb == k1 and k2 == k1:
                    ka, kb, found = up, up, True
                elif nb == k1 + 1:
                    ka, kb, found = dn, (dn if k2 == k1 else up), True
                else:
                    ka, kb, found = _walk(keys, oks, c, k1, k2, nb, pk)
                a = np.int64(ka).view(np.float64)
                b = np.int64(kb).view(np.float64)
        scale = np.nan
        if count > 0:
            if found:
                med = 0.5 * (math.sqrt(a) + math.sqrt(b))
            else:
                med, a = _median_u(us, oks, c, count, odd == 0, tmp)
            scale = med / RAYLEIGH_MEDIAN
            if it == 0:
                guess[0] = a
            pivot = a
        # Huber weights min(1, c / z), z = u / scale (0 without a usable scale); the
        # operands' order keeps a NaN as np.minimum/np.maximum do
        use = math.isfinite(scale) and scale > _TINY
        inv_scale = 1.0 / max(scale, _TINY) if use else 0.0
        for n in range(c):
            z = math.sqrt(us[n]) * inv_scale if use else 0.0
            ue[n] = ws[n] * min(HUBER_C / max(z, _TINY), 1.0)
        r = _weighted_fit(qx, qy, hs, ks, ue, c)
    # ---- the final fit and its weighted and plain residual sums
    if not r[0]:
        return False, count, 0.0, 0.0
    c0, c1, c2, c3, c4, c5 = r[1], r[2], r[3], r[4], r[5], r[6]
    out_p[0], out_p[1], out_p[2], out_p[3], out_p[4], out_p[5] = c0, c1, c2, c3, c4, c5
    out_i[0], out_i[1], out_i[2] = r[7], r[8], r[9]
    out_i[3], out_i[4], out_i[5] = r[10], r[11], r[12]
    a = 0.0
    b = 0.0
    for n in range(c):
        rx = qx[n] - (c0 + hs[n] * c2 + ks[n] * c4)
        ry = qy[n] - (c1 + hs[n] * c3 + ks[n] * c5)
        r2 = rx * rx + ry * ry
        a += ue[n] * r2
        b += oks[n] * r2
    return True, count, a, b


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _fit_range(
    lo, hi, qx, qy, w0, starts, origin, g, tolerance, robust, n_iter, need,
    params, cov, residual, n_peaks, s2, code, hs, ks, ws, oks, us, keys, ue, tmp, pp, ii,
):  # fmt: skip
    """Fit the positions ``lo:hi`` and write their outputs (see :func:`_fit_blocks`)."""
    many_o, many_g = origin.shape[0] > 1, g.shape[0] > 1
    guess = np.zeros(1)  # the median u² of the previous position's first IRLS iteration
    for p in range(lo, hi):
        s, c = starts[p], starts[p + 1] - starts[p]
        io, ig = (p if many_o else 0), (p if many_g else 0)
        ok, cnt, a, b = False, 0, 0.0, 0.0
        if c > 0:
            ok, cnt, a, b = _fit_position(
                qx, qy, w0, s, c, origin[io], g[ig], tolerance, robust, n_iter,
                hs, ks, ws, oks, us, keys, ue, tmp, pp, ii, guess,
            )  # fmt: skip
        n_peaks[p] = cnt
        dof = 2 * cnt - 6
        sc = a / max(dof, 1) if dof > 0 else np.nan
        res = math.sqrt(b / max(cnt, 1))
        fin = ok and cnt >= need and _finite6(pp[0], pp[1], pp[2], pp[3], pp[4], pp[5])
        own = fin and dof >= MIN_DOF_OWN_SCALE
        f = sc if own else 1.0
        e00, e01, e02 = f * ii[0], f * ii[1], f * ii[2]
        e11, e12, e22 = f * ii[3], f * ii[4], f * ii[5]
        s2[p] = sc
        if own and not (
            _finite6(e00, e01, e02, e11, e12, e22) and math.isfinite(sc) and math.isfinite(res)
        ):
            fin = False
            code[p] = 3  # invalid, but its scale counts in the scan's median, as the reference
        elif not fin:
            code[p] = 0
        if not fin:
            residual[p] = np.nan
            for i in range(6):
                params[p, i] = np.nan
                for j in range(6):
                    cov[p, i, j] = np.nan
            continue
        code[p] = 1 if own else 2
        residual[p] = res
        for i in range(6):
            params[p, i] = pp[i]
        for i in range(6):
            for j in range(6):
                cov[p, i, j] = 0.0
        cov[p, 0, 0] = cov[p, 1, 1] = e00
        cov[p, 0, 2] = cov[p, 1, 3] = cov[p, 2, 0] = cov[p, 3, 1] = e01
        cov[p, 0, 4] = cov[p, 1, 5] = cov[p, 4, 0] = cov[p, 5, 1] = e02
        cov[p, 2, 2] = cov[p, 3, 3] = e11
        cov[p, 2, 4] = cov[p, 3, 5] = cov[p, 4, 2] = cov[p, 5, 3] = e12
        cov[p, 4, 4] = cov[p, 5, 5] = e22


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _fit_blocks(
    qx, qy, w0, starts, origin, g, tolerance, robust, n_iter, min_peaks,
    params, cov, residual, n_peaks, s2, code,
):  # fmt: skip
    """Fit every position; outputs are written in place.

    ``code`` is 0 where the fit failed (NaN everywhere), 1 where the position has its
    own scale (``cov`` = s² × inverse, final), 2 where it needs the scan's median scale
    (``cov`` holds the unscaled inverse, ``s2`` its own scale), 3 where it has its own
    scale but a non-finite covariance (NaN everywhere; ``s2`` counts in the median).
    """
    n_pos = len(starts) - 1
    maxc = 0
    for p in range(n_pos):
        maxc = max(maxc, starts[p + 1] - starts[p])
    n_blocks = (n_pos + _BLOCK - 1) // _BLOCK
    need = max(min_peaks, 3)
    for blk in numba.prange(n_blocks):
        us = np.empty(maxc)
        _fit_range(
            blk * _BLOCK, min(n_pos, (blk + 1) * _BLOCK), qx, qy, w0, starts, origin, g,
            tolerance, robust, n_iter, need, params, cov, residual, n_peaks, s2, code,
            np.empty(maxc), np.empty(maxc), np.empty(maxc), np.empty(maxc, np.bool_),
            us, us.view(np.int64), np.empty(maxc), np.empty(maxc), np.empty(6), np.empty(6),
        )  # fmt: skip


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _csr_starts(pos, n_pos, starts):
    """``starts`` (n_pos + 1) of the runs of ``pos``; False unless sorted in range(n_pos)."""
    n = len(pos)
    if n == 0:
        starts[:] = 0
        return True
    if pos[0] < 0 or pos[n - 1] >= n_pos:
        return False
    n_chunks = 16
    bad = np.zeros(n_chunks, np.bool_)
    for ch in numba.prange(n_chunks):  # one pass; each chunk writes its own starts
        lo, hi = ch * n // n_chunks, (ch + 1) * n // n_chunks
        prev = pos[lo - 1] if lo > 0 else -1
        for i in range(lo, hi):
            v = pos[i]
            if v != prev:
                if v < prev or v >= n_pos:
                    bad[ch] = True
                    break
                for q in range(prev + 1, v + 1):
                    starts[q] = i
                prev = v
    if bad.any():
        return False
    for q in range(pos[n - 1] + 1, n_pos + 1):
        starts[q] = n
    return True


def fit_csr(qx, qy, w0, pos, n_pos, origin0, g0, tolerance, robust, n_iter, min_peaks):
    """:func:`strainkit.lattice.fit_lattice` on peaks in CSR order (``pos`` sorted).

    Returns the same dict as the numpy reference ``_fit_lattice_numpy`` (equal to
    rounding), or None when ``pos`` is not sorted (the caller then uses the reference).

    Examples
    --------
    >>> hk = np.stack(np.meshgrid(range(-2, 3), range(-2, 3), indexing="ij"), -1)
    >>> q = hk.reshape(-1, 2) @ np.array([[2.0, 0.0], [0.5, 3.0]]) + [0.3, -0.1]
    >>> g = np.array([[2.0, 0.5], [0.0, 3.0]])
    >>> out = fit_csr(q[:, 0], q[:, 1], np.ones(25), np.zeros(25, int), 1,
    ...               np.zeros((1, 2)), g[None], 0.25, True, 5, 6)
    >>> out["params"].round(6), out["n_peaks"], out["valid"]
    (array([[ 0.3, -0.1,  2. ,  0. ,  0.5,  3. ]]), array([25]), array([ True]))
    """
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    starts = np.empty(n_pos + 1, dtype=np.int64)
    if not _csr_starts(pos, n_pos, starts):
        return None
    origin0 = np.asarray(origin0, dtype=float)
    g0 = np.asarray(g0, dtype=float)
    if origin0.ndim == 2 and origin0.strides[0] == 0:  # one lattice for every position
        origin0 = origin0[:1]
    if g0.ndim == 3 and g0.strides[0] == 0:
        g0 = g0[:1]
    params = np.empty((n_pos, 6))
    cov = np.empty((n_pos, 6, 6))
    residual = np.empty(n_pos)
    n_peaks = np.empty(n_pos, dtype=np.int64)
    s2 = np.empty(n_pos)
    code = np.empty(n_pos, dtype=np.int8)
    _fit_blocks(
        np.ascontiguousarray(qx, dtype=float),
        np.ascontiguousarray(qy, dtype=float),
        np.ascontiguousarray(w0, dtype=float),
        starts,
        np.ascontiguousarray(np.broadcast_to(origin0, (len(origin0), 2))),
        np.ascontiguousarray(np.broadcast_to(g0, (len(g0), 2, 2))),
        float(tolerance),
        bool(robust),
        int(n_iter),
        int(min_peaks),
        params,
        cov,
        residual,
        n_peaks,
        s2,
        code,
    )
    valid = code == 1
    late = np.flatnonzero(code == 2)
    if late.size:  # too few degrees of freedom: the scan's median scale, as the reference
        own = (code == 1) | (code == 3)
        scale = np.median(s2[own]) if own.any() else s2[late][:, None, None]
        c = cov[late] * scale
        bad = ~(np.isfinite(c).all(axis=(1, 2)) & np.isfinite(residual[late]))
        c[bad] = np.nan
        cov[late] = c
        valid[late] = ~bad
        params[late[bad]] = np.nan
        residual[late[bad]] = np.nan
    return {
        "params": params,
        "covariance": cov,
        "residual": residual,
        "n_peaks": n_peaks,
        "valid": valid,
    }
