"""Test worlds with exact ground truth: where the model was trained, just outside it, and far from it.

=====================  =================================================================================
world                  what it is
=====================  =================================================================================
``train``              in-distribution: the training generator's ranges (:mod:`medai.phantoms.synthetic`,
                       ``split="train"``), seeds never trained on
``heldout``            leave-extremes-out: every acquisition factor just outside the training ranges
``independent-val``    a second phantom family written independently of the training generator
                       (:mod:`medai.phantoms.independent`): choices between model variants are made here
``independent-test``   the same family, other seeds: reported only, never used for a choice
``real``               the one real patient (:mod:`medai.evaluation.real_ct`): as it is, reconstructed
                       otherwise, and with inserted lesions
``real-sweep``         the real patient's normal scan under acquisition changes, one or two at a time
                       (kernels, noise, tilt, 5 mm and shallow-breath copies combined, no IV contrast,
                       cardiac and breathing motion, emphysema, dependent atelectasis): normals only
``real-atelectasis``   the real patient's normal scan with dependent atelectasis drawn 24 ways (band
                       thickness 5-20 mm, how far forward it reaches, one lower lobe or both): normals only
=====================  =================================================================================

:func:`world_cases` yields :class:`TruthCase` lazily (one volume in memory at a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medai.labels import CLASS_NAMES
from medai.volume import Volume

__all__ = ["REAL_WORLDS", "WORLDS", "TruthCase", "world_cases"]

WORLDS = ("train", "heldout", "independent-val", "independent-test", "real", "real-sweep", "real-atelectasis")
# Worlds of the one real patient: a fixed set of cases (``n`` None takes them all).
REAL_WORLDS = ("real", "real-sweep", "real-atelectasis")

# Seed streams of the synthetic worlds: disjoint from training (0.., 200_000.., 300_000..) and from one another.
_SEED_BASE = {"train": 7_000_000, "heldout": 8_000_000}


@dataclass(frozen=True, eq=False)
class TruthCase:
    """One test case and what it truly is.

    Attributes:
        case_id: unique within its world.
        world: one of :data:`WORLDS`.
        label: the true class.
        volume: the CT.
        lesion_percent: true opacity volume / lung volume, 0..100.
        lung_volume_ml: true lung volume.
        pattern: the disease pattern (``none``, ``covid``, ``lobar``, ``segmental``, ``focal``, ...).
        factors: acquisition and patient factors, for subgroups.
        lesion_mask: the true lesions, uint8 0 / 1 ground glass / 2 consolidation on the volume's grid (None where
            the world does not keep it).
    """

    case_id: str
    world: str
    label: str
    volume: Volume
    lesion_percent: float
    lung_volume_ml: float
    pattern: str
    factors: dict[str, Any] = field(default_factory=dict)
    lesion_mask: np.ndarray | None = field(default=None, repr=False, compare=False)


def _lung_ml(mask: np.ndarray, volume: Volume) -> float:
    return float(np.count_nonzero(mask)) * volume.voxel_volume_ml


def _synthetic(world: str, n: int, seed: int, matrix: int, start: int) -> Iterator[TruthCase]:
    from medai.phantoms import synthetic

    split = "train" if world == "train" else "heldout"
    for i in range(start, n):
        rng = np.random.default_rng(_SEED_BASE[world] + seed * 10_000 + i)
        spec = synthetic.sample_spec(rng, label=CLASS_NAMES[i % len(CLASS_NAMES)], split=split, matrix=matrix)
        ph = synthetic.generate(spec, fast=matrix <= 256)
        acq = spec.acquisition
        factors = {
            "slice_thickness_mm": acq.slice_thickness_mm,
            "pixel_spacing_mm": acq.pixel_spacing_mm,
            "noise_hu": acq.noise_hu,
            "kernel_sharpness": acq.kernel_sharpness,
            "patient_scale": acq.patient_scale,
            "contrast": acq.contrast,
            "arms": acq.arms,
            "range_below_mm": acq.range_below_mm,
        }
        yield TruthCase(
            f"{world}-s{seed}-{i:04d}",
            world,
            spec.label,
            ph.volume,
            ph.lesion_percent,
            _lung_ml(ph.lung_mask, ph.volume),
            ph.pattern,
            factors,
            ph.lesion_mask,
        )


def _independent(world: str, n: int, seed: int, matrix: int | None, start: int) -> Iterator[TruthCase]:
    from medai.phantoms.independent import generate_independent, sample_independent_spec

    split = world.split("-", 1)[1]
    rng = np.random.default_rng([seed, 0 if split == "val" else 1])
    for i in range(n):
        # the specs share one stream: the skipped cases are drawn (cheap) but not generated (seconds each)
        spec = sample_independent_spec(rng, label=CLASS_NAMES[i % len(CLASS_NAMES)], split=split, matrix=matrix)
        if i < start:
            continue
        ph = generate_independent(spec)
        yield TruthCase(
            f"{world}-s{seed}-{i:04d}",
            world,
            spec.label,
            ph.volume,
            float(ph.lesion_percent),
            float(ph.lung_volume_ml),
            spec.pattern,
            dict(spec.factors),
            ph.lesion_mask,
        )


def _real(world: str, n: int | None, seed: int, start: int) -> Iterator[TruthCase]:
    from medai.evaluation.real_ct import acquisition_sweep, atelectasis_cases, real_cases

    make = {"real": real_cases, "real-sweep": acquisition_sweep, "real-atelectasis": atelectasis_cases}[world]
    cases = make(seed=seed)
    for i, case in enumerate(cases):
        if n is not None and i >= n:
            return
        if i < start:
            continue
        yield TruthCase(
            f"{world}-{case.name}",
            world,
            case.label,
            case.volume,
            case.lesion_percent,
            case.lung_volume_ml,
            str(case.factors.get("kind", "none")),
            {"variant": case.name, **case.factors},
            case.lesion_mask,
        )


def world_cases(
    world: str, n: int | None, *, seed: int = 0, matrix: int | None = 256, start: int = 0
) -> Iterator[TruthCase]:
    """The first ``n`` cases of ``world`` (classes in turn), generated lazily; from case ``start`` on when given.

    Case ``i`` of a seed set is the same whatever ``n`` and ``start`` are, so more cases extend fewer.

    Args:
        world: one of :data:`WORLDS`.
        n: number of cases (the real patient's worlds, :data:`REAL_WORLDS`, are fixed sets; None takes them all).
        seed: the seed set (a different ``seed`` gives different cases of the same world).
        matrix: in-plane matrix of the phantoms (None: the independent family draws its own, 256-512).

    Raises:
        ValueError: unknown world, or no ``n`` for a synthetic world.

    Example:
        >>> case = next(world_cases("train", 1, matrix=96))
        >>> case.label, case.world
        ('normal', 'train')
    """
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, not {world!r}")
    if world in REAL_WORLDS:
        return _real(world, n, seed, start)
    if n is None or n < 1:
        raise ValueError(f"n must be a positive number of cases for world {world!r}, not {n!r}")
    if world.startswith("independent"):
        return _independent(world, n, seed, matrix, start)
    return _synthetic(world, n, seed, matrix or 256, start)
