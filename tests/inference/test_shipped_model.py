"""The shipped reference model: ONNX file, checkpoint and card agree; it separates held-out phantoms."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medai.inference.classifier import Classifier
from medai.labels import CLASS_NAMES

MODELS = Path(__file__).resolve().parents[2] / "models"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_card_matches_the_shipped_files() -> None:
    card = json.loads((MODELS / "medai-ref.json").read_text())
    assert card["model"] == "medai-ref.onnx"
    assert card["sha256"] == _sha256(MODELS / "medai-ref.onnx")
    assert card["checkpoint_sha256"] == _sha256(MODELS / card["checkpoint"])
    assert card["export_parity"]["max_logit_diff"] <= 1e-4
    assert card["export_parity"]["min_cam_corr"] >= 0.999
    assert "not validated on patients" in card["training_data"]
    assert card["class_names"] == ["normal", "covid19", "other_pneumonia"]
    readme = (MODELS / "README.md").read_text()
    assert card["sha256"] in readme
    assert card["checkpoint_sha256"] in readme


def test_onnx_metadata_names_the_shipped_checkpoint(shipped_classifier: Classifier) -> None:
    clf = shipped_classifier
    card = json.loads((MODELS / "medai-ref.json").read_text())
    assert clf.meta["checkpoint_sha256"] == card["checkpoint_sha256"]
    assert clf.temperature == card["temperature"]
    assert clf.meta["preprocess"] == card["preprocess"]


def test_shipped_model_classifies_unseen_heldout_phantoms(shipped_classifier: Classifier) -> None:
    from medai.phantoms import synthetic

    clf = shipped_classifier
    rng = np.random.default_rng(987_654)  # seeds unlike training (0..) and the card's held-out set
    specs = [synthetic.sample_spec(rng, label=CLASS_NAMES[i % 3], split="heldout") for i in range(12)]
    probs = clf.probabilities([synthetic.generate(s, fast=True).volume for s in specs])
    labels = np.array([CLASS_NAMES.index(s.label) for s in specs])
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.6, f"accuracy {accuracy:.2f} on 12 held-out phantoms (chance is 0.33)"
