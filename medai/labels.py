"""The vocabulary every stage shares: the class names, the severity grades and the intended-use line.

One place for both, so the manifest, the decision rule, the phantom world, the
results columns and the reports cannot disagree about a label's spelling or a
grade's bounds.
"""

from __future__ import annotations

import enum
import math

__all__ = ["CLASS_NAMES", "INTENDED_USE", "LESION_NOISE_FLOOR_PERCENT", "Severity", "severity_from_percent"]

#: Shown wherever results are shown (CLI, reports, result objects, the viewer).
INTENDED_USE = "Research use only. Not a medical device; not for diagnosis."

#: Class names in model output order.
CLASS_NAMES: tuple[str, ...] = ("normal", "covid19", "other_pneumonia")

# Below this lesion percentage a lung is graded CT-0 ("no lesion"): the method's detection limit. Lesion-free
# held-out phantoms read 0-0.9 % (partial volume at the hilum and the pleura, thick dependent atelectasis); 19 of
# the 20 lesion-free tuning phantoms (seeds 5000 and 7000) stay below 1 %, one reads 2.2 %. The smallest burden
# the phantoms draw (severity 0.01) is 1.1-1.3 % of the lung (docs/benchmarks.md).
LESION_NOISE_FLOOR_PERCENT = 1.0


class Severity(enum.StrEnum):
    """MosMedData CT severity grade from the share of lung volume with opacities."""

    CT_0 = "CT-0"  # no lesion (below LESION_NOISE_FLOOR_PERCENT)
    CT_1 = "CT-1"  # < 25 %
    CT_2 = "CT-2"  # 25 % .. < 50 %
    CT_3 = "CT-3"  # 50 % .. < 75 %
    CT_4 = "CT-4"  # >= 75 %

    @property
    def grade(self) -> int:
        """The grade as an integer 0..4."""
        return int(self.value[-1])

    def __str__(self) -> str:
        return self.value


def severity_from_percent(lesion_percent: float) -> Severity:
    """MosMedData grade of a lesion percentage (0..100).

    Example:
        >>> severity_from_percent(0.0), severity_from_percent(25.0), severity_from_percent(80.0)
        (<Severity.CT_0: 'CT-0'>, <Severity.CT_2: 'CT-2'>, <Severity.CT_4: 'CT-4'>)
    """
    if not math.isfinite(lesion_percent) or not 0.0 <= lesion_percent <= 100.0:
        raise ValueError(f"lesion_percent must be a number in [0, 100], not {lesion_percent}")
    if lesion_percent < LESION_NOISE_FLOOR_PERCENT:
        return Severity.CT_0
    if lesion_percent < 25.0:
        return Severity.CT_1
    if lesion_percent < 50.0:
        return Severity.CT_2
    if lesion_percent < 75.0:
        return Severity.CT_3
    return Severity.CT_4
