"""Fit the decision layer (:class:`medai.inference.decision.DecisionLayer`) on validation cases.

A multinomial logistic regression (scikit-learn) over standardised features: the network's logits, the
measured findings, or both (:data:`medai.inference.decision.FEATURE_SETS`). Fitted on validation phantoms
of the training world, never on a test world; which feature set ships is chosen on the out-of-distribution
validation world (``scripts/train_reference.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold

from medai.inference.decision import FEATURE_SETS, DecisionLayer, forgive
from medai.labels import CLASS_NAMES

__all__ = ["Recalibration", "cross_validated_auc", "fit_decision_layer", "recalibrate"]


def fit_decision_layer(
    features: Sequence[Mapping[str, float]],
    labels: Sequence[str],
    *,
    feature_set: str,
    regularization: float = 1.0,
    tolerance_percent: float = 0.0,
    fitted_on: str = "",
) -> DecisionLayer:
    """Fit a decision layer on ``features`` (one mapping per case) and their true ``labels``.

    Args:
        features: per case, every feature of :func:`medai.inference.decision.decision_features`.
        labels: class names, one per case.
        feature_set: a key of :data:`~medai.inference.decision.FEATURE_SETS`.
        regularization: inverse L2 strength ``C`` of the logistic regression.
        tolerance_percent: points of measured opacity forgiven before fitting and serving
            (:func:`medai.inference.decision.forgive`).
        fitted_on: a description of the cases, kept in the model card.

    Raises:
        ValueError: unknown feature set, or fewer than two classes among the labels.

    Example:
        >>> rows = [{"logit_normal": a, "logit_covid19": -a, "logit_other_pneumonia": 0.0} for a in (-2, -1, 1, 2)]
        >>> layer = fit_decision_layer(rows, ["covid19", "covid19", "normal", "normal"], feature_set="cnn")
        >>> bool(layer.probabilities(rows[0])[1] > 0.5)
        True
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {sorted(FEATURE_SETS)}, not {feature_set!r}")
    names = FEATURE_SETS[feature_set]
    features = [forgive(f, tolerance_percent) for f in features]
    x = np.array([[f[n] for n in names] for f in features], dtype=np.float64)
    y = np.array([CLASS_NAMES.index(label) for label in labels])
    if len(np.unique(y)) < 2:
        raise ValueError(f"labels must hold at least two classes, not {sorted(set(labels))}")
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6)
    model = LogisticRegression(C=regularization, max_iter=5000)
    model.fit((x - mean) / scale, y)
    weights = np.zeros((len(CLASS_NAMES), len(names)))
    bias = np.full(len(CLASS_NAMES), -20.0)  # a class absent from the fit gets (almost) no probability
    for row, cls in enumerate(model.classes_):
        if len(model.classes_) == 2:  # binary: scikit-learn keeps one row for the second class
            weights[cls] = model.coef_[0] if row == 1 else -model.coef_[0]
            bias[cls] = model.intercept_[0] if row == 1 else -model.intercept_[0]
            weights[cls] /= 2
            bias[cls] /= 2
        else:
            weights[cls] = model.coef_[row]
            bias[cls] = model.intercept_[row]
    return DecisionLayer(names, mean, scale, weights, bias, CLASS_NAMES, fitted_on, tolerance_percent)


def cross_validated_auc(
    features: Sequence[Mapping[str, float]],
    labels: Sequence[str],
    *,
    feature_set: str,
    regularization: float = 1.0,
    tolerance_percent: float = 0.0,
    also_fit: tuple[Sequence[Mapping[str, float]], Sequence[str]] = ((), ()),
    folds: int = 5,
    repeats: int = 3,
    positive: str = "covid19",
) -> float:
    """The ``positive``-vs-rest AUC that a layer fitted this way reaches on rows it was not fitted on.

    ``features`` and ``labels`` are split into stratified ``folds`` (``repeats`` times, seeded): each fold is
    scored by a layer fitted on the other folds plus every row of ``also_fit`` (rows of another world that
    the variant is fitted on too); the AUC is the mean over repeats of the AUC of all out-of-fold scores. With
    ``folds`` = 0 nothing is folded: a layer fitted on ``also_fit`` alone scores every row. This is how well a
    variant does on the world of ``features`` without touching a test world (scripts/train_reference.py
    guards the in-distribution AUC with it).

    Raises:
        ValueError: ``folds`` = 0 with no ``also_fit`` rows, or fewer than two classes to fit on.

    Example:
        >>> from medai.inference.decision import FEATURE_SETS
        >>> labels = [("normal", "covid19", "other_pneumonia")[i % 3] for i in range(30)]
        >>> rows = [dict.fromkeys(FEATURE_SETS["findings-burden"], 0.0) for _ in labels]
        >>> for i, row in enumerate(rows):  # covid19 has ground glass, other pneumonia consolidation
        ...     row["log_ground_glass" if i % 3 == 1 else "log_consolidation"] = (i % 3 > 0) + i / 100
        >>> cross_validated_auc(rows, labels, feature_set="findings-burden", folds=3, repeats=1)
        1.0
    """
    y = np.array([label == positive for label in labels])
    k = CLASS_NAMES.index(positive)
    extra_x, extra_y = list(also_fit[0]), list(also_fit[1])
    fit = functools.partial(
        fit_decision_layer, feature_set=feature_set, regularization=regularization, tolerance_percent=tolerance_percent
    )
    if folds == 0:
        if not extra_x:
            raise ValueError("folds = 0 needs also_fit rows to fit on")
        layer = fit(extra_x, extra_y)
        return float(roc_auc_score(y, [layer.probabilities(f)[k] for f in features]))
    aucs = []
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=0)
    scores = np.zeros(len(y))
    for i, (train, test) in enumerate(splitter.split(np.zeros(len(y)), list(labels))):
        layer = fit([features[j] for j in train] + extra_x, [labels[j] for j in train] + extra_y)
        scores[test] = [layer.probabilities(features[j])[k] for j in test]
        if (i + 1) % folds == 0:  # one repeat done: every row scored once
            aucs.append(roc_auc_score(y, scores))
    return float(np.mean(aucs))


# The recalibration's temperature stays within these bounds (a fit on few rows cannot flatten or sharpen without end).
_TEMPERATURE_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class Recalibration:
    """A temperature and per-class shifts of a decision layer's scores, fitted on validation rows.

    ``p = softmax(z / temperature + shift)`` with ``z`` the layer's scores; ``shift[0]`` is 0 (softmax is
    unchanged by a common shift). ``nll_before`` / ``nll_after``: mean negative log-likelihood of the rows it
    was fitted on.
    """

    temperature: float
    shift: tuple[float, ...]
    n_rows: int
    fitted_on: str
    nll_before: float
    nll_after: float

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "shift": list(self.shift)}


def recalibrate(
    layer: DecisionLayer, features: Sequence[Mapping[str, float]], labels: Sequence[str], *, fitted_on: str
) -> tuple[DecisionLayer, Recalibration]:
    """``layer`` recalibrated on validation rows: one temperature and a shift per class, folded into its weights.

    A layer fitted on one world keeps its ranking of cases in another but not its level: out of distribution the
    training world's layer calls too much opacity disease (its normals measure 0.0 %) and its probabilities are
    miscalibrated (docs/ood.md). Three numbers fitted by maximum likelihood on validation rows (the choosing
    worlds, never a test world) move the level and leave the features' weighting alone: the scores are divided
    by the temperature and shifted per class, which the returned layer does exactly through its weights and bias
    (``softmax((W x + c) / T + s) = softmax((W / T) x + c / T + s)``), so serving is unchanged.

    Raises:
        ValueError: no rows, or rows and labels of different lengths.

    Example:
        >>> rows = [{"logit_normal": a, "logit_covid19": -a, "logit_other_pneumonia": 0.0} for a in (-2, -1, 1, 2)]
        >>> layer = fit_decision_layer(rows, ["covid19", "covid19", "normal", "normal"], feature_set="cnn")
        >>> shifted = [{**r, "logit_normal": r["logit_normal"] - 1.5, "logit_covid19": r["logit_covid19"] + 1.5}
        ...            for r in rows]
        >>> fixed, how = recalibrate(layer, shifted, ["covid19", "covid19", "normal", "normal"], fitted_on="example")
        >>> how.nll_after < how.nll_before
        True
    """
    from scipy.optimize import minimize

    if not features or len(features) != len(labels):
        raise ValueError(
            f"recalibration needs rows with one label each, not {len(features)} rows and {len(labels)} labels"
        )
    z = np.log(np.clip(np.array([layer.probabilities(f) for f in features]), 1e-12, 1.0))
    y = np.array([layer.class_names.index(label) for label in labels])
    lo, hi = (float(np.log(t)) for t in _TEMPERATURE_RANGE)

    def probs(theta: np.ndarray) -> np.ndarray:
        s = z / np.exp(np.clip(theta[0], lo, hi)) + np.r_[0.0, theta[1:]]
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    def nll(theta: np.ndarray) -> float:
        return float(-np.mean(np.log(probs(theta)[np.arange(len(y)), y] + 1e-12)))

    start = np.zeros(len(layer.class_names))
    theta = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000}).x
    temperature = float(np.exp(np.clip(theta[0], lo, hi)))
    shift = np.r_[0.0, theta[1:]]
    how = Recalibration(
        temperature, tuple(float(v) for v in shift), len(y), fitted_on, round(nll(start), 6), round(nll(theta), 6)
    )
    note = f"; recalibrated on {fitted_on} (temperature {temperature:.3f}, class shifts {np.round(shift, 3).tolist()})"
    fixed = replace(
        layer,
        weights=layer.weights / temperature,
        bias=layer.bias / temperature + shift,
        fitted_on=layer.fitted_on + note,
    )
    return fixed, how
