"""Fixtures every test folder shares: the shipped classifier and small, fast phantoms.

Phantoms are built in memory (or into ``tmp_path``) from seeds: nothing generated is committed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from medai.inference.classifier import Classifier
from medai.phantoms import synthetic

#: A coarse, quick acquisition (112x112 at 3.2 mm, 8 mm slices): a phantom in well under a second.
SMALL_ACQUISITION = synthetic.Acquisition(matrix=112, pixel_spacing_mm=3.2, slice_thickness_mm=8.0, n_slices=30)


@pytest.fixture(scope="session")
def shipped_classifier() -> Classifier:
    """The shipped model (``models/medai-ref.onnx``), loaded once for the whole run."""
    return Classifier.load()


@pytest.fixture(scope="session")
def small_phantom() -> Callable[..., synthetic.Phantom]:
    """Factory: ``small_phantom(label, severity, seed, slices=30)`` -> a phantom on :data:`SMALL_ACQUISITION`."""

    def make(label: str, severity: float, seed: int, *, slices: int = 30) -> synthetic.Phantom:
        acq = synthetic.Acquisition(
            matrix=SMALL_ACQUISITION.matrix,
            pixel_spacing_mm=SMALL_ACQUISITION.pixel_spacing_mm,
            slice_thickness_mm=SMALL_ACQUISITION.slice_thickness_mm,
            n_slices=slices,
        )
        return synthetic.generate(synthetic.PhantomSpec(label, severity, seed, acq), fast=True)

    return make
