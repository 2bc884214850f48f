"""The numba core of Bragg disk detection: maxima, selection and deblended refinement.

Everything here works on one frame at a time with caller-provided scratch arrays, so
that threads can run it side by side (``nogil``) without allocating in the hot loop.

The loops are written for LLVM's vectoriser: branch-free ternaries rather than ``max``,
and inner loops over whole (sliced) rows starting at 0, which it vectorises while it does
not vectorise ``range(lo, hi)`` with a non-zero start (measured: 8x slower).
"""

from __future__ import annotations

import numba
import numpy as np

SLOPE_HALF = 15  # half-width of the window the background plane is fitted in
MODEL_ERROR = 0.01  # relative error of a disk model, as seen by a faint neighbour
GRID = 8  # tabulated subpixel shifts per px: δ = g / GRID − ½, g = 0..GRID


# ---------------------------------------------------------------------------- detection


@numba.njit(cache=True, nogil=True, fastmath=True)
def bin_frame(frame, b, out):
    """Sum ``b`` x ``b`` blocks of ``frame`` into ``out``."""
    nx, ny = out.shape
    rows = np.empty(ny * b, frame.dtype)
    for i in range(nx):
        # the b rows first, whole rows at a time (vectorised), then the b columns
        src = frame[i * b, : ny * b]
        for y in range(ny * b):
            rows[y] = src[y]
        for k in range(1, b):
            src = frame[i * b + k, : ny * b]
            for y in range(ny * b):
                rows[y] += src[y]
        dst = out[i]
        for j in range(ny):
            acc = rows[j * b]
            for k in range(1, b):
                acc += rows[j * b + k]
            dst[j] = acc


@numba.njit(cache=True, nogil=True, fastmath=True)
def row_max3(corr, hmax, colmax):
    """hmax[i, j] = max of corr[i, j-1:j+2]; returns the frame max (via colmax)."""
    nx, ny = corr.shape
    colmax[:] = corr[0]
    for i in range(nx):
        row, out = corr[i], hmax[i]
        left, centre, right, inner = row[: ny - 2], row[1 : ny - 1], row[2:], out[1 : ny - 1]
        for j in range(ny - 2):
            m = left[j] if left[j] > centre[j] else centre[j]
            inner[j] = m if m > right[j] else right[j]
        out[0] = row[0] if row[0] > row[1] else row[1]
        out[ny - 1] = row[ny - 2] if row[ny - 2] > row[ny - 1] else row[ny - 1]
        for j in range(ny):
            colmax[j] = colmax[j] if colmax[j] > row[j] else row[j]
    top = colmax[0]
    for j in range(ny):
        top = top if top > colmax[j] else colmax[j]
    return top


@numba.njit(cache=True, nogil=True, fastmath=True)
def local_maxima(corr, hmax, edge, threshold, cand_v, cand_i, cand_j):
    """Pixels above ``threshold`` that equal the max of their 3x3 neighbourhood.

    Candidates lie at least ``edge`` px inside; equal neighbours on a flat top all
    qualify (the minimum spacing then keeps one). Each row is first counted with a
    vectorised loop; only the few rows holding a maximum are scanned.
    """
    nx, ny = corr.shape
    e = edge if edge > 1 else 1
    thr = np.float32(threshold)
    n = 0
    for i in range(e, nx - e):
        row, mid = corr[i, e : ny - e], hmax[i, e : ny - e]
        up, down = hmax[i - 1, e : ny - e], hmax[i + 1, e : ny - e]
        count = 0
        for j in range(row.shape[0]):
            m = up[j] if up[j] > mid[j] else mid[j]
            m = m if m > down[j] else down[j]
            count += (row[j] >= m) & (row[j] > thr)
        if count == 0:
            continue
        for j in range(row.shape[0]):
            v = row[j]
            if v > thr and v >= up[j] and v >= mid[j] and v >= down[j] and n < cand_v.shape[0]:
                cand_v[n] = v
                cand_i[n] = i
                cand_j[n] = j + e
                n += 1
    return n


@numba.njit(cache=True, nogil=True)
def select(cand_v, cand_x, cand_y, n, rel, min_dist2, max_peaks, keep):
    """Strongest candidates above ``rel`` × the strongest, pairwise >= the min spacing."""
    if n == 0:
        return 0
    order = np.argsort(-cand_v[:n])
    floor = rel * cand_v[order[0]]
    k = 0
    for idx in order:
        if cand_v[idx] < floor or k >= max_peaks:
            break
        ok = True
        for q in range(k):
            dx = cand_x[idx] - cand_x[keep[q]]
            dy = cand_y[idx] - cand_y[keep[q]]
            if dx * dx + dy * dy < min_dist2:
                ok = False
                break
        if ok:
            keep[k] = idx
            k += 1
    return k


@numba.njit(cache=True, nogil=True, inline="always")
def parabola(m, c, p):
    """Vertex offset of the parabola through (-1, m), (0, c), (1, p), within ±½."""
    denom = m - 2.0 * c + p
    if denom >= 0.0:
        return 0.0
    d = 0.5 * (m - p) / denom
    return min(max(d, -0.5), 0.5)


# ---------------------------------------------------------------------------- refinement


@numba.njit(cache=True, nogil=True, fastmath=True)
def load_window(frame, i, j, h, win):
    """win[a, b] = frame[i - h + a, j - h + b], zero outside the detector."""
    nx, ny = frame.shape
    width = win.shape[1]
    win[:] = 0.0
    if j - h >= 0 and j - h + width <= ny:
        for a in range(2 * h + 1):
            x = i - h + a
            if 0 <= x < nx:
                src, dst = frame[x, j - h : j - h + width], win[a]
                for b in range(width):
                    dst[b] = src[b]
    else:
        for a in range(2 * h + 1):
            x = i - h + a
            if 0 <= x < nx:
                for b in range(2 * h + 1):
                    y = j - h + b
                    if 0 <= y < ny:
                        win[a, b] = frame[x, y]


@numba.njit(cache=True, nogil=True, fastmath=True)
def add_model(image, tbank, dx, dy, i, j, h, scale):
    """Add ``scale`` x the template shifted by (dx, dy) from pixel (i, j), clipped.

    The template at the nearest tabulated shift is corrected to first order with its
    tabulated derivatives, so the model sits where the disk is to ~1e-3 px.
    """
    nx, ny = image.shape
    gx = min(max(round((dx + 0.5) * GRID), 0), GRID)
    gy = min(max(round((dy + 0.5) * GRID), 0), GRID)
    g = gx * (GRID + 1) + gy
    ex = np.float32(scale * (dx - (gx / GRID - 0.5)))
    ey = np.float32(scale * (dy - (gy / GRID - 0.5)))
    s = np.float32(scale)
    lo = max(0, h - j)
    hi = min(2 * h + 1, ny - j + h)
    if hi <= lo:
        return
    for a in range(2 * h + 1):
        x = i - h + a
        if x < 0 or x >= nx:
            continue
        dst = image[x, j - h + lo : j - h + hi]
        t0, t1, t2 = tbank[g, a, 0, lo:hi], tbank[g, a, 1, lo:hi], tbank[g, a, 2, lo:hi]
        for b in range(hi - lo):
            dst[b] += s * t0[b] + ex * t1[b] + ey * t2[b]


@numba.njit(cache=True, nogil=True, fastmath=True)
def window_sums(win, kbank, g, acc, out):
    """The six correlations (value, ∂x, ∂y, ∂xx, ∂xy, ∂yy) of a window with entry g."""
    width = kbank.shape[3]
    acc[:] = 0.0
    for a in range(win.shape[0]):
        row = win[a]
        for c in range(6):
            k, s = kbank[g, a, c], acc[c]
            for b in range(width):  # element-wise, so it vectorises
                s[b] += row[b] * k[b]
    for c in range(6):
        out[c] = acc[c].sum()


@numba.njit(cache=True, nogil=True, fastmath=True)
def fit_slope(resid, frame, floor, i, j, h, out):
    """The local background plane into ``out``: slope along x, y (per px) and level.

    Returns False when the gaps are too few to tell. The plane is fitted to the residual
    ``resid`` (the frame less every disk's model) within ``h`` px of pixel (i, j), over
    the gaps between disks: pixels where the disk models (``frame − resid``) stay below
    ``floor`` (elsewhere the disks' Poisson noise and any error of their models would
    swamp the background), on the detector, and whose mirror image through (i, j)
    qualifies too. The symmetric pairs make the fit blind to the background's
    curvature, which a symmetric kernel ignores anyway, so the slope comes out unbiased
    even when the gaps lie to one side; each pair is visited once, through the
    difference (slope) and the sum (level) of its two residuals, straight from the
    images. The level is the mean over the pairs (their centroid is (i, j)); it cannot
    shift the maximum of a disk wholly on the detector, but it does give the disk's
    background, which sets its kernel (see :func:`refine_frame`).
    """
    nx, ny = frame.shape
    n = 2 * h + 1
    floor32 = np.float32(floor)
    # columns b (y = j − h + b) whose pixel and mirror both lie on the detector
    b0 = max(0, h - j, j + h + 1 - ny)
    b1 = min(n, ny - j + h, j + h + 1)
    suu = suv = svv = sru = srv = sr = count = 0.0
    if b1 <= b0:
        return False
    y0 = j - h + b0  # first column of the row; its mirror runs backwards from j + h − b0
    for a in range(h + 1):
        x1, x2 = i - h + a, i + h - a
        if not (0 <= x1 < nx and 0 <= x2 < nx):
            continue
        u = np.float32(a - h)
        m = b1 - b0 if a < h else max(0, min(b1, h) - b0)  # the middle row pairs its halves
        r1, f1 = resid[x1, y0 : y0 + m], frame[x1, y0 : y0 + m]
        top = j + h - b0  # mirror of column b0
        r2 = resid[x2, top - m + 1 : top + 1][::-1]
        f2 = frame[x2, top - m + 1 : top + 1][::-1]
        s0 = s1 = s2 = sd = sdv = ss = np.float32(0.0)
        for b in range(m):
            ok = np.float32(1.0) if f1[b] - r1[b] <= floor32 else np.float32(0.0)
            w = ok if f2[b] - r2[b] <= floor32 else np.float32(0.0)
            v = np.float32(b0 + b - h)
            d = w * (r1[b] - r2[b])
            s0 += w
            s1 += w * v
            s2 += w * v * v
            sd += d
            sdv += d * v
            ss += w * (r1[b] + r2[b])
        count += 2.0 * s0
        suu += 2.0 * s0 * u * u
        suv += 2.0 * s1 * u
        svv += 2.0 * s2
        sru += sd * u
        srv += sdv
        sr += ss
    det = suu * svv - suv * suv
    if count < 24.0 or det <= 1e-9 * (suu + svv) ** 2:
        return False
    out[0] = (svv * sru - suv * srv) / det
    out[1] = (suu * srv - suv * sru) / det
    out[2] = sr / count
    return True


@numba.njit(cache=True, nogil=True, fastmath=True)
def subtract_slope(win, c0, cu, cv, i, j, h, nx, ny):
    """win -= c0 + cu (x − i) + cv (y − j) on the detector's pixels."""
    for a in range(2 * h + 1):
        x = i - h + a
        if x < 0 or x >= nx:
            continue
        u = a - h
        for b in range(2 * h + 1):
            y = j - h + b
            if 0 <= y < ny:
                win[a, b] -= c0 + cu * u + cv * (b - h)


@numba.njit(cache=True, nogil=True)
def newton(win, kbank, kmom, c0, cu, cv, dx, dy, acc, sums, result):
    """Maximum of the DFT-interpolated correlation of ``win`` near offset (dx, dy).

    A background plane (level c0, slope cu, cv) is taken out of the sums through the
    bank's moments ``kmom[g, 0|1|2, c]`` (the correlations are linear in the window, so
    this equals subtracting the plane from every pixel, at a fraction of the cost).
    Newton steps from the nearest tabulated shift. Writes (dx, dy, value, sharpness) to
    ``result``. Returns 0 when converged, 1 when the maximum lies beyond the tabulated
    ±½ px (recentre the window on ``result[:2]`` and call again), 2 when no maximum.
    """
    for _ in range(4):
        gx = min(max(round((dx + 0.5) * GRID), 0), GRID)
        gy = min(max(round((dy + 0.5) * GRID), 0), GRID)
        g = gx * (GRID + 1) + gy
        window_sums(win, kbank, g, acc, sums)
        for q in range(6):
            sums[q] -= c0 * kmom[g, 0, q] + cu * kmom[g, 1, q] + cv * kmom[g, 2, q]
        c, cx, cy, cxx, cxy, cyy = sums[0], sums[1], sums[2], sums[3], sums[4], sums[5]
        det = cxx * cyy - cxy * cxy
        if not (cxx < 0.0 and det > 0.0):
            return 2
        ex = -(cyy * cx - cxy * cy) / det
        ey = -(cxx * cy - cxy * cx) / det
        ox, oy = gx / GRID - 0.5, gy / GRID - 0.5
        dx, dy = ox + ex, oy + ey
        if abs(ex) <= 1.0 / GRID + 1e-6 and abs(ey) <= 1.0 / GRID + 1e-6:
            result[0], result[1] = dx, dy
            result[2] = (
                c + cx * ex + cy * ey + 0.5 * (cxx * ex * ex + 2 * cxy * ex * ey + cyy * ey * ey)
            )
            result[3] = -(cxx + cyy) / result[2] if result[2] > 0 else 0.0
            return 0
        if abs(dx) > 0.5 + 0.5 / GRID or abs(dy) > 0.5 + 0.5 / GRID:
            if abs(dx) > 2.0 or abs(dy) > 2.0:
                return 2
            result[0], result[1] = dx, dy
            return 1
    return 2


@numba.njit(cache=True, inline="always")
def pick_bank(floors, level, plateau):
    """The bank whose kernel floor is nearest (in log) to the disk's ``level / plateau``.

    ``floors`` ascend, so the nearest in log is the count of geometric midpoints
    ``sqrt(floors[q] floors[q + 1])`` below the ratio (no logarithm needed).
    """
    if not (level > 0.0 and plateau > 0.0) or len(floors) == 1:
        return 0
    ratio = level / plateau
    best = 0
    for q in range(len(floors) - 1):
        if ratio * ratio > floors[q] * floors[q + 1]:
            best = q + 1
    return best


@numba.njit(cache=True, nogil=True)
def refine_frame(
    frame,
    resid,
    win,
    gap,
    n,
    n_refine,
    pos,
    amp,
    kbank,
    kmom,
    floors,
    phi0,
    kappa0,
    plateau,
    tbank,
    h,
    sweeps,
    acc,
    sums,
    result,
    quality,
):
    """Refine the first ``n_refine`` of the ``n`` disks ``pos`` (px), ``amp`` in place.

    Each sweep subtracts every disk's model (the template scaled by its amplitude) from
    the frame, then refines each disk on the frame minus its neighbours and minus a
    local plane (the diffuse background), so neither overlapping tails nor a background
    slope pull it. The plane is fitted over a wider window (half-width ``SLOPE_HALF``)
    than the disk's: its noise would otherwise cost more precision than the slope's bias
    (measured on the demo scan: strain error 1.10x the Cramér–Rao bound with the disk's
    own window, 1.07x with 31 px). In the last sweep each disk is correlated with the
    kernel of bank
    ``pick_bank(floors, background level, amp · plateau)``: the Poisson kernels
    ``log(t + floor)`` differ only in ``floor``, the background-to-disk ratio for which
    each is the likelihood, so a faint disk on a bright background gets the flatter
    kernel that suits it. ``quality[k]`` gets the peak sharpness relative to a perfect
    match (``kappa0``), ``amp[k]`` the correlation maximum divided by ``phi0`` (the
    template's own correlation with that kernel).
    """
    nx, ny = frame.shape
    hs = max(SLOPE_HALF, h)
    plane = np.zeros(3)
    for sweep in range(sweeps):
        # The first sweep only sharpens the detection estimates, on the raw pattern: good
        # enough to model the neighbours in the next (whose own errors barely matter).
        quick = sweep == 0 and sweeps > 1
        resid[:] = frame
        top = 0.0
        for k in range(n):
            top = max(top, amp[k])
        if not quick:
            for k in range(n):
                i, j = round(pos[k, 0]), round(pos[k, 1])
                add_model(resid, tbank, pos[k, 0] - i, pos[k, 1] - j, i, j, h, -amp[k])
        for k in range(n_refine):
            i, j = round(pos[k, 0]), round(pos[k, 1])
            dx, dy = pos[k, 0] - i, pos[k, 1] - j
            bank = pick_bank(floors, MODEL_ERROR * top * plateau, amp[k] * plateau)
            for _attempt in range(3):
                load_window(resid, i, j, h, win)
                if not quick:
                    # The disk's own model goes back in. Off the detector it stands in for
                    # the missing pixels, so a clipped disk is refined against itself
                    # rather than against zeros (which would pull it inwards).
                    add_model(win, tbank, dx, dy, h, h, h, amp[k])
                c0 = cu = cv = 0.0
                # the background matters for the final positions only
                last = gap > 0 and sweep == sweeps - 1
                if last and fit_slope(resid, frame, gap * amp[k], i, j, hs, plane):
                    c0, cu, cv = plane[2], plane[0], plane[1]
                    # the neighbours' model errors act as extra background, in proportion
                    # to the brightest disk
                    clutter = max(c0, MODEL_ERROR * top * plateau)
                    bank = pick_bank(floors, clutter, amp[k] * plateau)
                    if not (h <= i < nx - h and h <= j < ny - h):  # partly off the detector
                        subtract_slope(win, c0, cu, cv, i, j, h, nx, ny)
                        c0 = cu = cv = 0.0
                status = newton(
                    win, kbank[bank], kmom[bank], c0, cu, cv, dx, dy, acc, sums, result
                )
                if status != 1:
                    break
                i, j = i + round(result[0]), j + round(result[1])
                dx, dy = result[0] - round(result[0]), result[1] - round(result[1])
            if status == 0:
                pos[k, 0] = i + result[0]
                pos[k, 1] = j + result[1]
                amp[k] = result[2] / phi0[bank]
                quality[k] = result[3] / kappa0[bank]
            else:
                quality[k] = 0.0


@numba.njit(cache=True, nogil=True)
def process_frames(
    corr,
    frames,
    b,
    offset_b,
    offset,
    phi0_b,
    edge,
    abs_thr,
    rel,
    min_spacing,
    max_peaks,
    mode,
    kbank,
    kmom,
    floors,
    phi0,
    kappa0,
    plateau,
    tbank,
    h,
    gap,
    sweeps,
    out,
    counts,
):
    """Detect on the (binned) correlations ``corr``, refine on the full ``frames``.

    ``mode``: 0 no subpixel (nearest pixel), 1 parabolic on the correlation, 2 refined.
    Positions are in kernel coordinates, the disk centre minus ``offset`` (the kernel's
    fractional centre, which the caller adds back); ``out[f, q]`` = (x, y, amplitude,
    quality).
    """
    nf = corr.shape[0]
    nxb, nyb = corr.shape[1], corr.shape[2]
    nx, ny = frames.shape[1], frames.shape[2]
    ncand = max(4 * max_peaks, 256)
    cand_v = np.empty(ncand, np.float64)
    cand_x = np.empty(ncand, np.float64)
    cand_y = np.empty(ncand, np.float64)
    cand_i = np.empty(ncand, np.int64)
    cand_j = np.empty(ncand, np.int64)
    cap = 2 * max_peaks + 64  # disks modelled, including those too near the edge to report
    keep = np.empty(cap, np.int64)
    hmax = np.empty((nxb, nyb), corr.dtype)
    colmax = np.empty(nyb, corr.dtype)
    pos = np.empty((cap, 2), np.float64)
    amp = np.empty(cap, np.float64)
    qual = np.empty(cap, np.float64)
    resid = np.empty((nx, ny), np.float32)
    width = kbank.shape[4]
    win = np.empty((2 * h + 1, width), np.float32)
    acc = np.empty((6, width), np.float32)
    sums = np.empty(6, np.float64)
    result = np.empty(4, np.float64)
    for f in range(nf):
        c = corr[f]
        top = row_max3(c, hmax, colmax)
        threshold = max(abs_thr * phi0_b, rel * top)
        # Disks too weak to report are still modelled, so that they do not bias their
        # neighbours; a quarter of the reporting threshold catches those that matter.
        n = local_maxima(c, hmax, 1, 0.25 * threshold, cand_v, cand_i, cand_j)
        for q in range(n):
            i, j = cand_i[q], cand_j[q]
            v = c[i, j]
            cand_x[q] = (
                b * (i + parabola(c[i - 1, j], v, c[i + 1, j]) + offset_b[0])
                + (b - 1) / 2
                - offset[0]
            )
            cand_y[q] = (
                b * (j + parabola(c[i, j - 1], v, c[i, j + 1]) + offset_b[1])
                + (b - 1) / 2
                - offset[1]
            )
        # every disk is modelled (so it can be taken out of its neighbours' windows);
        # those within ``edge`` of the detector's edge are not reported
        m = select(cand_v, cand_x, cand_y, n, 0.0, min_spacing * min_spacing, cap, keep)
        strong = m - m  # an int64, not the literal 0 (which compiles refine_frame twice)
        for q in range(m):
            if cand_v[keep[q]] >= threshold:
                strong = q + 1
            x, y = cand_x[keep[q]], cand_y[keep[q]]
            pos[q, 0] = x if mode > 0 else round(x)
            pos[q, 1] = y if mode > 0 else round(y)
            amp[q] = cand_v[keep[q]] / phi0_b
            qual[q] = 1.0
        if mode == 2 and m > 0:
            refine_frame(
                frames[f],
                resid,
                win,
                gap,
                m,
                strong,
                pos,
                amp,
                kbank,
                kmom,
                floors,
                phi0,
                kappa0,
                plateau,
                tbank,
                h,
                sweeps,
                acc,
                sums,
                result,
                qual,
            )
        # refinement may have merged two candidates onto one disk: keep the stronger
        kept = 0
        for q in range(strong):
            x, y = pos[q, 0] + offset[0], pos[q, 1] + offset[1]
            if kept == max_peaks or not (
                edge <= x <= nx - 1 - edge and edge <= y <= ny - 1 - edge
            ):
                continue
            dup = False
            for r in range(strong):
                if r != q and qual[r] > 0:
                    dx, dy = pos[q, 0] - pos[r, 0], pos[q, 1] - pos[r, 1]
                    if dx * dx + dy * dy < 0.25 and (
                        amp[r] > amp[q] or (amp[r] == amp[q] and r < q)
                    ):
                        dup = True
                        break
            if dup:
                continue
            out[f, kept, 0] = pos[q, 0]
            out[f, kept, 1] = pos[q, 1]
            out[f, kept, 2] = amp[q]
            out[f, kept, 3] = qual[q]
            kept += 1
        counts[f] = kept
