"""The shipped reference model: matches its card, loads, and separates held-out phantoms."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_card_matches_the_shipped_checkpoint() -> None:
    card = json.loads((MODELS / "medai-ref.json").read_text())
    digest = hashlib.sha256((MODELS / "medai-ref.pt").read_bytes()).hexdigest()
    assert card["sha256"] == digest
    assert "not validated on patients" in card["training_data"]
    assert card["class_names"] == ["normal", "covid19", "other_pneumonia"]
    assert card["sha256"] in (MODELS / "README.md").read_text()


def test_shipped_model_classifies_unseen_heldout_phantoms() -> None:
    from medai import synthetic
    from medai.calibration import softmax
    from medai.model import load_checkpoint, predict_logits
    from medai.preprocess import PreprocessParams, to_model_input

    model, ckpt = load_checkpoint(MODELS / "medai-ref.pt")
    params = PreprocessParams.from_dict(ckpt["preprocess"])
    rng = np.random.default_rng(987_654)  # seeds unlike training (0..) and the card's held-out set
    specs = [synthetic.sample_spec(rng, label=synthetic.CLASSES[i % 3], split="heldout") for i in range(12)]
    arrays = [to_model_input(synthetic.generate(s, fast=True).volume, params).array for s in specs]
    probs = softmax(predict_logits(model, arrays, batch_size=4), temperature=float(ckpt["temperature"]))
    labels = np.array([synthetic.CLASSES.index(s.label) for s in specs])
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.6, f"accuracy {accuracy:.2f} on 12 held-out phantoms (chance is 0.33)"
