"""scripts/layer_ceiling.py: decision-layer feature sets fitted inside a world, cross-validated (no scoring here)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from medai.evaluation.worlds import TruthCase
from medai.inference.decision import FINDINGS, LOGITS
from medai.labels import CLASS_NAMES
from tests.conftest import load_script


def _features(rng: np.random.Generator, label: str, *, informative: bool) -> dict[str, float]:
    """Findings that tell the classes apart (burden for sick, consolidation for which) or say nothing at all."""
    out = {name: float(rng.normal()) for name in LOGITS + FINDINGS}
    if informative:
        out["log_lesion"] = math.log1p(0.0 if label == "normal" else 5.0 + rng.uniform(0, 20))
        out["consolidation_share"] = {"normal": 0.0, "covid19": 0.1, "other_pneumonia": 0.8}[label] + rng.normal(
            0, 0.05
        )
    return out


def _rows(world: str, n: int, *, informative: bool, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    labels = [CLASS_NAMES[i % 3] for i in range(n)]
    return [(world, label, _features(rng, label, informative=informative)) for label in labels]


def test_informative_findings_reach_the_ceiling_and_noise_stays_at_chance() -> None:
    script = load_script("layer_ceiling")
    clear = script.cross_validated(_rows("a", 60, informative=True), "findings", 1.0, repeats=2)
    assert clear["covid19_auc"] > 0.95 and clear["vs_normal"] > 0.95 and clear["normals_normal"] > 0.9
    noise = script.cross_validated(_rows("b", 90, informative=False), "findings", 1.0, repeats=3)
    assert noise["covid19_auc"] < 0.7  # nothing to learn: chance, or under it (cross-validation's known bias)
    # the logits alone do not see what the findings carry
    assert script.cross_validated(_rows("a", 60, informative=True), "cnn", 1.0, repeats=2)["covid19_auc"] < 0.7


def test_stage_rows_and_training_rows_in_every_fold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = load_script("layer_ceiling")

    def cases(world: str, n: int, informative: bool) -> list:
        return [
            (TruthCase(f"{world}-{i}", world, label, None, 0.0, 4000.0, "none"), features, {})  # type: ignore[arg-type]
            for i, (_, label, features) in enumerate(_rows(world, n, informative=informative, seed=n))
        ]

    paths = []
    for world, seed, n in (("train", 1, 60), ("heldout", 0, 30)):  # as scripts/train_reference.py keeps them
        paths.append(tmp_path / f"decision_rows_{world}-s{seed}.pkl")
        paths[-1].write_bytes(pickle.dumps({"key": {}, "rows": cases(world, n, True), "complete": False}))
    rows = script.stage_rows(paths[0]) + script.stage_rows(paths[1])
    assert [w for w, _, _ in rows].count("train") == 60 and [w for w, _, _ in rows].count("heldout") == 30

    out = tmp_path / "ceiling.json"
    argv = ["--stage-rows", *map(str, paths), "--feature-sets", "findings", "--regularizations", "1", "--repeats", "1"]
    assert script.main([*argv, "--with-train", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"train", "heldout"}
    assert set(results["heldout"]) == {"findings, C=1", "findings, C=1 + training rows"}
    assert "training rows" not in " ".join(results["train"])  # the training world is not added to itself
    assert results["heldout"]["findings, C=1"]["covid19_auc"] > 0.9
    assert "heldout: 30 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--world", "heldout:1"])  # not WORLD:SEED:N
