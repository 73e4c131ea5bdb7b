"""The decision layer: class probabilities from the network's logits *and* the measured lung findings.

A network that has only seen one world of images can be confidently wrong in another (a real scan with
contrast, bowel gas or a different noise texture). The quantification is evidence of another kind: how
much of the lungs is opaque, where (peripheral, lower, both sides) and how dense. The decision layer is a
multinomial logistic regression over standardised features of both, fitted on validation cases (never on
the test worlds) and stored with the model, so a lung without opacities needs very strong image evidence
to be called sick, and the probabilities stay calibrated.

Feature sets (:data:`FEATURE_SETS`): ``cnn`` (the network's logits only: the classic temperature-scaled
classifier), ``findings`` (the measured findings only), ``combined`` (both), and two smaller sets of findings:
``findings-no-location`` (without where the opacity lies) and ``findings-burden`` (only how much, how dense and
how bilateral). Which one ships, and how strongly regularized, is an evidence-based choice (docs/ood.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medai.preprocess import within_mm
from medai.quantify.lungs import bbox
from medai.quantify.measure import Quantification, Side, Zone

__all__ = ["FEATURE_SETS", "FINDINGS", "LOGITS", "DecisionLayer", "decision_features", "forgive"]

LOGITS = ("logit_normal", "logit_covid19", "logit_other_pneumonia")
FINDINGS = (
    "log_lesion",  # log(1 + lesion %)
    "log_ground_glass",
    "log_consolidation",
    "consolidation_share",  # consolidation / opacity
    "log_lesser_side",  # log(1 + lesion % of the less affected lung): bilateral disease
    "lower_share",  # lower-zone lesion % / mean zone lesion %
    "peripheral_share",  # opacity within 10 mm of the lung surface / all opacity
    "log_top_zone",  # log(1 + lesion % of the most affected zone): focal and lobar disease concentrate
    "zones_involved",  # share of the six zones with at least 1 % opacity
)
# Where the opacity lies (lower zones, under the pleura): learned on one phantom family's lesion shapes, these
# did not transfer to the independent family's (docs/ood.md, failure mode 2), so two smaller sets leave them out.
_LOCATION = ("lower_share", "peripheral_share")
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "cnn": LOGITS,
    "findings": FINDINGS,
    "combined": LOGITS + FINDINGS,
    "findings-no-location": tuple(f for f in FINDINGS if f not in _LOCATION),
    # how much opacity, how dense, and in both lungs or one: nothing about its shape or place
    "findings-burden": (
        "log_lesion",
        "log_ground_glass",
        "log_consolidation",
        "consolidation_share",
        "log_lesser_side",
    ),
}

# Opacity within this distance of the lung surface counts as peripheral (subpleural).
PERIPHERAL_MM = 10.0


def _peripheral_share(quant: Quantification) -> float:
    lungs = quant.lung_mask > 0
    lesion = (quant.lesion_mask > 0) & lungs
    n = int(np.count_nonzero(lesion))
    if n == 0:
        return 0.0
    box = bbox(lungs, (1, 1, 1))  # on the lungs' box; beyond it (and the volume's edge) is not lung
    near_surface = within_mm(~np.pad(lungs[box], 1), PERIPHERAL_MM, quant.grid.spacing_mm)[1:-1, 1:-1, 1:-1]
    return float(np.count_nonzero(lesion[box] & near_surface)) / n


def decision_features(logits: Sequence[float] | np.ndarray, quant: Quantification) -> dict[str, float]:
    """Every feature of :data:`LOGITS` and :data:`FINDINGS` for one case.

    Example:
        >>> import numpy as np
        >>> from medai.quantify.measure import quantify
        >>> from medai.volume import Volume
        >>> hu = np.full((8, 40, 40), -1000, np.int16); hu[:, 4:36, 4:36] = 40
        >>> hu[:, 10:30, 8:18] = -850; hu[:, 10:30, 22:32] = -850
        >>> from medai.quantify.params import QuantifyParams
        >>> q = quantify(Volume(hu, spacing_mm=(2.5, 2.5, 2.5)), params=QuantifyParams(method="classical"))
        >>> f = decision_features([1.0, -1.0, 0.0], q)
        >>> f["log_lesion"], f["logit_normal"]
        (0.0, 1.0)
    """
    z = {
        f"{side.value}_{zone.value}": quant.zone_lesion_percent.get((side, zone), 0.0) for side in Side for zone in Zone
    }
    zones = np.array(list(z.values()), dtype=np.float64)
    lower = np.mean([z[f"{side.value}_{Zone.LOWER.value}"] for side in Side])
    out = {name: float(v) for name, v in zip(LOGITS, logits, strict=True)}
    out.update(
        log_lesion=math.log1p(quant.lesion_percent),
        log_ground_glass=math.log1p(quant.ggo_percent),
        log_consolidation=math.log1p(quant.consolidation_percent),
        consolidation_share=quant.consolidation_percent / (quant.lesion_percent + 0.5),
        log_lesser_side=math.log1p(min(quant.right_lesion_percent, quant.left_lesion_percent)),
        lower_share=float(lower / (zones.mean() + 0.5)),
        peripheral_share=_peripheral_share(quant),
        log_top_zone=math.log1p(float(zones.max())),
        zones_involved=float(np.mean(zones >= 1.0)),
    )
    return out


# Burden features (log(1 + percent)) and pattern features (shares of the opacity) of FINDINGS.
_BURDEN = ("log_lesion", "log_ground_glass", "log_consolidation", "log_lesser_side", "log_top_zone")
_PATTERN = ("consolidation_share", "lower_share", "peripheral_share", "zones_involved")
# A pattern feature counts in full once the burden above the tolerance reaches a few times this (percent).
_PATTERN_HALF_PERCENT = 0.5


def forgive(features: Mapping[str, float], tolerance_percent: float) -> dict[str, float]:
    """``features`` with ``tolerance_percent`` points of measured opacity forgiven.

    Every scanner and body adds some partial-volume "opacity" that is not disease (thick slices over the
    diaphragm and vessels, the heart border, dependent lung); a layer fitted where that floor is near zero
    reads the first percent as disease. Each burden (the lesion %, its ground glass and consolidation, the
    lesser lung, the top zone) loses ``tolerance_percent`` points (never below 0), and each pattern share is
    weighted by ``e / (e + 0.5)`` with ``e`` the lesion % left, so the pattern of an opacity that was forgiven
    says nothing either. The logits pass unchanged.

    Example:
        >>> f = {"log_lesion": math.log1p(1.5), "log_ground_glass": math.log1p(1.5), "log_consolidation": 0.0,
        ...      "log_lesser_side": math.log1p(0.2), "log_top_zone": math.log1p(6.0), "consolidation_share": 0.0,
        ...      "lower_share": 2.0, "peripheral_share": 0.8, "zones_involved": 0.5, "logit_normal": 1.0}
        >>> g = forgive(f, 2.0)
        >>> g["log_lesion"], g["lower_share"], round(math.expm1(g["log_top_zone"]), 6), g["logit_normal"]
        (0.0, 0.0, 4.0, 1.0)
    """
    out = dict(features)
    if tolerance_percent <= 0:
        return out
    for name in _BURDEN:
        if name in out:
            out[name] = math.log1p(max(0.0, math.expm1(out[name]) - tolerance_percent))
    excess = math.expm1(out.get("log_lesion", 0.0))  # the lesion % left after the tolerance
    weight = excess / (excess + _PATTERN_HALF_PERCENT)
    for name in _PATTERN:
        if name in out:
            out[name] *= weight
    return out


@dataclass(frozen=True, eq=False)
class DecisionLayer:
    """Standardised features -> multinomial logistic regression -> class probabilities.

    Attributes:
        features: the feature names, in the order of ``weights``' columns.
        mean, scale: standardisation of each feature (fitted on the validation cases).
        weights: ``(n_classes, n_features)``; bias: ``(n_classes,)``.
        class_names: the output order.
        fitted_on: where the coefficients came from (for the model card).
        tolerance_percent: points of measured opacity forgiven before the features are read
            (:func:`forgive`; 0 for layers fitted before it existed).
    """

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    class_names: tuple[str, ...]
    fitted_on: str = ""
    tolerance_percent: float = 0.0

    def __post_init__(self) -> None:
        k, f = len(self.class_names), len(self.features)
        for name, value, shape in (
            ("mean", self.mean, (f,)),
            ("scale", self.scale, (f,)),
            ("weights", self.weights, (k, f)),
            ("bias", self.bias, (k,)),
        ):
            if np.shape(value) != shape:
                raise ValueError(f"{name} must have shape {shape}, not {np.shape(value)}")

    @property
    def needs_findings(self) -> bool:
        """Whether the layer reads the quantification (not only the logits)."""
        return any(f not in LOGITS for f in self.features)

    @property
    def reads_logits(self) -> bool:
        """Whether the layer listens to the network at all (the ``findings`` layer does not)."""
        return any(f in LOGITS for f in self.features)

    def probabilities(self, features: Mapping[str, float]) -> np.ndarray:
        """Class probabilities ``(n_classes,)`` of one case's features."""
        features = forgive(features, self.tolerance_percent)
        x = np.array([features[f] for f in self.features], dtype=np.float64)
        z = self.weights @ ((x - self.mean) / self.scale) + self.bias
        z -= z.max()
        p = np.exp(z)
        return p / p.sum()

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias.tolist(),
            "class_names": list(self.class_names),
            "fitted_on": self.fitted_on,
            "tolerance_percent": self.tolerance_percent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionLayer:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: missing keys or shapes that do not fit.
        """
        try:
            return cls(
                features=tuple(data["features"]),
                mean=np.asarray(data["mean"], np.float64),
                scale=np.asarray(data["scale"], np.float64),
                weights=np.asarray(data["weights"], np.float64),
                bias=np.asarray(data["bias"], np.float64),
                class_names=tuple(data["class_names"]),
                fitted_on=str(data.get("fitted_on", "")),
                tolerance_percent=float(data.get("tolerance_percent", 0.0)),
            )
        except KeyError as exc:
            raise ValueError(f"decision layer must have {exc.args[0]!r}") from exc
