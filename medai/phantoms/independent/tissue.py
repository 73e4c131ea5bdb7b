"""Tissue classes of the independent family and their attenuation (HU) per contrast phase.

Values are means for 120 kVp; iodine enhancement scales with the drawn
``enhancement`` factor and with tube voltage (lower kVp, brighter iodine).
Lung parenchyma is not in the table: its density is a field
(:mod:`~medai.phantoms.independent.parenchyma`).
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["KVP_IODINE", "Label", "attenuation_table"]


class Label(enum.IntEnum):
    """Tissue class of a voxel before attenuation is assigned."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    SKIN = 3
    LUNG_R = 4
    LUNG_L = 5
    MYOCARDIUM = 6
    BLOOD_LEFT = 7  # left heart, aorta and arch branches
    BLOOD_RIGHT = 8  # right heart
    BLOOD_PULM_ART = 9
    BLOOD_PULM_VEIN = 10
    BLOOD_SVC = 11  # SVC and brachiocephalic veins: the injected side
    BLOOD_IVC = 12  # IVC, azygos
    BLOOD_PORTAL = 13
    AIRWAY_LUMEN = 14
    AIRWAY_WALL = 15
    ESOPHAGUS = 16
    THYROID = 17
    LIVER = 18
    SPLEEN = 19
    KIDNEY_CORTEX = 20
    KIDNEY_MEDULLA = 21
    GUT_WALL = 22
    GAS = 23
    FLUID = 24
    CHYME = 25  # food or stool: mottled
    BONE_CORTEX = 26
    BONE_MARROW = 27
    CARTILAGE = 28
    DISC = 29
    CANAL = 30
    TABLE_SHELL = 31
    TABLE_FOAM = 32
    PAD = 33
    GLAND = 34  # breast fibroglandular tissue
    THYMUS = 35
    NODE = 36


#: Iodine attenuation multiplier per tube voltage.
KVP_IODINE = {80: 1.6, 100: 1.25, 120: 1.0, 140: 0.86}

# (unenhanced HU, iodine increment venous, arterial, pulmonary)
_BASE: dict[Label, tuple[float, float, float, float]] = {
    Label.AIR: (-1000, 0, 0, 0),
    Label.FAT: (-100, 0, 0, 0),
    Label.MUSCLE: (50, 12, 8, 5),
    Label.SKIN: (35, 15, 10, 5),
    Label.LUNG_R: (-850, 0, 0, 0),
    Label.LUNG_L: (-850, 0, 0, 0),
    Label.MYOCARDIUM: (45, 70, 85, 50),
    Label.BLOOD_LEFT: (42, 125, 320, 150),
    Label.BLOOD_RIGHT: (42, 120, 200, 360),
    Label.BLOOD_PULM_ART: (42, 120, 230, 380),
    Label.BLOOD_PULM_VEIN: (42, 120, 290, 200),
    Label.BLOOD_SVC: (42, 130, 700, 850),
    Label.BLOOD_IVC: (42, 110, 30, 20),
    Label.BLOOD_PORTAL: (42, 130, 70, 40),
    Label.AIRWAY_LUMEN: (-1000, 0, 0, 0),
    Label.AIRWAY_WALL: (40, 20, 10, 5),
    Label.ESOPHAGUS: (40, 40, 25, 15),
    Label.THYROID: (105, 70, 60, 40),
    Label.LIVER: (58, 50, 18, 10),
    Label.SPLEEN: (48, 70, 60, 35),
    Label.KIDNEY_CORTEX: (32, 150, 190, 90),
    Label.KIDNEY_MEDULLA: (30, 110, 60, 30),
    Label.GUT_WALL: (40, 50, 40, 20),
    Label.GAS: (-1000, 0, 0, 0),
    Label.FLUID: (8, 0, 0, 0),
    Label.CHYME: (20, 0, 0, 0),
    Label.BONE_CORTEX: (950, 0, 0, 0),
    Label.BONE_MARROW: (190, 20, 15, 10),
    Label.CARTILAGE: (110, 10, 5, 0),
    Label.DISC: (85, 10, 5, 0),
    Label.CANAL: (20, 5, 5, 0),
    Label.TABLE_SHELL: (450, 0, 0, 0),
    Label.TABLE_FOAM: (-880, 0, 0, 0),
    Label.PAD: (-780, 0, 0, 0),
    Label.GLAND: (25, 15, 10, 5),
    Label.THYMUS: (35, 20, 15, 10),
    Label.NODE: (40, 45, 30, 20),
}
_PHASES = ("none", "venous", "arterial", "pulmonary")


def attenuation_table(
    phase: str, *, enhancement: float, kvp: int, age_years: int, rng: np.random.Generator
) -> np.ndarray:
    """HU per :class:`Label` for one scan, with patient variation drawn from ``rng``.

    Args:
        phase: ``"none"``, ``"venous"``, ``"arterial"`` or ``"pulmonary"``.
        enhancement: scales all iodine increments (bolus, cardiac output).
        kvp: tube voltage; scales iodine by :data:`KVP_IODINE`.
        age_years: bone density falls and cartilage calcifies with age.
        rng: patient variation (fat, liver, bone).
    """
    if phase not in _PHASES:
        raise ValueError(f"phase must be one of {_PHASES}, not {phase!r}")
    column = _PHASES.index(phase)
    iodine = enhancement * KVP_IODINE.get(kvp, 1.0)
    table = np.zeros(len(Label), dtype=np.float32)
    for label, values in _BASE.items():
        table[label] = values[0] + (values[column] * iodine if column else 0.0)
    table[Label.FAT] += rng.normal(0.0, 8.0)
    table[Label.LIVER] += rng.normal(0.0, 6.0) - (25.0 if rng.random() < 0.12 else 0.0)  # some fatty livers
    table[Label.MUSCLE] += rng.normal(0.0, 5.0)
    osteopenia = float(np.clip((age_years - 35) / 50.0, 0.0, 1.0))
    table[Label.BONE_MARROW] -= 90.0 * osteopenia * rng.uniform(0.5, 1.0)
    table[Label.BONE_CORTEX] -= 250.0 * osteopenia * rng.uniform(0.3, 1.0)
    table[Label.CARTILAGE] += 250.0 * float(np.clip((age_years - 30) / 50.0, 0.0, 1.0)) * rng.uniform(0.0, 1.0)
    table[Label.THYMUS] = table[Label.THYMUS] if age_years < 30 else table[Label.FAT] + 20.0
    return table
