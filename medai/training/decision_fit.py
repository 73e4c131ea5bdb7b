"""Fit the decision layer (:class:`medai.inference.decision.DecisionLayer`) on validation cases.

A multinomial logistic regression (scikit-learn) over standardised features: the network's logits, the
measured findings, or both (:data:`medai.inference.decision.FEATURE_SETS`). Fitted on validation phantoms
of the training world, never on a test world; which feature set ships is chosen on the out-of-distribution
validation world (``scripts/train_reference.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from medai.inference.decision import FEATURE_SETS, DecisionLayer, forgive
from medai.labels import CLASS_NAMES

__all__ = ["fit_decision_layer"]


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
