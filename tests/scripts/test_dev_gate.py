"""scripts/dev_gate.py: the development gate reads the served pipeline exactly, and its trim takes surface only."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_script


def test_the_trim_takes_its_share_of_the_surface_and_nothing_inside() -> None:
    script = load_script("dev_gate")
    lungs = np.zeros((12, 20, 20), np.uint8)
    lungs[2:10, 3:17, 3:10] = 1
    lungs[2:10, 3:17, 11:18] = 2
    out = script.trimmed(lungs, seed=3)
    inner = np.zeros(lungs.shape, bool)
    inner[3:9, 4:16, 4:9] = inner[3:9, 4:16, 12:17] = True
    removed = (lungs > 0) & (out == 0)
    surface = int(((lungs > 0) & ~inner).sum())
    assert not (removed & inner).any()
    assert int(removed.sum()) == int(script.TRIM_SHARE * surface)
    assert (out[out > 0] == lungs[out > 0]).all()  # the sides are kept
    assert (script.trimmed(lungs, seed=3) == out).all()


def test_a_cached_case_reads_as_the_served_pipeline_served_it(tmp_path: Path) -> None:
    """The gate is only worth its numbers if its arm of the shipped rules is the shipped pipeline: a training-world
    case cached and then scored reads the served lesion % and label exactly, and its summary counts it."""
    script = load_script("dev_gate")
    assert script.cache_cases("train", 0, 2, 2, tmp_path, shard=(1, 2)) == 1  # the second of the two
    assert script.cache_cases("train", 0, 2, 2, tmp_path) == 1  # cached cases are not scored again
    rows, summary = script.score(tmp_path, mae_cases=2)
    for row in rows:
        with (tmp_path / f"{row['index']:04d}.pkl").open("rb") as f:
            record = pickle.load(f)
        assert row["lesion"] == record["served_lesion"]
        assert row["pred"] == record["served_label"]
    assert summary["cases"] == 2 and summary["normals"] == 1
    assert summary["rules"].startswith("medai.quantify/")
    # Against the truth: what is read splits into opacity inside and outside the true lesions, and the true lesion
    # into what was read and what was missed.
    normal, covid = rows
    assert normal["missed"] == 0.0 and normal["false_opacity"] == pytest.approx(normal["lesion"], abs=1e-3)
    assert covid["read_in_truth"] + covid["false_opacity"] == pytest.approx(covid["lesion"], abs=1e-3)
    assert covid["read_in_truth"] > 0.5 * covid["truth"] and covid["missed"] > 0.0
    assert covid["read_in_truth"] + covid["missed"] == pytest.approx(covid["truth"], rel=0.1)  # coarse blocks
    assert summary["cases_with_truth"] == 2 and summary["disease_missed"] == covid["missed"]


def test_a_variant_is_set_on_the_imported_rules_and_a_wrong_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import medai.quantify.opacities as opacities

    script = load_script("dev_gate")
    monkeypatch.setattr(opacities, "DEPENDENT_BAND_CLEARING", opacities.DEPENDENT_BAND_CLEARING)  # restored after
    monkeypatch.setattr(opacities, "DEPENDENT_DEPTH_EDGES_MM", opacities.DEPENDENT_DEPTH_EDGES_MM)
    assert script.set_constants(["DEPENDENT_BAND_CLEARING=0.65", "DEPENDENT_DEPTH_EDGES_MM=0,5"]) == {
        "DEPENDENT_BAND_CLEARING": 0.65,
        "DEPENDENT_DEPTH_EDGES_MM": (0.0, 5.0),
    }
    assert opacities.DEPENDENT_BAND_CLEARING == 0.65
    for wrong in ("DEPENDENT_BAND_CLEARNG=0.6", "segment_opacities=1", "DEPENDENT_BAND_CLEARING", "VESSEL_CORE_HU=x"):
        with pytest.raises(ValueError, match="--set"):
            script.set_constants([wrong])
    with pytest.raises(SystemExit):
        script.main(["score", "--cache-dir", "nowhere", "--set", "NO_SUCH_CONSTANT=1"])
