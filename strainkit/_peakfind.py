"""The numba core of Bragg disk detection: maxima, selection and deblended refinement.

Everything here works on one frame at a time with caller-provided scratch arrays, so
that threads can run it side by side (``nogil``) without allocating in the hot loop.

The loops are written for LLVM's vectoriser: branch-free ternaries rather than ``max``,
inner loops over whole (sliced) rows starting at 0, which it vectorises while it does
not vectorise ``range(lo, hi)`` with a non-zero start (measured: 8x slower), and windows
copied out flat, so that the work on them is one long loop: a loop over a window's
short rows (19–31 px) runs element by element, both because LLVM's vector loop needs
more iterations and because it cannot rule out that the rows overlap. Indices that
count down are unsigned, which spares numba's negative-index test; array views are
avoided in the inner loops (each costs a reference count).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

SLOPE_HALF = 12  # half-width of the window the background plane is fitted in
MODEL_ERROR = 0.01  # relative error of a disk model, as seen by a faint neighbour
GRID = 8  # tabulated subpixel shifts per px: δ = g / GRID − ½, g = 0..GRID


@intrinsic
def copy_run(typingctx, dst, dst_start, src, src_start, n):
    """``dst.flat[dst_start:dst_start + n] = src.flat[src_start:src_start + n]``.

    One ``llvm.memcpy``: the two arrays never overlap here, which LLVM cannot know, so
    a copy loop over a short row (a window's 19–31 px) runs element by element (3.5x
    slower, measured). Explicit 16- or 8-wide vector moves instead of the call measured
    slower still in place (+15 µs a frame). No bounds are checked.
    """
    if not (dst.layout == "C" and src.layout == "C"):  # flat offsets need C order
        return None
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        d, d0, s, s0, count = args
        dst_arr = context.make_array(signature.args[0])(context, builder, d)
        src_arr = context.make_array(signature.args[2])(context, builder, s)
        itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        cgutils.raw_memcpy(
            builder,
            builder.gep(dst_arr.data, [d0]),
            builder.gep(src_arr.data, [s0]),
            count,
            itemsize,
        )
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------------------- detection


@numba.njit(cache=True, nogil=True, fastmath=True)
def bin_frames(frames, b, out):
    """Sum ``b`` x ``b`` blocks of each frame into ``out`` (n, Qx // b, Qy // b)."""
    nx, ny = out.shape[1], out.shape[2]
    if b == 2:  # the usual case, written out: 6x faster than the general loop
        for f in range(frames.shape[0]):
            frame, binned = frames[f], out[f]
            for i in range(nx):
                r1, r2, dst = frame[2 * i], frame[2 * i + 1], binned[i]
                for j in range(ny):
                    dst[j] = (r1[2 * j] + r1[2 * j + 1]) + (r2[2 * j] + r2[2 * j + 1])
        return
    rows = np.empty(ny * b, frames.dtype)
    for f in range(frames.shape[0]):
        frame, binned = frames[f], out[f]
        for i in range(nx):
            # the b rows first, whole rows at a time (vectorised), then the b columns
            src = frame[i * b, : ny * b]
            for y in range(ny * b):
                rows[y] = src[y]
            for k in range(1, b):
                src = frame[i * b + k, : ny * b]
                for y in range(ny * b):
                    rows[y] += src[y]
            dst = binned[i]
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
def load_window(frame, i, j, h, win, fill=0.0):
    """win[a (2h+1) + b] = frame[i - h + a, j - h + b]; ``fill`` off the detector."""
    nx, ny = frame.shape
    n = 2 * h + 1
    lo, hi = max(0, h - j), min(n, ny - j + h)  # the columns on the detector
    for a in range(n):
        x = i - h + a
        if x < 0 or x >= nx or hi <= lo:
            lo_a, hi_a = n, n  # the whole row is off the detector
        else:
            copy_run(win, a * n + lo, frame, x * ny + j - h + lo, hi - lo)
            lo_a, hi_a = lo, hi
        for b in range(lo_a):
            win[a * n + b] = fill
        for b in range(hi_a, n):
            win[a * n + b] = fill


@numba.njit(cache=True, nogil=True, inline="always")
def grid_entry(dx, dy):
    """The tabulated shift nearest (dx, dy): its index and its (δx, δy)."""
    gx = min(max(round((dx + 0.5) * GRID), 0), GRID)
    gy = min(max(round((dy + 0.5) * GRID), 0), GRID)
    return gx * (GRID + 1) + gy, gx / GRID - 0.5, gy / GRID - 0.5


@numba.njit(cache=True, nogil=True, fastmath=True)
def add_model(image, tbank, dx, dy, i, j, h, scale, buf):
    """Add ``scale`` x the template shifted by (dx, dy) from pixel (i, j), clipped.

    The template at the nearest tabulated shift is corrected to first order with its
    tabulated derivatives, so the model sits where the disk is to ~1e-3 px. A window
    wholly on the detector goes through the flat buffer ``buf`` ((2h+1)²): copied out,
    updated in one long (vectorised) loop and copied back, 3x faster than row by row.
    """
    nx, ny = image.shape
    n = 2 * h + 1
    if h <= i < nx - h and h <= j < ny - h:
        for a in range(n):
            copy_run(buf, a * n, image, (i - h + a) * ny + j - h, n)
        add_model_window(buf, tbank, dx, dy, scale)
        for a in range(n):
            copy_run(image, (i - h + a) * ny + j - h, buf, a * n, n)
        return
    g, ox, oy = grid_entry(dx, dy)
    ex = np.float32(scale * (dx - ox))
    ey = np.float32(scale * (dy - oy))
    s = np.float32(scale)
    lo = max(0, h - j)
    hi = min(n, ny - j + h)
    if hi <= lo:
        return
    for a in range(n):
        x = i - h + a
        if x < 0 or x >= nx:
            continue
        dst = image[x, j - h + lo : j - h + hi]
        r = a * n
        t0 = tbank[g, 0, r + lo : r + hi]
        t1 = tbank[g, 1, r + lo : r + hi]
        t2 = tbank[g, 2, r + lo : r + hi]
        for b in range(hi - lo):
            dst[b] += s * t0[b] + ex * t1[b] + ey * t2[b]


@numba.njit(cache=True, nogil=True, fastmath=True)
def add_model_window(win, tbank, dx, dy, scale):
    """:func:`add_model` into a flattened window centred on the disk's pixel."""
    g, ox, oy = grid_entry(dx, dy)
    ex = np.float32(scale * (dx - ox))
    ey = np.float32(scale * (dy - oy))
    s = np.float32(scale)
    for t in range(win.shape[0]):  # indexing, not views: a view costs a reference count
        win[t] += s * tbank[g, 0, t] + ex * tbank[g, 1, t] + ey * tbank[g, 2, t]


@numba.njit(cache=True, nogil=True, fastmath=True)
def window_sums(win, kbank, bank, g, lo, hi, out):
    """Correlations ``lo:hi`` of (value, ∂x, ∂y, Laplacian) of a window with entry g
    of bank ``bank`` (indexed, not sliced: a view would cost a reference count)."""
    for c in range(lo, hi):
        s = np.float32(0.0)
        for t in range(win.shape[0]):  # one contiguous dot product: it vectorises
            s += win[t] * kbank[bank, g, c, t]
        out[c] = s


@numba.njit(cache=True, nogil=True, fastmath=True)
def fit_slope(resid, frame, floor, i, j, h, wr, wf, uv, out):
    """The local background plane into ``out``: slope along x, y (per px) and level.

    Returns False when the gaps are too few to tell. The plane is fitted to the residual
    ``resid`` (the frame less every disk's model) within ``h`` px of pixel (i, j), over
    the gaps between disks: pixels where the disk models (``frame − resid``) stay below
    ``floor`` (elsewhere the disks' Poisson noise and any error of their models would
    swamp the background), on the detector, and whose mirror image through (i, j)
    qualifies too. The symmetric pairs make the fit blind to the background's
    curvature, which a symmetric kernel ignores anyway, so the slope comes out unbiased
    even when the gaps lie to one side; each pair is visited once, through the
    difference (slope) and the sum (level) of its two residuals. The level is the mean
    over the pairs (their centroid is (i, j)); it cannot shift the maximum of a disk
    wholly on the detector, but it does give the disk's background, which sets its
    kernel (see :func:`refine_frame`).

    Both windows are copied out flat (``wr``, ``wf``), where the mirror of pixel t is
    pixel N − 1 − t: the pairs are then one long loop, which vectorises, where rows of
    31 px do not (measured: 0.25 µs a disk against 0.7–0.9). ``uv`` holds the window
    offsets (x, y) of each flat index.
    """
    n = 2 * h + 1
    size = n * n
    load_window(resid, i, j, h, wr)
    load_window(frame, i, j, h, wf, np.inf)  # a pixel no disk model can stay below
    fl = np.float32(floor)
    one, zero = np.float32(1.0), np.float32(0.0)
    c = suu = suv = svv = sru = srv = sr = zero
    for t in range(size // 2):
        m = np.uint64(size - 1 - t)  # unsigned: no wraparound test, so it vectorises
        u, v = uv[0, t], uv[1, t]
        w = one if (wf[t] - wr[t] <= fl) & (wf[m] - wr[m] <= fl) else zero
        d = w * (wr[t] - wr[m])
        c += w
        suu += w * u * u
        suv += w * u * v
        svv += w * v * v
        sru += d * u
        srv += d * v
        sr += w * (wr[t] + wr[m])
    count = 2.0 * c
    suu, suv, svv = 2.0 * suu, 2.0 * suv, 2.0 * svv
    det = suu * svv - suv * suv
    if count < 24.0 or det <= 1e-9 * (suu + svv) ** 2:
        return False
    out[0] = (svv * sru - suv * srv) / det
    out[1] = (suu * srv - suv * sru) / det
    out[2] = sr / count
    return True


@numba.njit(cache=True, nogil=True, fastmath=True)
def subtract_slope(win, c0, cu, cv, i, j, uv, nx, ny):
    """win -= c0 + cu (x − i) + cv (y − j) on the detector's pixels; ``uv`` holds the
    window offsets (x − i, y − j) of each flat index."""
    for t in range(win.shape[0]):
        u, v = uv[0, t], uv[1, t]
        x, y = i + u, j + v
        on = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
        win[t] -= (c0 + cu * u + cv * v) if on else 0.0


@numba.njit(cache=True, nogil=True)
def newton(win, kbank, kmom, hexp, bank, c0, cu, cv, dx, dy, exact, sums, result):
    """Maximum of the DFT-interpolated correlation of ``win`` near offset (dx, dy).

    ``kbank[bank, g]`` holds the kernel's value, ∂x, ∂y and Laplacian at tabulated
    shift g. A background plane (level c0, slope cu, cv) is taken out of the sums
    through the bank's moments ``kmom[bank, g, 0|1|2, c]`` (the correlations are linear
    in the window, so this equals subtracting the plane from every pixel, at a fraction
    of the cost).

    Scoring steps from the nearest tabulated shift: the gradient is measured, the
    curvature is the one a disk of the measured strength would have (``value ×
    hexp[bank, g]``), so a step costs three correlations; the maximum is the same (a
    zero of the gradient). Once a step stays within the tabulated cell, ``exact``
    measures the Laplacian there and takes the final step with the template's
    curvature scaled to it: a real disk's sharpness differs from the template's by a
    few per cent, which would otherwise move the result by up to that fraction of
    1/``GRID`` px. (Measuring all three second derivatives instead changed no figure of
    ``benchmarks/accuracy_disks.py`` by more than 0.0001 px, at 4 % of the finder's
    time.)

    Writes (dx, dy, value, sharpness = −Laplacian / value) to ``result``. Returns 0 when
    converged, 1 when the maximum lies beyond the tabulated ±½ px (recentre the window
    on ``result[:2]`` and call again), 2 when no maximum.
    """
    cell = 1.0 / GRID + 1e-6
    for _ in range(4):
        g, ox, oy = grid_entry(dx, dy)
        window_sums(win, kbank, bank, g, 0, 3, sums)
        for q in range(3):
            sums[q] -= (
                c0 * kmom[bank, g, 0, q] + cu * kmom[bank, g, 1, q] + cv * kmom[bank, g, 2, q]
            )
        c, cx, cy = sums[0], sums[1], sums[2]
        if not c > 0.0:
            return 2
        cxx, cxy, cyy = c * hexp[bank, g, 0], c * hexp[bank, g, 1], c * hexp[bank, g, 2]
        det = cxx * cyy - cxy * cxy
        ex = -(cyy * cx - cxy * cy) / det
        ey = -(cxx * cy - cxy * cx) / det
        # a rough estimate takes the first step as it is: from the detection's start it
        # lands within a few hundredths of a px, all the neighbours' models need
        done = (abs(ex) <= cell and abs(ey) <= cell) or not exact
        if done and exact:
            window_sums(win, kbank, bank, g, 3, 4, sums)
            lap = sums[3] - (
                c0 * kmom[bank, g, 0, 3] + cu * kmom[bank, g, 1, 3] + cv * kmom[bank, g, 2, 3]
            )
            if not lap < 0.0:
                return 2
            # the measured sharpness, in the template's proportions
            scale = lap / (hexp[bank, g, 0] + hexp[bank, g, 2])
            cxx, cxy, cyy = (
                scale * hexp[bank, g, 0],
                scale * hexp[bank, g, 1],
                scale * hexp[bank, g, 2],
            )
            det = cxx * cyy - cxy * cxy
            ex = -(cyy * cx - cxy * cy) / det
            ey = -(cxx * cy - cxy * cx) / det
            done = abs(ex) <= cell and abs(ey) <= cell
        dx, dy = ox + ex, oy + ey
        if done:
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


@numba.njit(cache=True, nogil=True, fastmath=True)
def first_moment(win, uv, radius, offset, c0, cu, cv, dx, dy, result):
    """The disk's first moment (intensity centroid) near offset (dx, dy) within a soft
    circular aperture of ``radius`` px; returns False when the aperture holds no
    intensity.

    Positions are kernel coordinates (the disk centre less ``offset``, the kernel's
    fractional centre), as in :func:`newton`; ``uv`` holds the offsets of each flat
    window index from the window's centre. A background plane (level c0, slopes cu, cv
    about the window's centre) is taken out of every pixel. The aperture weighs 1 within
    ``radius − ½`` of the estimate, 0 beyond ``radius + ½``, linearly between, and is
    recentred once on the first estimate: where its soft edge crosses intensity it pulls
    the centroid toward its own centre by a small fraction of their distance. Writes
    (dx, dy) to ``result[:2]``.
    """
    # the ramp is linear in ρ² (no square root: 2.5x faster), which across the 1 px
    # between radius ∓ ½ differs from linear in ρ by under 1/(8 radius)
    top2 = np.float32((radius + 0.5) ** 2)
    slope = np.float32(0.5 / radius)
    b0, bu, bv = np.float32(c0), np.float32(cu), np.float32(cv)  # float64 halves the lanes
    for _ in range(2):
        cx, cy = np.float32(dx + offset[0]), np.float32(dy + offset[1])
        s0 = s1 = s2 = np.float32(0.0)
        for t in range(win.shape[0]):  # one long loop: it vectorises
            u, v = uv[0, t], uv[1, t]
            du, dv = u - cx, v - cy
            w = (top2 - (du * du + dv * dv)) * slope
            w = min(max(w, np.float32(0.0)), np.float32(1.0))
            value = w * (win[t] - (b0 + bu * u + bv * v))
            s0 += value
            s1 += value * du
            s2 += value * dv
        if not s0 > 0.0:
            return False
        dx, dy = dx + s1 / s0, dy + s2 / s0
    result[0], result[1] = dx, dy
    return True


@numba.njit(cache=True, nogil=True)
def moment_radius(pos, n, k, radius, margin):
    """The aperture radius for disk k: the disk's ``radius`` plus ``margin``, but
    reaching at most halfway into the gap to its nearest neighbour among the ``n``
    modelled disks, where an error of the neighbour's model would enter (at least
    ``radius`` + 1 px)."""
    nearest = np.inf
    for q in range(n):
        if q != k:
            d2 = (pos[q, 0] - pos[k, 0]) ** 2 + (pos[q, 1] - pos[k, 1]) ** 2
            nearest = min(nearest, d2)
    gap = 0.5 * (np.sqrt(nearest) - 2.0 * radius)
    return radius + max(min(margin, gap), 1.0)


@numba.njit(cache=True, nogil=True)
def window_offsets(h):
    """(2, (2h+1)²): the offsets (x, y) from the centre of each flat window index."""
    n = 2 * h + 1
    uv = np.empty((2, n * n), np.float32)
    for a in range(n):
        for b in range(n):
            uv[0, a * n + b] = a - h
            uv[1, a * n + b] = b - h
    return uv


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
    scratch,
    bounds,
    gap,
    n,
    n_refine,
    pos,
    amp,
    models,
    sweeps,
    quality,
):
    """Refine the first ``n_refine`` of the ``n`` disks ``pos`` (px), ``amp`` in place.

    ``models`` holds the plan's tables (``DetectionPlan.models``): the kernel banks with
    their moments and curvatures, the quick sweep's bank, the Poisson floors, φ0 and κ0
    of each bank, the template's plateau, the template bank and the window half-width h.

    The first of two sweeps is quick: one scoring step per disk on the raw pattern, with
    the value and gradient of the kernel's core (``quick_bank``: kernels, their
    curvature per unit value, and the half-width hq), good enough to place the models
    of the neighbours in the next. Each later sweep subtracts every disk's model (the
    template scaled by its amplitude) from the frame, then refines each disk on the
    frame minus its neighbours and minus a local plane (the diffuse background), so
    neither overlapping tails nor a background slope pull it; disks more than 1 px
    outside ``bounds`` (where a disk is reported) keep their models but are not
    refined again. The plane is fitted within ``max(SLOPE_HALF, h)`` px: a wider window
    averages the slope over more of a background that is not a plane (a diffuse
    background falling off as a power law from the pattern's centre has cubic terms
    across a disk), and a narrower one costs precision. Measured with
    ``benchmarks/accuracy_matrix.py --bias`` and ``accuracy_disks.py``: a 25 px window
    halves the worst per-reflection bias of noise-free flat disks on a power-law
    background against 31 px (0.0016 against 0.0027 px with the correlation, 0.0020
    against 0.0040 px with the first moment) at the same precision (strain error within
    0.01 of the same ratio to the Cramér–Rao bound). In the last sweep each disk is
    correlated with the kernel of bank
    ``pick_bank(floors, background level, amp · plateau)``: the Poisson kernels
    ``log(t + floor)`` differ only in ``floor``, the background-to-disk ratio for which
    each is the likelihood, so a faint disk on a bright background gets the flatter
    kernel that suits it. ``quality[k]`` gets the peak sharpness relative to a perfect
    match (``kappa0``), ``amp[k]`` the correlation maximum divided by ``phi0`` (the
    template's own correlation with that kernel).
    """
    nx, ny = frame.shape
    resid, win, winq, buf, wr, wf, uv, uvs, plane, sums, result = scratch
    kbank, kmom, hexp, quick_bank, floors, phi0, kappa0, plateau, tbank, h, moment = models
    qbank, qexp, hq = quick_bank
    use_moment, disk_radius, margin, offset = moment
    hs = max(SLOPE_HALF, h)
    for sweep in range(sweeps):
        # The first sweep only sharpens the detection estimates, on the raw pattern: good
        # enough to model the neighbours in the next (whose own errors barely matter).
        quick = sweep == 0 and sweeps > 1
        top = 0.0
        for k in range(n):
            top = max(top, amp[k])
        if not quick:
            flat_resid, flat_frame = resid.reshape(-1), frame.reshape(-1)
            for t in range(flat_resid.shape[0]):  # one long loop: it vectorises
                flat_resid[t] = flat_frame[t]
            for k in range(n):
                i, j = round(pos[k, 0]), round(pos[k, 1])
                add_model(resid, tbank, pos[k, 0] - i, pos[k, 1] - j, i, j, h, -amp[k], buf)
        for k in range(n_refine):
            if not quick and not (
                bounds[0] <= pos[k, 0] <= bounds[1] and bounds[2] <= pos[k, 1] <= bounds[3]
            ):
                continue  # modelled for its neighbours' sake, but too near the edge to report
            i, j = round(pos[k, 0]), round(pos[k, 1])
            dx, dy = pos[k, 0] - i, pos[k, 1] - j
            bank = pick_bank(floors, MODEL_ERROR * top * plateau, amp[k] * plateau)
            for _attempt in range(3):
                if quick:  # a first estimate, from the kernel's core in a smaller window
                    load_window(frame, i, j, hq, winq)
                    status = newton(
                        winq, qbank, kmom, qexp, bank, 0.0, 0.0, 0.0, dx, dy,
                        False, sums, result,
                    )  # fmt: skip
                    if status != 1:
                        break
                    i, j = i + round(result[0]), j + round(result[1])
                    dx, dy = result[0] - round(result[0]), result[1] - round(result[1])
                    continue
                load_window(resid, i, j, h, win)
                # The disk's own model goes back in. Off the detector it stands in for the
                # missing pixels, so a clipped disk is refined against itself rather than
                # against zeros (which would pull it inwards).
                add_model_window(win, tbank, dx, dy, amp[k])
                c0 = cu = cv = 0.0
                # the background matters for the final positions only
                last = gap > 0 and sweep == sweeps - 1
                if last and fit_slope(resid, frame, gap * amp[k], i, j, hs, wr, wf, uvs, plane):
                    c0, cu, cv = plane[2], plane[0], plane[1]
                    # the neighbours' model errors act as extra background, in proportion
                    # to the brightest disk
                    clutter = max(c0, MODEL_ERROR * top * plateau)
                    bank = pick_bank(floors, clutter, amp[k] * plateau)
                    if not (h <= i < nx - h and h <= j < ny - h):  # partly off the detector
                        subtract_slope(win, c0, cu, cv, i, j, uv, nx, ny)
                        c0 = cu = cv = 0.0
                status = newton(
                    win,
                    kbank,
                    kmom,
                    hexp,
                    bank,
                    c0,
                    cu,
                    cv,
                    dx,
                    dy,
                    True,
                    sums,
                    result,
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
                # the reported position: the centroid, from the correlation's estimate
                if (
                    use_moment
                    and sweep == sweeps - 1
                    and first_moment(
                        win,
                        uv,
                        moment_radius(pos, n, k, disk_radius, margin),
                        offset,
                        c0,
                        cu,
                        cv,
                        result[0],
                        result[1],
                        result,
                    )
                ):
                    pos[k, 0] = i + result[0]
                    pos[k, 1] = j + result[1]
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
    models,
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
    # where a disk may be reported (positions are relative to ``offset``), 1 px wider
    bounds = np.array(
        [
            edge - offset[0] - 1.0,
            nx - 1 - edge - offset[0] + 1.0,
            edge - offset[1] - 1.0,
            ny - 1 - edge - offset[1] + 1.0,
        ]
    )
    h, hq = models[9], models[3][2]
    hs = max(SLOPE_HALF, h)
    scratch = (
        np.empty((nx, ny), np.float32),  # frame less the disk models
        np.empty((2 * h + 1) ** 2, np.float32),  # a disk's window
        np.empty((2 * hq + 1) ** 2, np.float32),  # its quick sweep's window
        np.empty((2 * h + 1) ** 2, np.float32),  # a model's window
        np.empty((2 * hs + 1) ** 2, np.float32),  # residual and frame windows of
        np.empty((2 * hs + 1) ** 2, np.float32),  # the background fit
        window_offsets(h),
        window_offsets(hs),
        np.zeros(3),  # background plane
        np.empty(6, np.float64),  # correlation sums
        np.empty(4, np.float64),  # Newton's result
    )
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
                scratch,
                bounds,
                gap,
                m,
                strong,
                pos,
                amp,
                models,
                sweeps,
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
