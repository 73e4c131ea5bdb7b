"""The network's input for a volume: the shared preprocessing, given the lungs when the model needs them.

A lung-restricted model (``PreprocessParams.lung_margin_mm > 0``) sees only the lungs the quantification
found, and their surroundings. Serving, training and evaluation all build the input here, from the same
quantification, so they cannot disagree about what the network saw.
"""

from __future__ import annotations

import numpy as np

from medai.preprocess import ModelInput, PreprocessParams, to_model_input
from medai.quantify.measure import Quantification, quantify
from medai.volume import Volume

__all__ = ["network_input", "network_input_with_lungs"]


def network_input(
    volume: Volume, params: PreprocessParams, *, quantification: Quantification | None = None
) -> tuple[ModelInput, Quantification | None]:
    """The model input of ``volume`` and the quantification it used (None when the model needs none).

    Args:
        volume: the CT.
        params: the preprocessing stored with the model.
        quantification: reuse this one instead of quantifying again.

    Raises:
        InvalidSeriesError: from the preprocessing or the quantification (not axial, not HU, ...).
    """
    if params.lung_margin_mm <= 0:
        return to_model_input(volume, params), quantification
    quant = quantification if quantification is not None else quantify(volume)
    return network_input_with_lungs(volume, params, quant.lung_mask, quant.grid.factors), quant


def network_input_with_lungs(
    volume: Volume, params: PreprocessParams, lung_mask: np.ndarray, factors: tuple[int, int, int]
) -> ModelInput:
    """The model input of ``volume`` given the quantification's lungs alone (its ``lung_mask`` and
    ``grid.factors``): what :func:`network_input` builds, before the opacities are measured.

    Raises:
        InvalidSeriesError: from the preprocessing.
    """
    if params.lung_margin_mm <= 0:
        return to_model_input(volume, params)
    return to_model_input(volume, params, lung_mask=lung_mask, lung_mask_factors=factors)
