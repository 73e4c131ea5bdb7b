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


def test_served_rows_are_kept_beside_their_key_and_extended_by_the_missing_cases_only(tmp_path: Path) -> None:
    rows_of = _script()._world_rows
    asked: list[tuple[int, int | None]] = []

    def scorer(n: int | None):
        def score(start: int) -> list:
            asked.append((start, n))
            return [f"case {i}" for i in range(start, 5 if n is None else n)]

        return score

    a = {"quantification": "a"}
    assert rows_of(tmp_path, a, "heldout", 0, 3, scorer(3)) == ["case 0", "case 1", "case 2"]
    assert rows_of(tmp_path, a, "heldout", 0, 2, scorer(2)) == ["case 0", "case 1"]  # reused: nothing scored
    assert rows_of(tmp_path, a, "heldout", 0, 4, scorer(4))[-1] == "case 3"  # only case 3 is new
    assert rows_of(tmp_path, a, "heldout", 1, 2, scorer(2)) == ["case 0", "case 1"]  # another seed set: its own
    assert rows_of(tmp_path, {"quantification": "b"}, "heldout", 0, 2, scorer(2)) == ["case 0", "case 1"]
    assert rows_of(tmp_path, a, "real", 0, None, scorer(None)) == [f"case {i}" for i in range(5)]  # all of them
    assert rows_of(tmp_path, a, "real", 0, None, scorer(None))[-1] == "case 4"  # reused
    assert asked == [(0, 3), (3, 4), (0, 2), (0, 2), (0, None)]


def test_variants_are_named_for_what_differs_from_the_defaults() -> None:
    name = _script()._variant_name
    assert name("findings", 0.0, 1.0, "") == "findings"  # the names of the variants before the options
    assert name("findings-no-location", 0.0, 0.3, "") == "findings-no-location, C=0.3"
    assert name("combined", 2.0, 0.1, " on heldout") == "combined, 2 % forgiven, C=0.1 on heldout"


def test_every_variant_is_reported_on_the_test_worlds_after_the_choice(tmp_path: Path) -> None:
    import json

    import numpy as np

    from medai.evaluation.worlds import TruthCase
    from medai.inference.calibration import DecisionRule
    from medai.inference.decision import FINDINGS
    from medai.labels import CLASS_NAMES
    from medai.training.decision_fit import fit_decision_layer

    script = _script()
    rng = np.random.default_rng(0)

    def rows(world: str, n: int | None, seed: int, purpose: str) -> list:
        made.append((world, n, purpose))
        out = []
        for i in range(n or 12):
            label = CLASS_NAMES[i % 3]
            burden = 0.0 if label == "normal" else 2.0 + rng.random()
            features = dict.fromkeys(FINDINGS, 0.0) | {"log_lesion": burden, "consolidation_share": i % 3 / 2}
            measured = {"lesion": burden, "lung_ml": 4000.0, "grade": "CT-1" if burden else "CT-0", "flags": ()}
            out.append((TruthCase(f"{world}-{i}", world, label, None, burden, 4000.0, "none", {}), features, measured))
        return out

    made: list[tuple] = []
    fit = rows("train", 30, 1, "to fit on")
    layers = {
        name: fit_decision_layer([f for _, f, _ in fit], [c.label for c, _, _ in fit], feature_set=s, regularization=c)
        for name, s, c in (("findings", "findings", 1.0), ("findings-burden, C=0.1", "findings-burden", 0.1))
    }
    rule = DecisionRule.from_dict(
        torch.load(ROOT / "models" / "medai-ref.pt", map_location="cpu", weights_only=False)["decision_rule"]
    )
    made.clear()
    script._report(["real", "independent-test"], 9, layers, "findings", rule, out_dir=tmp_path, served=rows)
    assert made == [("real", None, "to report on"), ("independent-test", 9, "to report on")]
    report = json.loads((tmp_path / "decision_report.json").read_text())
    assert report["chosen"] == "findings" and set(report["metrics"]) == set(layers)
    assert report["metrics"]["findings"]["real"]["n_cases"] == 12
    assert report["metrics"]["findings-burden, C=0.1"]["independent-test"]["n_cases"] == 9
    assert "ece_if_calibrated" in report["metrics"]["findings"]["real"]


def test_a_refit_may_not_trade_away_in_distribution_auc() -> None:
    guarded = _script()._guarded
    kept = "findings (kept, fitted before)"
    auc = {"findings": 0.902, "findings, C=0.3": 0.897, "findings-burden": 0.878, "combined": 0.977}
    names = [*auc, kept]
    ids = dict(auc)
    assert guarded(names, ids, kept, 0.01) == {kept, "findings", "findings, C=0.3", "combined"}
    assert ids[kept] == 0.902  # the kept layer is judged by its recipe refitted on the same rows
    assert guarded(names, dict(auc), kept, 0.03) == set(names)
    assert guarded(names, dict(auc), kept, None) == set(names)  # no guard
    assert guarded(names, dict(auc), None, 0.01) == set(names)  # a fresh checkpoint: nothing to guard against
    assert guarded(names, dict(auc), "cnn, C=0.1 (kept, fitted before)", 0.01) == set(names)  # recipe not on the menu


def test_the_in_distribution_auc_is_measured_on_rows_not_fitted_on() -> None:
    import numpy as np

    from medai.evaluation.metrics import roc_auc
    from medai.evaluation.worlds import TruthCase
    from medai.inference.decision import FINDINGS
    from medai.labels import CLASS_NAMES
    from medai.training.decision_fit import fit_decision_layer

    rng = np.random.default_rng(1)

    def rows(world: str, n: int, sign: float) -> list:
        out = []
        for i in range(n):
            label = CLASS_NAMES[i % 3]
            signal = (label == "covid19") * sign
            features = {f: float(rng.normal()) for f in FINDINGS} | {"log_ground_glass": signal + rng.normal(0, 0.5)}
            out.append((TruthCase(f"{world}-{i}", world, label, None, 1.0, 4000.0, "none", {}), features, {}))
        return out

    auc = _script()._in_distribution_auc
    rows_of = {"train": rows("train", 90, 1.0), "heldout": rows("heldout", 90, -1.0)}
    useful = auc(rows_of, "findings-burden", 0.0, 1.0, ("train",))
    assert useful > 0.8  # ground glass tells covid19 apart, and held-out folds show it
    # a layer fitted only on a world where covid19 has *less* ground glass scores the training world's rows backwards
    assert auc(rows_of, "findings-burden", 0.0, 1.0, ("heldout",)) < 0.3
    # nine noise features fit their own rows well enough; scored on rows it was not fitted on, the layer is chance
    noise = rows("train", 30, 0.0)
    layer = fit_decision_layer([f for _, f, _ in noise], [c.label for c, _, _ in noise], feature_set="findings")
    in_sample = roc_auc(np.array([c.label == "covid19" for c, _, _ in noise]),
                        np.array([layer.probabilities(f)[1] for _, f, _ in noise]))  # fmt: skip
    out_of_fold = auc({"train": noise}, "findings", 0.0, 1.0, ("train",))
    assert out_of_fold < 0.65 and in_sample - out_of_fold > 0.2


def _stage_rows(world: str, n: int, seed: int, *, false_opacity: float) -> list:
    """Decision rows like ``served.decision_rows``'s: disease 1-30 %, normals up to ``false_opacity`` %."""
    import numpy as np

    from medai.evaluation.worlds import TruthCase
    from medai.inference.decision import FEATURE_SETS
    from medai.labels import CLASS_NAMES

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = CLASS_NAMES[i % 3]
        lesion = float(rng.uniform(0, false_opacity)) if label == "normal" else float(np.exp(rng.uniform(0, 3.4)))
        features = dict.fromkeys(FEATURE_SETS["combined"], 0.0) | {
            "log_lesion": float(np.log1p(lesion)),
            "consolidation_share": float(rng.uniform(0.5, 1) if label == "other_pneumonia" else rng.uniform(0, 0.4)),
        }
        measured = {"lesion": lesion, "lung_ml": 4000.0, "grade": "CT-1" if lesion >= 1 else "CT-0", "flags": ()}
        out.append(
            (TruthCase(f"{world}-s{seed}-{i}", world, label, None, lesion, 4000.0, "none", {}), features, measured)
        )
    return out


def test_keep_layer_recalibrates_the_checkpoints_own_layer_on_the_choosing_worlds(tmp_path: Path) -> None:
    from medai.inference.decision import DecisionLayer
    from medai.training.decision_fit import fit_decision_layer
    from tests.inference.test_decision import _checkpoint

    script = _script()
    fit = _stage_rows("train", 60, 1, false_opacity=0.0)
    layer = fit_decision_layer([f for _, f, _ in fit], [c.label for c, _, _ in fit], feature_set="findings-burden")
    path = _checkpoint(tmp_path / "model.pt", layer=layer, margin=10.0)
    with pytest.raises(ValueError, match="no decision layer to keep"):
        script.decision_stage(
            _checkpoint(tmp_path / "bare.pt", layer=None, margin=10.0), out_dir=tmp_path, n_fit=60, n_select=30,
            threads=1, keep_layer=True,
        )  # fmt: skip
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    worlds = ["independent-val", "heldout"]
    key = script._rows_key(ckpt)
    script._world_rows(tmp_path, key, "train", 1, 60, lambda start: fit[start:])  # the stage's rows, cached
    for w in worlds:  # their normals measure 0-3 %
        script._world_rows(tmp_path, key, w, 0, 30, lambda start, w=w: _stage_rows(w, 30, 0, false_opacity=3.0))
    ablation = script.decision_stage(
        path, out_dir=tmp_path, n_fit=60, n_select=30, threads=1, keep_layer=True, recalibrate=True
    )
    assert ablation["chosen"] == "previous (kept, fitted before)"  # nothing refitted
    assert ablation["kept_from"] is None  # the test checkpoint's layer had no record of its choice
    how = ablation["recalibration"]
    import numpy as np

    assert how["n_rows"] == 60 and how["nll_after"] < how["nll_before"] and how["shift"][0] == 0.0
    served = DecisionLayer.from_dict(torch.load(path, map_location="cpu", weights_only=False)["decision_layer"])
    np.testing.assert_allclose(served.weights * how["temperature"], layer.weights)
    assert "recalibrated on 60 cases of independent-val + heldout" in served.fitted_on
    assert set(ablation["metrics"]) == {
        "previous (kept, fitted before)",
        "previous (kept, fitted before) (recalibrated)",
    }


def test_a_card_re_export_keeps_how_the_model_was_made(tmp_path: Path) -> None:
    import json

    from tests.inference.test_decision import _checkpoint

    script = _script()
    path = _checkpoint(tmp_path / "model.pt", layer=None, margin=10.0)
    card = script.write_model_card(path, timings={"training": 12.0})  # a training run starts a card
    first = json.loads(card.read_text())
    assert first["reproduce"] == "python scripts/train_reference.py" and first["timings_s"] == {"training": 12.0}
    first["reproduce"] = "fine-tuned from X, then its layer recalibrated (docs)"
    card.write_text(json.dumps(first))
    again = json.loads(script.write_model_card(path).read_text())  # --card-only, --decision-only
    assert again["reproduce"] == first["reproduce"] and again["timings_s"] == {"training": 12.0}
    fresh = json.loads(script.write_model_card(path, timings={"training": 3.0}).read_text())  # trained again
    assert fresh["reproduce"] == "python scripts/train_reference.py" and fresh["timings_s"] == {"training": 3.0}
