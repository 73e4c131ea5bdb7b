"""What one independent phantom is: its label, its lesion target and every drawn patient and scanner factor.

:func:`sample_independent_spec` draws an :class:`IndependentSpec`; the generator
(:func:`~medai.phantoms.independent.phantom.generate_independent`) turns it into
voxels and reads nothing else, so a spec written to JSON rebuilds the same case.
All factors are plain JSON values (numbers, strings, booleans, lists, dicts).

The seed space is split by parity: ``split="test"`` draws odd seeds, ``"val"``
even ones, so the two splits share one distribution and never share a case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medai.labels import CLASS_NAMES

__all__ = [
    "LOBES",
    "PATTERNS",
    "SPLITS",
    "IndependentSpec",
    "expected_lung_volume_ml",
    "fov_half_extent_mm",
    "sample_independent_spec",
]

#: Lesion pattern names by label.
PATTERNS: dict[str, tuple[str, ...]] = {
    "normal": ("none",),
    "covid19": ("covid",),
    "other_pneumonia": ("lobar", "segmental", "focal"),
}
#: Seed streams: parity of the seed.
SPLITS: dict[str, int] = {"val": 0, "test": 1}
#: Lobe names (right upper/middle/lower, left upper/lower) and their nominal share of the total lung volume
#: in this family's anatomy (means over 40 drawn patients on the planning grid).
LOBES: dict[str, float] = {"RUL": 0.163, "RML": 0.1, "RLL": 0.271, "LUL": 0.213, "LLL": 0.254}

_LABEL_P = (0.35, 0.35, 0.30)
_MATRICES = (256, 320, 384, 448, 512)
_SLICES_MM = (1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_SLICES_P = (0.28, 0.1, 0.14, 0.16, 0.1, 0.22)
_KERNELS = ("soft", "standard", "sharp", "bone")
_KERNEL_NAMES = {
    "GE MEDICAL SYSTEMS": {"soft": "SOFT", "standard": "STANDARD", "sharp": "LUNG", "bone": "BONEPLUS"},
    "SIEMENS": {"soft": "B20f", "standard": "B31f", "sharp": "B60f", "bone": "B70f"},
    "Philips": {"soft": "A", "standard": "B", "sharp": "L", "bone": "YC"},
    "TOSHIBA": {"soft": "FC03", "standard": "FC13", "sharp": "FC51", "bone": "FC86"},
}
# Noise (HU, water at the body centre) of a 2.5 mm slice at the reference dose, per kernel family.
_KERNEL_NOISE_HU = {"soft": 9.0, "standard": 13.0, "sharp": 36.0, "bone": 52.0}
_HABITUS = ("small", "slim", "average", "overweight", "obese")
# width scale range and subcutaneous fat range (mm) per habitus
_HABITUS_WIDTH = {
    "small": (0.8, 0.9),
    "slim": (0.88, 0.98),
    "average": (0.95, 1.05),
    "overweight": (1.0, 1.1),
    "obese": (1.04, 1.16),
}
_HABITUS_FAT_MM = {
    "small": (3.0, 10.0),
    "slim": (3.0, 10.0),
    "average": (8.0, 22.0),
    "overweight": (20.0, 38.0),
    "obese": (35.0, 70.0),
}
# Lung volume (ml) of the reference adult (all scales 1, inspiration) in this family's anatomy.
_REFERENCE_LUNG_ML = 4560.0


@dataclass(frozen=True)
class IndependentSpec:
    """One case of the independent phantom family.

    Attributes:
        label: one of :data:`~medai.labels.CLASS_NAMES`.
        seed: anatomy seed; odd for the test split, even for validation.
        lesion_fraction: target lesion share of the total lung volume (0 for normal).
        pattern: ``"none"`` (normal), ``"covid"`` (covid19), ``"lobar"``, ``"segmental"`` or ``"focal"``.
        factors: every drawn patient and acquisition factor, plain JSON values.
    """

    label: str
    seed: int
    lesion_fraction: float
    pattern: str
    factors: dict[str, Any]

    def __post_init__(self) -> None:
        if self.label not in PATTERNS:
            raise ValueError(f"label must be one of {CLASS_NAMES}, not {self.label!r}")
        if self.pattern not in PATTERNS[self.label]:
            raise ValueError(
                f"pattern of a {self.label} case must be one of {PATTERNS[self.label]}, not {self.pattern!r}"
            )
        if not 0.0 <= self.lesion_fraction < 1.0 or (self.label == "normal") != (self.lesion_fraction == 0.0):
            raise ValueError(
                f"lesion_fraction must be 0 for normal and in (0, 1) otherwise, not {self.lesion_fraction} "
                f"for {self.label}"
            )


def sample_independent_spec(
    rng: np.random.Generator, *, label: str | None = None, split: str = "test", matrix: int | None = None
) -> IndependentSpec:
    """Draw one case: a seed from the split's stream, then the label, the disease and every factor.

    Args:
        rng: the caller's generator; only the seed is drawn from it.
        label: force a label (default: drawn, 35 % normal, 35 % covid19, 30 % other pneumonia).
        split: ``"test"`` (odd seeds, for reporting) or ``"val"`` (even seeds, for model choice).
        matrix: force the image matrix; the pixel size is then the drawn field of view / matrix
            (default: drawn from 256-512 so that pixels are 0.6-0.98 mm).

    Returns:
        The spec; :func:`~medai.phantoms.independent.generate_independent` builds it.

    Example:
        >>> spec = sample_independent_spec(np.random.default_rng(0), label="covid19")
        >>> spec.pattern, spec.seed % 2
        ('covid', 1)
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, not {split!r}")
    if label is not None and label not in CLASS_NAMES:
        raise ValueError(f"label must be one of {CLASS_NAMES} or None, not {label!r}")
    if matrix is not None and not (isinstance(matrix, int | np.integer) and 64 <= matrix <= 1024):
        raise ValueError(f"matrix must be an integer in [64, 1024] or None, not {matrix!r}")
    seed = int(rng.integers(0, 2**40)) * 2 + SPLITS[split]
    r = np.random.default_rng([seed, 0x5EC])
    drawn_label = str(r.choice(CLASS_NAMES, p=_LABEL_P))
    label = label or drawn_label
    factors = _draw_patient(r)
    factors.update(_draw_acquisition(r, factors, matrix))
    pattern, fraction, lesion = _draw_disease(r, label, factors)
    factors["lesion"] = lesion
    return IndependentSpec(label=label, seed=seed, lesion_fraction=fraction, pattern=pattern, factors=factors)


def expected_lung_volume_ml(factors: dict[str, Any]) -> float:
    """Approximate total lung volume (ml) of the drawn patient, used to size focal lesions before generation."""
    body = factors["body"]
    volume = _REFERENCE_LUNG_ML * body["width_scale"] * body["depth_scale"] * body["height_scale"]
    return volume * (0.68 if factors["lung_state"] == "expiration" else 1.0)


def fov_half_extent_mm(factors: dict[str, Any]) -> float:
    """Lateral half-extent (mm) of the patient including arms beside the body, as the generator builds it."""
    body = factors["body"]
    chest = 1.04 * (142.0 * body["width_scale"] + 14.0 * body["muscle_scale"] + 1.05 * body["fat_mm"])
    if factors["arms"] == "down":
        return chest + 8.0 + 2.0 * (44.0 * body["width_scale"] + 0.8 * body["fat_mm"])
    return chest


def _uniform(r: np.random.Generator, low: float, high: float, digits: int = 3) -> float:
    return round(float(r.uniform(low, high)), digits)


def _draw_patient(r: np.random.Generator) -> dict[str, Any]:
    sex = "F" if r.random() < 0.5 else "M"
    adolescent = r.random() < 0.08
    age = int(r.integers(13, 18)) if adolescent else int(r.integers(18, 91))
    habitus = "small" if adolescent else str(r.choice(_HABITUS, p=(0.1, 0.2, 0.35, 0.2, 0.15)))
    low, high = _HABITUS_WIDTH[habitus]
    width = float(r.uniform(low, high)) * (0.95 if sex == "F" else 1.0)
    if habitus == "small":
        height = float(r.uniform(0.8, 0.9))
    else:
        height = float(np.clip(r.normal(0.94 if sex == "F" else 1.0, 0.04), 0.86, 1.1))
    fat_low, fat_high = _HABITUS_FAT_MM[habitus]
    body: dict[str, Any] = {
        "habitus": habitus,
        "height_scale": round(height, 3),
        "width_scale": round(width, 3),
        "depth_scale": round(width * float(r.uniform(0.9, 1.08)), 3),
        "fat_mm": _uniform(r, fat_low, fat_high, 1),
        "muscle_scale": _uniform(r, 0.75, 1.25),
    }
    breasts = sex == "F" and age >= 14 and r.random() < 0.92
    emphysema = "none"
    if age > 40 and r.random() < 0.28:
        emphysema = "mild" if r.random() < 0.6 else "moderate"
    return {
        "sex": sex,
        "age_years": age,
        "body": body,
        "breast_mm": _uniform(r, 12.0, 35.0 + float(body["fat_mm"]), 1) if breasts else 0.0,
        "arms": "down" if r.random() < 0.3 else "up",
        "table": bool(r.random() < 0.8),
        "lung_state": "expiration" if r.random() < 0.12 else "inspiration",
        "atelectasis": _uniform(r, 0.2, 1.0) if r.random() < 0.35 else 0.0,
        "emphysema": emphysema,
        "contrast": str(r.choice(("none", "venous", "arterial", "pulmonary"), p=(0.4, 0.3, 0.15, 0.15))),
        "enhancement": _uniform(r, 0.7, 1.3),
        "scan_range": {"top_mm": _uniform(r, 15.0, 70.0, 1), "bottom_mm": _uniform(r, 15.0, 90.0, 1)},
    }


def _draw_acquisition(r: np.random.Generator, patient: dict[str, Any], matrix: int | None) -> dict[str, Any]:
    half = fov_half_extent_mm(patient)
    body = patient["body"]
    fov_mode = str(r.choice(("body", "wide", "targeted"), p=(0.6, 0.15, 0.25)))
    if fov_mode == "targeted":  # reconstructed on the lungs: chest wall and arms cut
        fov = 2.0 * (132.0 * body["width_scale"] + float(r.uniform(0.0, 30.0)))
    elif fov_mode == "wide":  # the whole patient, arms included
        fov = 2.0 * (half + float(r.uniform(5.0, 30.0)))
    else:  # the trunk, front to back and side to side (breasts included)
        chest_half = 142.0 * body["width_scale"] + 14.0 * body["muscle_scale"] + 1.05 * body["fat_mm"]
        front = 95.0 * body["depth_scale"] + 25.0 * body["muscle_scale"] + body["fat_mm"] + patient["breast_mm"]
        back = 92.0 * body["depth_scale"] + 40.0 * body["muscle_scale"] + 0.7 * body["fat_mm"]
        fov = 2.0 * (max(chest_half, front + 15.0, back + 25.0) + float(r.uniform(-5.0, 45.0)))
    fov = float(np.clip(fov, 250.0, 500.0))
    if matrix is None:
        allowed = [m for m in _MATRICES if 0.6 <= fov / m <= 0.98]
        weights = np.array([4.0 if m == 512 else 1.0 for m in allowed])
        matrix = int(r.choice(allowed, p=weights / weights.sum()))
    center = [_uniform(r, -15.0, 15.0, 1), _uniform(r, -10.0, 25.0, 1)]
    vendor = str(r.choice(tuple(_KERNEL_NAMES)))
    slice_mm = float(r.choice(_SLICES_MM, p=_SLICES_P))
    increment = slice_mm if r.random() < 0.8 else max(0.8, round(slice_mm * float(r.uniform(0.5, 0.8)), 1))
    kernel = str(r.choice(_KERNELS, p=(0.15, 0.4, 0.35, 0.1)))
    iterative = _uniform(r, 0.2, 0.7) if r.random() < 0.5 else 0.0
    kvp = int(r.choice((80, 100, 120, 140), p=(0.05, 0.25, 0.6, 0.1)))
    dose = round(math.exp(float(r.uniform(math.log(0.15), math.log(1.5)))), 3)
    noise = _KERNEL_NOISE_HU[kernel] * math.sqrt(2.5 / slice_mm) / math.sqrt(dose) * (1.0 - 0.45 * iterative)
    noise *= {80: 1.35, 100: 1.12, 120: 1.0, 140: 0.92}[kvp]
    respiratory = _uniform(r, 3.0, 12.0, 1) if r.random() < 0.15 else 0.0
    return {
        "matrix": matrix,
        "fov_mm": round(fov, 2),
        "pixel_mm": round(fov / matrix, 5),
        "fov_mode": fov_mode,
        "fov_center_mm": center,
        "fov_circle": bool(r.random() < 0.7),
        "fov_cut": bool(half > fov / 2.0 - abs(center[0])),
        "slice_mm": slice_mm,
        "increment_mm": float(increment),
        "vendor": vendor,
        "kernel": kernel,
        "kernel_name": _KERNEL_NAMES[vendor][kernel],
        "iterative": iterative,
        "kvp": kvp,
        "dose": dose,
        "aec": bool(r.random() < 0.85),
        "noise_hu": round(float(np.clip(noise, 5.0, 140.0)), 2),
        "motion": {
            "respiratory_mm": respiratory,
            "respiratory_at": _uniform(r, 0.15, 0.85),
            "cardiac_mm": _uniform(r, 1.5, 5.0, 1) if r.random() < 0.3 else 0.0,
        },
        "artifacts": {
            "shoulder_streaks": bool(r.random() < (0.8 if patient["arms"] == "down" else 0.25)),
            "contrast_streaks": bool(patient["contrast"] in ("arterial", "pulmonary") and r.random() < 0.6),
        },
    }


def _draw_disease(r: np.random.Generator, label: str, factors: dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
    if label == "normal":
        return "none", 0.0, {}
    if label == "covid19":
        if r.random() < 0.5:
            fraction = math.exp(float(r.uniform(math.log(0.005), math.log(0.08))))
        else:
            fraction = float(r.uniform(0.08, 0.7))
        stage = str(r.choice(("early", "progressive", "peak", "late"), p=(0.3, 0.3, 0.25, 0.15)))
        if fraction > 0.3 and stage == "early":
            stage = "progressive"
        consolidation = {"early": (0.0, 0.06), "progressive": (0.05, 0.3), "peak": (0.2, 0.55), "late": (0.1, 0.4)}
        low, high = consolidation[stage]
        lesion = {
            "stage": stage,
            "bilateral": bool(fraction > 0.1 or r.random() < 0.85),
            "foci": round(2 + 45 * math.sqrt(fraction) * float(r.uniform(0.6, 1.4))),
            "consolidation_share": _uniform(r, low, high),
            "crazy_paving": bool(r.random() < (0.15 if stage == "early" else 0.4)),
            "subpleural_mm": _uniform(r, 12.0, 30.0, 1),
        }
        return "covid", round(fraction, 5), lesion
    pattern = str(r.choice(PATTERNS["other_pneumonia"]))
    if pattern == "focal":
        diameter = float(r.uniform(15.0, 50.0))
        halo = _uniform(r, 3.0, 10.0, 1) if r.random() < 0.4 else 0.0
        volume = math.pi / 6.0 * (diameter + 2.0 * halo) ** 3 / 1000.0
        fraction = volume / expected_lung_volume_ml(factors)
        lesion = {"diameter_mm": round(diameter, 1), "halo_mm": halo, "lobulation": _uniform(r, 0.1, 0.35)}
        return pattern, round(fraction, 6), lesion
    lobe = str(r.choice(tuple(LOBES), p=(0.17, 0.1, 0.3, 0.18, 0.25)))
    if pattern == "lobar":
        coverage = float(r.uniform(0.6, 0.97))
        lesion = {"lobe": lobe, "coverage": round(coverage, 3), "ggo_share": _uniform(r, 0.04, 0.2)}
        return pattern, round(coverage * LOBES[lobe], 5), lesion
    fraction = float(r.uniform(0.012, 0.06))
    lesion = {"lobe": lobe, "ggo_share": _uniform(r, 0.1, 0.4), "spread_deg": _uniform(r, 0.0, 360.0, 1)}
    return pattern, round(fraction, 5), lesion
