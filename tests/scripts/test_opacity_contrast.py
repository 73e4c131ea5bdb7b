"""scripts/opacity_contrast.py: the contrast of measured opacities against the lung around them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():  # type: ignore[no-untyped-def]
    return load_script("opacity_contrast")


def test_components_are_read_against_the_lung_around_them(script) -> None:  # type: ignore[no-untyped-def]
    coarse = np.full((20, 40, 40), -850.0, np.float32)
    lungs = np.ones(coarse.shape, np.uint8)
    lesions = np.zeros(coarse.shape, np.uint8)
    coarse[5:10, 5:12, 5:12] = -720.0  # faint ground glass: 130 HU above its lung
    coarse[10:15, 25:32, 25:32] = -100.0  # consolidation: 750 HU above
    coarse[2, 30:32, 2:4] = -100.0  # too small to count
    for box in ((slice(5, 10), slice(5, 12), slice(5, 12)), (slice(10, 15), slice(25, 32), slice(25, 32))):
        lesions[box] = 1
    lesions[2, 30:32, 2:4] = 1
    coarse[:, :, 20:] -= 50.0  # the second blob's lung is clearer: the ring, not the whole lung, is the reference
    found = sorted(script.component_contrast(coarse, lungs, lesions, voxel_ml=0.02, min_ml=0.5))
    assert len(found) == 2
    (ml_a, contrast_a, core_a), (ml_b, contrast_b, core_b) = sorted(found, key=lambda c: c[1])
    assert ml_a == pytest.approx(245 * 0.02) and ml_b == pytest.approx(245 * 0.02)
    assert contrast_a == pytest.approx(130.0) and core_a == 0.0
    assert contrast_b == pytest.approx(750.0) and core_b == 1.0


def test_separation_is_the_auc_of_low_contrast_for_normals(script) -> None:  # type: ignore[no-untyped-def]
    def row(label: str, true: float, measured: float, contrast: float) -> dict:
        return {"label": label, "true_percent": true, "measured_percent": measured, "contrast_hu": contrast,
                "core_share": contrast / 1000}  # fmt: skip

    rows = [
        row("normal", 0.0, 2.0, 100.0),
        row("normal", 0.0, 0.1, 900.0),  # measures too little: left out
        row("covid19", 2.0, 2.0, 150.0),
        row("covid19", 3.0, 2.5, 80.0),
        row("covid19", 20.0, 18.0, 10.0),  # not mild: left out
        row("other_pneumonia", 3.0, 3.0, 600.0),
    ]
    found = script.separations(rows, min_percent=0.5, mild=6.0)
    assert found["normal_vs_mild_covid19"] == {"normals": 1, "cases": 2, "contrast_hu": 0.5, "core_share": 0.5}
    assert found["normal_vs_mild_other_pneumonia"]["contrast_hu"] == 1.0
