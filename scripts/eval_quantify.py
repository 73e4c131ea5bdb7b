"""Measure medai.quantify against phantom ground truth: lung Dice, lesion % error, severity grade, time.

Held-out patients (seeds from 10_000 up, never used for training), the three classes in turn,
severities spread over the grades, train-like acquisitions at full matrix (default 512).

Example:
    python scripts/eval_quantify.py --n 6 --matrix 512
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medai.quantify import quantify, severity_from_percent
from medai.synthetic import CLASSES, Acquisition, PhantomSpec, generate

SEVERITIES = (0.03, 0.2, 0.45, 0.1, 0.3, 0.55, 0.7, 0.85)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, int(a.sum()) + int(b.sum())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="number of phantoms")
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--seed", type=int, default=10_000, help="first patient seed")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    header = f"{'class':16s} {'sev':>5s} {'dice':>6s} {'R':>6s} {'L':>6s} {'les_gt':>7s} {'les_est':>7s} grade"
    header += f"   {'ml':>5s} {'s':>5s}"
    print(header)
    for i in range(args.n):
        label = CLASSES[i % 3]
        acq = Acquisition(
            slice_thickness_mm=round(float(rng.uniform(1.0, 2.0)), 2),
            pixel_spacing_mm=round(float(rng.uniform(330, 420)) / args.matrix, 3),
            matrix=args.matrix,
            noise_hu=round(float(rng.uniform(6, 30)), 1),
            kernel_sharpness=round(float(rng.uniform(0.15, 0.8)), 2),
            patient_scale=round(float(rng.uniform(0.9, 1.1)), 2),
        )
        severity = 0.0 if label == "normal" else SEVERITIES[i % len(SEVERITIES)]
        ph = generate(PhantomSpec(label, severity, args.seed + i, acq))
        start = time.perf_counter()
        q = quantify(ph.volume)
        seconds = time.perf_counter() - start
        lungs = q.grid.upsample(q.lung_mask)
        dice = _dice(lungs > 0, ph.lung_mask > 0)
        right, left = _dice(lungs == 1, ph.lung_mask == 1), _dice(lungs == 2, ph.lung_mask == 2)
        truth, grade_ok = ph.lesion_percent, severity_from_percent(ph.lesion_percent) is q.severity
        rows.append((label, dice, right, left, truth, q.lesion_percent, grade_ok, seconds))
        print(
            f"{label:16s} {severity:5.2f} {dice:6.3f} {right:6.3f} {left:6.3f} {truth:7.2f} {q.lesion_percent:7.2f} "
            f"{'ok   ' if grade_ok else 'WRONG'}   {q.lung_volume_ml:5.0f} {seconds:5.2f}  {ph.volume.shape}",
            flush=True,
        )
    for name, subset in (("all", rows), *((c, [r for r in rows if r[0] == c]) for c in CLASSES)):
        if not subset:
            continue
        a = np.array([r[1:] for r in subset], dtype=np.float64)
        print(
            f"{name:16s} n={len(subset):2d}  lung dice mean {a[:, 0].mean():.3f} min {a[:, 0].min():.3f}  "
            f"per side min {a[:, 1:3].min():.3f}  lesion MAE {np.abs(a[:, 3] - a[:, 4]).mean():.2f} pts  "
            f"grade acc {a[:, 5].mean():.2f}  time mean {a[:, 6].mean():.2f} s max {a[:, 6].max():.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
