"""Saliency sanity checks (Adebayo et al. 2018) on the shipped model, via scripts/eval_saliency.py.

On covid19 phantoms outside the training seeds, with exact lesion masks: the map
must change when the weights are randomised, its top 5 % must sit on the lesions
far more often than chance, and deleting that top 5 % must lower the network's own
p(covid19) more than deleting as many random lung voxels (the map explains the
network, not the findings decision layer the shipped model serves).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from tests.conftest import load_script


def _script() -> ModuleType:
    return load_script("eval_saliency")  # registered in sys.modules: dataclasses look their module up there


@pytest.fixture(scope="module")
def results() -> list:
    # the first 12 of the report set in docs/benchmarks.md (seeds 555000.., none used in training)
    return _script().run(None, None, cases=12, seed=555_000)


def test_randomised_weights_change_the_map(results: list) -> None:
    corr = np.array([r.randomised_rank_corr for r in results])  # mean |rho| over independent random draws
    assert float(np.median(corr)) < 0.3, corr


@pytest.mark.xfail(
    strict=True,
    reason="the issue-13 network (fine-tuned on lung-restricted inputs) puts its top 5 % on true lesions at 1.79x "
    "chance (median of 12; the previous one 2.4x); it no longer decides the label (the findings layer does), see "
    "docs/ood.md",
)
def test_top_saliency_overlaps_the_true_lesions_far_more_than_chance(results: list) -> None:
    ratio = np.array([r.overlap_ratio for r in results])
    assert float(np.median(ratio)) > 2.0, ratio  # chance is 1


@pytest.mark.xfail(
    strict=True,
    reason="the issue-13 network's map fails deletion: setting its top 5 % to -850 HU changes the network's own "
    "p(covid19) by -0.052 on average (it rises), as many random lung voxels by +0.034 (12 cases). It passed before "
    "only because it measured the served probability, which the findings layer takes from the quantification; the "
    "viewer shows the opacities as the evidence for such a model (docs/benchmarks.md)",
)
def test_deleting_the_top_salient_voxels_lowers_p_covid_more_than_random(results: list) -> None:
    top = np.array([r.drop_top for r in results])
    rnd = np.array([r.drop_random for r in results])
    assert float(top.mean()) > float(rnd.mean()), (top, rnd)
    assert float(np.mean(top > rnd)) >= 0.5, (top, rnd)
