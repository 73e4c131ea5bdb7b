"""scripts/train_reference.py: the decision stage's cache key follows the network, not the export's bytes; the
checkpoint's own decision layer competes with the refits; a layer is chosen on worlds it was not fitted on."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from medai.training.network import ModelSpec, build_model
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    return load_script("train_reference")


def test_served_rows_are_reused_only_for_the_same_network() -> None:
    digest = _script()._network_digest
    torch.manual_seed(0)
    model = build_model(ModelSpec(input_shape=(16, 16, 16), channels=(4, 8), strides=(1, 2)))
    ckpt = {"model_state": model.state_dict(), "model_spec": {"channels": [4, 8]}, "temperature": 0.7}
    same = {"model_state": {k: v.clone() for k, v in model.state_dict().items()}, **{
        k: v for k, v in ckpt.items() if k != "model_state"
    }}  # fmt: skip
    assert digest(ckpt) == digest(same)  # a reloaded or re-exported checkpoint keeps its rows
    same["decision_layer"] = {"features": ["log_lesion"]}  # refitting the layer does not change the network
    assert digest(ckpt) == digest(same)
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(k for k, v in changed.items() if v.is_floating_point())
    changed[name].view(-1)[0] += 1e-3
    assert digest({**ckpt, "model_state": changed}) != digest(ckpt)  # other weights: the rows are made again
    assert digest({**ckpt, "temperature": 0.8}) != digest(ckpt)  # another temperature changes the logits' scale


def test_the_checkpoints_own_layer_is_a_candidate_named_for_its_variant() -> None:
    incumbent = _script()._incumbent
    layer = torch.load(ROOT / "models" / "medai-ref.pt", map_location="cpu", weights_only=False)["decision_layer"]
    assert incumbent({"model_state": {}}) is None  # a freshly trained checkpoint has none
    name, kept = incumbent({"decision_layer": layer, "decision_ablation": {"chosen": "findings"}})
    assert name == "findings (kept, fitted before)"
    assert kept.to_dict() == layer  # the same coefficients, not a refit
    again, _ = incumbent({"decision_layer": layer, "decision_ablation": {"chosen": name}})
    assert again == name  # kept twice: still named for the variant
    assert incumbent({"decision_layer": layer})[0] == "previous (kept, fitted before)"


def test_the_decision_layer_is_chosen_on_worlds_it_was_not_fitted_on() -> None:
    script = _script()
    assert script._fit_sources(["train"]) == [("", ("train",))]  # the names of the variants before
    assert script._fit_sources(["train", "heldout"]) == [
        ("", ("train",)),
        (" on heldout", ("heldout",)),
        (" on train+heldout", ("train", "heldout")),
    ]
    assert script._choosing_worlds(["independent-val", "heldout"], ["train"]) == ["independent-val", "heldout"]
    assert script._choosing_worlds(["independent-val", "heldout"], ["train", "heldout"]) == ["independent-val"]
    with pytest.raises(ValueError, match="nothing left to choose on"):
        script._choosing_worlds(["heldout"], ["heldout"])
    with pytest.raises(ValueError, match="fit worlds"):
        script._fit_sources(["independent-val"])


def test_served_rows_are_kept_beside_their_key(tmp_path: Path) -> None:
    cached = _script()._cached
    made: list[int] = []

    def make() -> dict:
        made.append(1)
        return {"rows": [len(made)]}

    cache = tmp_path / "rows.pkl"
    assert cached(cache, {"quantification": "a"}, make, "rows") == {"rows": [1]}
    assert cached(cache, {"quantification": "a"}, make, "rows")["rows"] == [1]  # reused, not made again
    assert cached(cache, {"quantification": "b"}, make, "rows") == {"rows": [2]}  # another key: made again
    assert len(made) == 2
