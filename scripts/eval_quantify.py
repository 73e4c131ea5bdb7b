"""Measure medai.quantify.measure against phantom ground truth: lung Dice, lesion % error, severity grade, time.

Held-out phantoms: ``sample_spec(rng, label=..., split="heldout")`` (acquisitions outside the training
ranges: 4-5 mm slices, 32-50 HU noise, extreme kernels, FOVs and patient sizes) with rng seeds from
``--seed`` up (the default 5000 is not the seed stream the quantifier was tuned on, 1000), the three
classes in turn and severities spread over the grades CT-1..CT-4 (up to 0.85). ``--timing`` also
times quantify() on a 300x512x512 series (median of 5, with the load average). ``--method`` picks the
hybrid (learned lungs, classical opacities; quantify()'s default), the learned head or the classical
HU/morphology method; ``--fullres N`` adds N held-out phantoms at their native 512 matrix
(full generator) and the timing phantom itself.

Example:
    python scripts/eval_quantify.py --n 30 --matrix 256 --method classical
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np

from medai.labels import CLASS_NAMES, severity_from_percent
from medai.phantoms.synthetic import Acquisition, Phantom, PhantomSpec, generate, sample_spec
from medai.quantify.measure import quantify
from medai.quantify.params import QuantifyParams, QuantMethod

SEVERITIES = (0.01, 0.2, 0.45, 0.7, 0.03, 0.3, 0.55, 0.85, 0.1, 0.4, 0.6, 0.15)


# The CT-0 floor before medai.quantify/4 (now LESION_NOISE_FLOOR_PERCENT): grade accuracy is also printed with it.
OLD_FLOOR_PERCENT = 0.5


def _grade_accuracy(truth: np.ndarray, estimate: np.ndarray, floor: float) -> float:
    """Grade accuracy with another CT-0 floor (truth and estimate alike); the grades above CT-0 as usual."""

    def grade(p: float) -> int:
        return 0 if p < floor else max(1, severity_from_percent(p).grade)

    return float(np.mean([grade(t) == grade(e) for t, e in zip(truth, estimate, strict=True)]))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, int(a.sum()) + int(b.sum())))


def _timing_phantom() -> Phantom:
    acq = Acquisition(slice_thickness_mm=1.0, pixel_spacing_mm=0.72, matrix=512, n_slices=300, noise_hu=15.0)
    return generate(PhantomSpec("covid19", 0.3, 10_000, acq))


def _timing(ph: Phantom, params: QuantifyParams, repeats: int = 5) -> None:
    quantify(ph.volume, params=params)  # warm-up: model load, allocations
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        quantify(ph.volume, params=params)
        seconds.append(time.perf_counter() - start)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"quantify ({params.method}) on {ph.volume.shape}: median {np.median(seconds):.3f} s "
        f"(runs {np.round(seconds, 3).tolist()}; load average {load}; {os.cpu_count()} cores)"
    )


def _row(label: str, pattern: str, severity: float, ph: Phantom, params: QuantifyParams) -> tuple:
    start = time.perf_counter()
    q = quantify(ph.volume, params=params)
    seconds = time.perf_counter() - start
    lungs = q.grid.upsample(q.lung_mask)
    truth_lungs = ph.lung_mask
    dice = _dice(lungs > 0, truth_lungs > 0)
    right, left = _dice(lungs == 1, truth_lungs == 1), _dice(lungs == 2, truth_lungs == 2)
    truth = ph.lesion_percent
    grade_ok = severity_from_percent(truth) is q.severity
    print(
        f"{label:16s} {pattern:16s} {severity:5.2f} {dice:6.3f} {right:6.3f} {left:6.3f} {truth:7.2f} "
        f"{q.lesion_percent:7.2f} {'ok   ' if grade_ok else 'WRONG'}  {q.lung_volume_ml:5.0f} ml {seconds:5.2f} s "
        f"{ph.volume.shape}",
        flush=True,
    )
    return (label, dice, right, left, truth, q.lesion_percent, grade_ok, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="number of phantoms")
    parser.add_argument("--matrix", type=int, default=256, help="in-plane matrix (FOV kept)")
    parser.add_argument("--seed", type=int, default=5000, help="first rng seed of the held-out specs")
    parser.add_argument("--timing", action="store_true", help="also time a 300x512x512 series")
    parser.add_argument("--method", choices=[m.value for m in QuantMethod], default="hybrid", help="quantify method")
    parser.add_argument("--fullres", type=int, default=0, help="also N held-out phantoms at their native 512 matrix")
    parser.add_argument(
        "--split", choices=("heldout", "train"), default="heldout", help="acquisition ranges (seeds never trained on)"
    )
    args = parser.parse_args(argv)
    params = QuantifyParams(method=QuantMethod(args.method))
    rows = []
    columns = ("dice", "R", "L", "les_gt", "les_est")
    print(f"{'class':16s} {'pattern':16s} {'sev':>5s} " + " ".join(f"{c:>7s}" for c in columns) + " grade")
    for i in range(args.n):
        label = CLASS_NAMES[i % 3]
        spec = sample_spec(np.random.default_rng(args.seed + i), label=label, split=args.split)
        fov = spec.acquisition.matrix * spec.acquisition.pixel_spacing_mm
        acq = replace(spec.acquisition, matrix=args.matrix, pixel_spacing_mm=round(fov / args.matrix, 4))
        severity = 0.0 if label == "normal" else SEVERITIES[(i // 3 * 2 + i % 3) % len(SEVERITIES)]
        ph = generate(replace(spec, acquisition=acq, severity=severity), fast=args.matrix <= 256)
        rows.append(_row(label, ph.pattern, severity, ph, params))
    full_rows = []
    for i in range(args.fullres):
        label = CLASS_NAMES[i % 3]
        spec = sample_spec(np.random.default_rng(args.seed + 100 + i), label=label, split=args.split, matrix=512)
        severity = 0.0 if label == "normal" else SEVERITIES[(5 * i + 1) % len(SEVERITIES)]
        ph = generate(replace(spec, severity=severity))
        full_rows.append(_row(label, ph.pattern, severity, ph, params))
    timing_phantom = _timing_phantom() if args.timing or args.fullres else None
    if args.fullres and timing_phantom is not None:
        full_rows.append(_row("covid19", "timing", 0.3, timing_phantom, params))
    groups = (("all", rows), *((c, [r for r in rows if r[0] == c]) for c in CLASS_NAMES), ("fullres 512", full_rows))
    for name, subset in groups:
        if not subset:
            continue
        a = np.array([r[1:] for r in subset], dtype=np.float64)
        print(
            f"{name:16s} n={len(subset):2d}  lung dice mean {a[:, 0].mean():.3f} median {np.median(a[:, 0]):.3f} "
            f"min {a[:, 0].min():.3f}  per side min {a[:, 1:3].min():.3f}  "
            f"lesion MAE {np.abs(a[:, 3] - a[:, 4]).mean():.2f} pts  grade acc {a[:, 5].mean():.2f} "
            f"({_grade_accuracy(a[:, 3], a[:, 4], OLD_FLOOR_PERCENT):.2f} with a {OLD_FLOOR_PERCENT} % CT-0 floor)"
        )
    if args.timing and timing_phantom is not None:
        _timing(timing_phantom, params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
