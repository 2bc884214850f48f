"""Accuracy of the whole workflow's strain maps against the truth and the Cramér–Rao bound.

Runs ``strainkit demo`` (:func:`strainkit.demo.run_demo`: every calibration fitted from
the simulated files, nothing taken from the truth) on the demo conditions (64 x 64 scan,
128 x 128 detector, 2e5 e⁻/pattern, ellipse 1.025, flip, rotation −23°, fields
2 % / −1 % / 0.5 % / 0.3°), then compares with the simulation's truth:

* RMS error of exx, eyy, exy (%) and θ (°) over the valid positions, next to the RMS of
  the per-position Cramér–Rao bound (:func:`strainkit.simulate.crystal_strain_crb`: the
  position's own disk positions and amplitudes, every disk on the detector) and their
  ratio;
* the slope (and intercept) of measured against true;
* the fraction of positions with |error| < 2σ (σ the StrainMap's standard errors);
* the relative error of the absolute lattice parameters a and b against their bound.

The bound is computed at every ``--bound-step``-th position in each direction (about
30 ms a position); its RMS over that grid stands for the map's.

Run: ``python benchmarks/accuracy_strain.py [--scan 64] [--seed 0] [--bound-step 2]``
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from strainkit import simulate
from strainkit.demo import run_demo


def _slope(measured: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(true, measured, 1)
    return float(slope), float(intercept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bound-step", type=int, default=2)
    args = parser.parse_args()
    print(
        f"reproduce: python benchmarks/accuracy_strain.py --scan {args.scan} --seed {args.seed} "
        f"--bound-step {args.bound_step}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(tmp, seed=args.seed, scan=args.scan, progress=False)
    strain = result["strain_map"]
    for name, measured, truth, unit in result["calibrations"]:
        print(f"  {name:<14} measured {measured!s:>12.12}  truth {truth!s:>12.12} {unit}")
    # the same experiment, regenerated in memory (each scan has its own random stream)
    sim = simulate.simulate_workflow(
        seed=args.seed,
        vacuum_shape=(1, 1),
        calibration_shape=(1, 1),
        image_shape=(48, 48),
        n_features=2,
        experiment_shape=(args.scan, args.scan),
    ).experiment
    t = sim.truth
    where = np.zeros(t.exx.shape, bool)
    where[:: args.bound_step, :: args.bound_step] = True
    bound = simulate.crystal_strain_crb(sim, positions=where)
    valid = np.asarray(strain.mask, bool)
    use = valid & where
    fields = {
        "exx": (t.exx, 100.0, "%"),
        "eyy": (t.eyy, 100.0, "%"),
        "exy": (t.exy, 100.0, "%"),
        "theta_deg": (t.theta_deg, 1.0, "°"),
    }
    print(f"{args.scan}x{args.scan} scan, {valid.sum()} valid positions; bound at {use.sum()}")
    print(
        f"  {'field':<10}{'RMSE':>10}{'bound':>10}{'ratio':>8}{'slope':>10}{'intercept':>11}"
        f"{'|e|<2σ':>8}"
    )
    for name, (true, scale, unit) in fields.items():
        measured = np.asarray(getattr(strain, name))
        sigma = np.asarray(getattr(strain, f"sigma_{name}"))
        err = (measured - true)[valid]
        rmse = np.sqrt(np.mean(err**2)) * scale
        b = np.sqrt(np.mean(bound[name][use] ** 2)) * scale
        slope, intercept = _slope(measured[valid], true[valid])
        cover = np.mean(np.abs(err) < 2 * sigma[valid])
        print(
            f"  {name:<10}{rmse:>9.4f}{unit:1}{b:>9.4f}{unit:1}{rmse / b:>8.3f}{slope:>10.4f}"
            f"{intercept * scale:>10.4f}{unit:1}{cover:>8.3f}"
        )
    # absolute lattice parameters: A = G⁻ᵀ of the true local reciprocal lattice (Å)
    g = np.stack([t.g1, t.g2], axis=-1)
    a_true = np.linalg.inv(np.swapaxes(g, -1, -2))
    lengths = {"a": np.hypot(*a_true[..., :, 0].T).T, "b": np.hypot(*a_true[..., :, 1].T).T}
    for name, rel_name in (("a", "a_rel"), ("b", "b_rel")):
        rel = (np.asarray(getattr(strain, name)) / lengths[name] - 1)[valid]
        b = np.sqrt(np.mean(bound[rel_name][use] ** 2))
        rmse = np.sqrt(np.mean(rel**2))
        print(
            f"  {name} (Å): relative RMSE {rmse:.2e}  bound {b:.2e}  ratio {rmse / b:.3f}  "
            f"mean {rel.mean():+.1e}"
        )


if __name__ == "__main__":
    main()
