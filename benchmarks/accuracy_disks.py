"""Accuracy of Bragg disk detection against the simulator's truth and the Cramér–Rao bound.

For the default conditions (2e5 e-/pattern, disks of radius 6 px 16 px apart, ±20 %
per-reflection intensity modulation, 4 % diffuse background, descan, ellipse 1.025,
1 px detector PSF) prints, per order max(|h|, |k|): the RMS 2D centre error of the
detected disks, the RMS Cramér–Rao bound of the same disks (computed from the
simulator's noise-free model at each position with its actual amplitudes), their
ratio, the mean bias; recall of disks with >= 1 % of the central beam's amplitude
(wholly on the detector) and false peaks per pattern; the same errors on noise-free
data; and the correlation of each disk's error with the intensity imbalance of its two
neighbours along g1 (which a kernel reaching into the neighbours would show).

Run: ``python benchmarks/accuracy_disks.py [--scan 24] [--kernel poisson] [--subpixel moment]``
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.spatial import cKDTree

import strainkit as sk
from strainkit import simulate
from strainkit.disks import BraggDiskFinder
from strainkit.probe import ProbeTemplate


def matched(peaks, truth):
    centers = truth.centers.reshape(-1, truth.centers.shape[2], 2)
    out = []
    for p in range(peaks.n_positions):
        s = slice(peaks.offsets[p], peaks.offsets[p + 1])
        found = np.stack([peaks.qx[s], peaks.qy[s]], axis=1)
        dist, idx = cKDTree(centers[p]).query(found)
        out.append((found - centers[p][idx], np.where(dist < 1.5, idx, -1)))
    return out


def bounds(sim, n_positions: int) -> np.ndarray:
    """CRB rms per (position, disk) for the first ``n_positions`` positions."""
    ry = sim.truth.centers.shape[1]
    rows = []
    for p in range(n_positions):
        b = simulate.crystal_disk_crb(sim, divmod(p, ry))
        rows.append(b.rms)
    return np.array(rows)


def report(label, sim, peaks, crb=None):
    pairs = matched(peaks, sim.truth)
    order = sim.truth.order
    print(label)
    for o in range(4):
        errs, bnds = [], []
        for p, (err, idx) in enumerate(pairs):
            ok = idx >= 0
            sel = ok & (order[np.maximum(idx, 0)] == o)
            errs.append(err[sel])
            if crb is not None and p < len(crb):
                bnds.append(crb[p][idx[sel]])
        e = np.concatenate(errs)
        rms = np.sqrt(np.mean(np.sum(e**2, axis=1)))
        line = f"  order {o}: n={len(e):5d}  rmse {rms:.4f} px  bias ({e[:, 0].mean():+.4f}, "
        line += f"{e[:, 1].mean():+.4f})"
        if bnds:
            b = np.concatenate(bnds)
            bound = np.sqrt(np.nanmean(b**2))
            line += f"  bound {bound:.4f} px  ratio {rms / bound:.2f}"
        print(line)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=int, default=24)
    parser.add_argument("--kernel", default="poisson")
    parser.add_argument("--crb-positions", type=int, default=64)
    parser.add_argument("--subpixel", default=None, help="the finder's subpixel (its default)")
    args = parser.parse_args()
    print(
        "reproduce: python benchmarks/accuracy_disks.py",
        f"--scan {args.scan} --kernel {args.kernel}",
        f"--subpixel {args.subpixel}" if args.subpixel else "",
    )
    vac = simulate.simulate_vacuum(scan_shape=(10, 10), seed=4)
    probe = ProbeTemplate(kernel=args.kernel).fit(sk.DataCube(vac.data))
    extra = {} if args.subpixel is None else {"subpixel": args.subpixel}
    finder = BraggDiskFinder(probe=probe, n_jobs=2, progress=False, **extra)

    sim = simulate.simulate_crystal(scan_shape=(args.scan, args.scan), seed=11)
    peaks = finder.transform(sk.DataCube(sim.data))
    crb = bounds(sim, min(args.crb_positions, args.scan * args.scan))
    pairs = report(
        f"noisy, {args.scan}x{args.scan} positions, kernel={args.kernel}", sim, peaks, crb
    )

    amplitudes = sim.truth.amplitudes.reshape(len(pairs), -1)
    inside = sim.truth.inside.reshape(len(pairs), -1)
    wanted = (amplitudes >= 0.01 * amplitudes[:, :1]) & inside
    found = sum(np.isin(np.nonzero(w)[0], idx).sum() for w, (_, idx) in zip(wanted, pairs))
    false = sum(int((idx < 0).sum()) for _, idx in pairs)
    print(f"  recall {found / wanted.sum():.4f}  false peaks/pattern {false / len(pairs):.4f}")

    hk = sim.truth.hk
    lookup = {tuple(v): i for i, v in enumerate(hk)}
    centers = sim.truth.centers.reshape(len(pairs), -1, 2)
    proj, imbalance = [], []
    for p, (err, idx) in enumerate(pairs):
        for e, d in zip(err, idx):
            if d < 1:
                continue
            plus, minus = (
                lookup.get((hk[d][0] + 1, hk[d][1])),
                lookup.get((hk[d][0] - 1, hk[d][1])),
            )
            if plus is None or minus is None:
                continue
            axis = centers[p, plus] - centers[p, minus]
            proj.append(e @ axis / np.linalg.norm(axis))
            imbalance.append((amplitudes[p, plus] - amplitudes[p, minus]) / amplitudes[p, d])
    r = np.corrcoef(proj, imbalance)[0, 1]
    slope = np.polyfit(imbalance, proj, 1)[0]
    print(
        f"  error along g1 vs neighbours' imbalance: r = {r:+.3f} (chance level "
        f"±{1 / np.sqrt(len(proj)):.3f}), slope {slope:+.4f} px per unit imbalance"
    )

    clean = simulate.simulate_crystal(simulate.Microscope(dose=None), scan_shape=(4, 4), seed=11)
    report("noise-free, 4x4 positions", clean, finder.transform(clean.data))


if __name__ == "__main__":
    main()
