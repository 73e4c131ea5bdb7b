"""The decision layer (logits + measured findings), the lung-restricted input and the QC flags that abstain."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medai.inference.calibration import DecisionRule
from medai.inference.classifier import UNRELIABLE_FLAGS, Classifier, QCFlag, _qc_flags, served_decision
from medai.inference.decision import FEATURE_SETS, FINDINGS, LOGITS, DecisionLayer, decision_features, forgive
from medai.inference.network_input import network_input
from medai.labels import CLASS_NAMES, LESION_NOISE_FLOOR_PERCENT
from medai.phantoms import synthetic
from medai.preprocess import PreprocessParams, to_model_input
from medai.quantify.measure import quantify
from medai.training.decision_fit import fit_decision_layer, recalibrate
from medai.training.export import export_onnx
from medai.training.network import CHECKPOINT_FORMAT, ModelSpec, build_model

SMALL = synthetic.Acquisition(matrix=96, pixel_spacing_mm=4.0, slice_thickness_mm=5.0, noise_hu=10.0)


@pytest.fixture(scope="module")
def phantoms() -> dict[str, synthetic.Phantom]:
    return {
        "normal": synthetic.generate(synthetic.PhantomSpec("normal", 0.0, 21, SMALL), fast=True),
        "covid19": synthetic.generate(synthetic.PhantomSpec("covid19", 0.3, 22, SMALL), fast=True),
    }


def test_features_read_the_findings(phantoms: dict[str, synthetic.Phantom]) -> None:
    normal = decision_features([0.0, 0.0, 0.0], quantify(phantoms["normal"].volume))
    sick = decision_features([0.0, 0.0, 0.0], quantify(phantoms["covid19"].volume))
    assert set(normal) == set(LOGITS) | set(FINDINGS)
    assert sick["log_lesion"] > normal["log_lesion"] + 1.0
    assert sick["zones_involved"] > normal["zones_involved"]
    assert 0.0 <= sick["peripheral_share"] <= 1.0 and sick["peripheral_share"] > 0.3  # COVID-19 is subpleural


def test_layer_round_trip_and_shape_checks() -> None:
    rows = [{n: float(i + k) for k, n in enumerate(FEATURE_SETS["combined"])} for i in range(12)]
    labels = [CLASS_NAMES[i % 3] for i in range(12)]
    layer = fit_decision_layer(rows, labels, feature_set="combined", fitted_on="test")
    assert layer.reads_logits and layer.needs_findings
    assert not fit_decision_layer(rows, labels, feature_set="findings").reads_logits
    again = DecisionLayer.from_dict(layer.to_dict())
    np.testing.assert_allclose(again.probabilities(rows[3]), layer.probabilities(rows[3]))
    assert layer.probabilities(rows[0]).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        DecisionLayer(LOGITS, np.zeros(3), np.ones(3), np.zeros((2, 3)), np.zeros(3), CLASS_NAMES)
    with pytest.raises(ValueError, match="feature_set must be one of"):
        fit_decision_layer(rows, labels, feature_set="magic")


def test_the_smaller_findings_sets_leave_out_where_the_opacity_lies() -> None:
    location = {"lower_share", "peripheral_share"}
    assert set(FEATURE_SETS["findings-no-location"]) == set(FINDINGS) - location
    burden = set(FEATURE_SETS["findings-burden"])
    assert burden < set(FINDINGS) and not burden & (location | {"zones_involved", "log_top_zone"})
    rng = np.random.default_rng(0)
    rows = [dict(zip(FINDINGS, rng.normal(size=len(FINDINGS)), strict=True)) for _ in range(60)]
    labels = [CLASS_NAMES[int(r["log_lesion"] > 0) + int(r["consolidation_share"] > 0.5)] for r in rows]
    layer = fit_decision_layer(rows, labels, feature_set="findings-no-location")
    assert layer.features == FEATURE_SETS["findings-no-location"]
    moved = {**rows[0], "lower_share": 50.0, "peripheral_share": -50.0}  # what it does not read cannot move it
    np.testing.assert_allclose(layer.probabilities(moved), layer.probabilities(rows[0]))
    strong = fit_decision_layer(rows, labels, feature_set="findings-no-location", regularization=0.1)
    assert np.abs(strong.weights).sum() < np.abs(layer.weights).sum()  # a smaller C shrinks the weights


def _findings_row(lesion: float, *, top_zone: float, pattern: float) -> dict[str, float]:
    row = dict.fromkeys(LOGITS, 0.0) | dict.fromkeys(FINDINGS, pattern)
    row.update(
        log_lesion=np.log1p(lesion), log_ground_glass=np.log1p(lesion), log_consolidation=0.0,
        log_lesser_side=np.log1p(lesion / 2), log_top_zone=np.log1p(top_zone),
    )  # fmt: skip
    return row


def test_a_forgiving_layer_reads_a_partial_volume_percent_as_normal_and_disease_as_disease() -> None:
    # Fitted where normals measure 0 %, a layer reads the first percent as disease; the same fit with 1.5 %
    # forgiven reads a normal scan's 1.2 % of partial-volume "opacity" as normal, and 8 % as disease.
    rng = np.random.default_rng(3)
    rows, labels = [], []
    for _ in range(60):
        rows.append(_findings_row(0.0, top_zone=0.0, pattern=0.0))
        labels.append("normal")
        lesion = float(rng.uniform(0.8, 30.0))
        rows.append(_findings_row(lesion, top_zone=2 * lesion, pattern=float(rng.uniform(0.3, 1.0))))
        labels.append("covid19")
    plain = fit_decision_layer(rows, labels, feature_set="findings")
    forgiving = fit_decision_layer(rows, labels, feature_set="findings", tolerance_percent=1.5)
    partial_volume = _findings_row(1.2, top_zone=4.0, pattern=0.8)
    sick = _findings_row(8.0, top_zone=16.0, pattern=0.8)
    normal = CLASS_NAMES.index("normal")
    assert plain.probabilities(partial_volume)[normal] < 0.5
    assert forgiving.probabilities(partial_volume)[normal] > 0.8
    assert forgiving.probabilities(sick)[normal] < 0.1
    assert forgive(partial_volume, 1.5)["log_lesion"] == 0.0 and forgive(partial_volume, 0.0) == partial_volume
    again = DecisionLayer.from_dict(forgiving.to_dict())  # the tolerance is part of the stored layer
    assert again.tolerance_percent == 1.5
    np.testing.assert_allclose(again.probabilities(partial_volume), forgiving.probabilities(partial_volume))
    older = {k: v for k, v in forgiving.to_dict().items() if k != "tolerance_percent"}
    assert DecisionLayer.from_dict(older).tolerance_percent == 0.0  # layers stored before it forgive nothing


def _world(rng: np.random.Generator, n: int, *, false_opacity: float) -> tuple[list[dict[str, float]], list[str]]:
    """Rows whose normals measure up to ``false_opacity`` % of partial volume; disease 1-30 %."""
    rows, labels = [], []
    for i in range(n):
        label = CLASS_NAMES[i % 3]
        lesion = float(rng.uniform(0, false_opacity)) if label == "normal" else float(np.exp(rng.uniform(0, 3.4)))
        row = _findings_row(lesion, top_zone=2 * lesion, pattern=float(rng.uniform(0.2, 0.9)))
        row["consolidation_share"] = float(rng.uniform(0.5, 1.0) if label == "other_pneumonia" else rng.uniform(0, 0.4))
        rows.append(row)
        labels.append(label)
    return rows, labels


def _nll(layer: DecisionLayer, rows: list[dict[str, float]], labels: list[str]) -> float:
    p = np.array([layer.probabilities(r) for r in rows])
    return float(-np.mean(np.log(p[np.arange(len(labels)), [CLASS_NAMES.index(x) for x in labels]])))


def test_recalibration_on_another_world_moves_the_level_not_the_weighting() -> None:
    # Fitted where normals measure 0 %, the layer calls another world's 0-3 % normals sick; three numbers fitted
    # on that world's validation rows call more of them normal and fit fresh rows of it better.
    rng = np.random.default_rng(5)
    layer = fit_decision_layer(*_world(rng, 300, false_opacity=0.0), feature_set="findings", regularization=0.3)
    val, test = _world(rng, 150, false_opacity=3.0), _world(rng, 300, false_opacity=3.0)
    fixed, how = recalibrate(layer, *val, fitted_on="150 validation rows")
    assert how.nll_after < how.nll_before and how.n_rows == 150 and how.shift[0] == 0.0
    assert _nll(fixed, *test) < _nll(layer, *test) - 0.05  # better on rows it was not fitted on
    normals = [r for r, label in zip(*test, strict=True) if label == "normal"]
    called = {
        name: np.mean([np.argmax(m.probabilities(r)) == 0 for r in normals])
        for name, m in (("before", layer), ("after", fixed))
    }
    assert called["after"] > called["before"] + 0.1
    # Exactly a temperature and shifts of the scores: the weights keep their ratios, serving is unchanged.
    z_before = np.log(layer.probabilities(test[0][0]))
    z_after = np.log(fixed.probabilities(test[0][0]))
    expected = z_before / how.temperature + np.array(how.shift)
    np.testing.assert_allclose(z_after - z_after.max(), expected - expected.max(), atol=1e-9)
    np.testing.assert_allclose(fixed.weights * how.temperature, layer.weights)
    assert "recalibrated on 150 validation rows" in DecisionLayer.from_dict(fixed.to_dict()).fitted_on


def test_recalibration_where_the_layer_is_already_calibrated_changes_little() -> None:
    # Labels drawn from the layer's own probabilities: calibrated by construction, so the fit finds about T = 1.
    rng = np.random.default_rng(6)
    layer = fit_decision_layer(*_world(rng, 300, false_opacity=3.0), feature_set="findings-burden", regularization=0.1)
    rows, _ = _world(rng, 2000, false_opacity=3.0)
    drawn = [CLASS_NAMES[rng.choice(3, p=layer.probabilities(r))] for r in rows]
    _, how = recalibrate(layer, rows, drawn, fitted_on="its own draws")
    assert abs(how.temperature - 1) < 0.15 and max(abs(s) for s in how.shift) < 0.25, how
    with pytest.raises(ValueError, match="one label each"):
        recalibrate(layer, [], [], fitted_on="nothing")


def test_a_findings_layer_calls_clear_lungs_normal_whatever_the_network_says() -> None:
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for i in range(90):
        label = CLASS_NAMES[i % 3]
        lesion = 0.0 if label == "normal" else rng.uniform(2, 40)
        row = dict.fromkeys(FEATURE_SETS["combined"], 0.0)
        row.update(log_lesion=np.log1p(lesion), peripheral_share=0.8 if label == "covid19" else 0.3)
        row.update(zones_involved=0.0 if label == "normal" else (0.8 if label == "covid19" else 0.2))
        row.update(logit_covid19=rng.normal())  # an uninformative network
        rows.append(row)
        labels.append(label)
    layer = fit_decision_layer(rows, labels, feature_set="findings")
    clear = dict.fromkeys(FEATURE_SETS["combined"], 0.0) | {"logit_covid19": 9.0}
    assert CLASS_NAMES[int(np.argmax(layer.probabilities(clear)))] == "normal"


def test_lung_restricted_input_blanks_what_is_far_from_the_lungs(phantoms: dict[str, synthetic.Phantom]) -> None:
    volume = phantoms["covid19"].volume
    quant = quantify(volume)
    params = PreprocessParams(grid_shape=(32, 32, 48), lung_margin_mm=8.0, outside_lungs_hu=0.0)
    restricted = to_model_input(volume, params, lung_mask=quant.lung_mask, lung_mask_factors=quant.grid.factors)
    whole = to_model_input(volume, PreprocessParams(grid_shape=(32, 32, 48)))
    blank = (0.0 - params.window_hu[0]) / (params.window_hu[1] - params.window_hu[0])
    share_blank = float(np.isclose(restricted.array, blank).mean())
    assert 0.2 < share_blank < 0.97  # lungs and their rim stay, the rest is one value
    assert float(np.isclose(whole.array, blank).mean()) < 0.05
    with pytest.raises(ValueError, match="lung_mask must be given"):
        to_model_input(volume, params)
    mi, q = network_input(volume, params)
    assert q is not None and np.array_equal(mi.array, restricted.array)  # the same lungs, the same input


def _checkpoint(path: Path, *, layer: DecisionLayer | None, margin: float) -> Path:
    spec = ModelSpec(input_shape=(32, 32, 32), channels=(4, 8, 8), strides=(2, 2, 1), dropout=0.0, pooling="mean")
    torch.manual_seed(0)
    model = build_model(spec).eval()
    names = list(CLASS_NAMES)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model_spec": spec.to_dict(),
        "model_state": model.state_dict(),
        "preprocess": PreprocessParams(grid_shape=(32, 32, 32), lung_margin_mm=margin).to_dict(),
        "class_names": names,
        "temperature": 1.0,
        "decision_rule": DecisionRule(class_names=tuple(names), positive_class="covid19").to_dict(),
        "decision_layer": layer.to_dict() if layer is not None else None,
        "data": {"kind": "test"},
        "epoch": 0,
    }
    torch.save(ckpt, path)
    return path


def test_served_model_uses_its_decision_layer_and_lung_restricted_input(
    tmp_path: Path, phantoms: dict[str, synthetic.Phantom]
) -> None:
    features = dict.fromkeys(FINDINGS, 0.0)
    layer = DecisionLayer(
        FINDINGS, np.zeros(len(FINDINGS)), np.ones(len(FINDINGS)),
        np.vstack([-np.eye(len(FINDINGS))[0], np.eye(len(FINDINGS))[0], np.zeros(len(FINDINGS))]) * 4,
        np.zeros(3), CLASS_NAMES,
    )  # fmt: skip
    assert layer.needs_findings and CLASS_NAMES[int(np.argmax(layer.probabilities(features)))] != "covid19"
    ckpt = _checkpoint(tmp_path / "m.pt", layer=layer, margin=8.0)
    onnx = export_onnx(ckpt, tmp_path / "m.onnx", n_random=1, n_phantoms=0).path
    clf = Classifier.load(onnx)
    assert clf.needs_quantification and clf.decision_layer is not None
    sick, clear = clf.predict(phantoms["covid19"].volume), clf.predict(phantoms["normal"].volume)
    assert sick.probabilities["covid19"] > clear.probabilities["covid19"]  # the findings decide, not the network
    assert sick.evidence == clf.evidence == "findings"  # the viewer shows the opacities as the reason
    assert sick.to_dict()["evidence"] == "findings"  # and `medai predict --json` says so
    assert sum(sick.probabilities.values()) == pytest.approx(1.0)
    assert "quantify" in sick.timings
    np.testing.assert_allclose(clf.probabilities([phantoms["covid19"].volume])[0], list(sick.probabilities.values()))


def test_unreliable_lungs_are_flagged() -> None:
    volume = SimpleNamespace(spacing_mm=(2.0, 1.0, 1.0))
    lungs = np.zeros((10, 8, 8), np.uint8)
    lungs[3:7, 2:6, 2:6] = 1

    def flags(
        measured_ml: float, aerated_ml: float, right_share: float = 0.55, *, expiration: bool = False
    ) -> tuple[str, ...]:
        quant = SimpleNamespace(
            lung_volume_ml=measured_ml,
            right_lung_volume_ml=right_share * measured_ml,
            left_lung_volume_ml=(1 - right_share) * measured_ml,
            lung_mask=lungs,
            expiration=expiration,
        )
        return _qc_flags(volume, quant, SimpleNamespace(lung_volume_ml=aerated_ml))  # type: ignore[arg-type]

    assert QCFlag.LUNG_MASK_INCOMPLETE in flags(900.0, 4000.0)  # the mask missed most of the aerated lung
    assert QCFlag.LUNG_MASK_INCOMPLETE not in flags(3900.0, 4000.0)
    assert QCFlag.LUNG_VOLUME_IMPLAUSIBLE in flags(14_000.0, 4000.0)
    assert QCFlag.LUNG_SIDES_UNEQUAL in flags(3000.0, 3000.0, right_share=0.25)  # one lung a third of the other
    assert QCFlag.LUNG_SIDES_UNEQUAL in flags(3000.0, 3000.0, right_share=0.7)
    assert QCFlag.LUNG_SIDES_UNEQUAL not in flags(3000.0, 3000.0, right_share=0.62)  # within what lungs measure
    assert QCFlag.LUNG_SIDES_UNEQUAL not in flags(100.0, 3000.0, right_share=0.0)  # no lungs: that flag says it
    assert QCFlag.LUNG_SIDES_UNEQUAL in UNRELIABLE_FLAGS  # the label is then indeterminate
    assert QCFlag.EXPIRATION in flags(3000.0, 3000.0, expiration=True)
    assert QCFlag.EXPIRATION not in flags(3000.0, 3000.0)
    assert QCFlag.EXPIRATION in UNRELIABLE_FLAGS


def test_an_expiration_scan_is_flagged_and_its_label_is_the_rules_indeterminate(
    shipped_classifier: Classifier, phantoms: dict[str, synthetic.Phantom]
) -> None:
    """An expiration scan's measured opacity is unreliable both ways (the independent family's expiration normals
    read up to 3 %, a 24 % COVID-19 read 2 %: docs/ood.md, failure mode 12), so it is flagged and the label is
    indeterminate, and the CT-0 gate does not turn it normal (faint ground glass can hide under the line)."""
    from medai.phantoms.independent import generate_independent, sample_independent_spec

    spec = sample_independent_spec(np.random.default_rng(2), label="normal", matrix=128)
    assert spec.factors["lung_state"] == "expiration"  # the drawing this test is for
    pred = shipped_classifier.predict(generate_independent(spec).volume)
    assert pred.quantification.expiration
    assert QCFlag.EXPIRATION in pred.qc_flags and pred.indeterminate
    assert served_decision(shipped_classifier.rule, [0.2, 0.7, 0.1], 0.5, (QCFlag.EXPIRATION,)) == ("covid19", True)
    inspired = shipped_classifier.predict(phantoms["normal"].volume)  # the training world's inspiration normal
    assert QCFlag.EXPIRATION not in inspired.qc_flags


def test_a_whole_lung_consolidated_and_left_out_of_the_mask_is_flagged_and_indeterminate(
    shipped_classifier: Classifier,
) -> None:
    """heldout-s0-0086: lobar pneumonia over 61 % of a small chest, the right lung 99 % consolidated. The mask
    leaves most of that lung out (786 ml measured for 1,289 ml, 30.7 % lesion for 61 %); without this flag the
    numbers were silent (docs/ood.md)."""
    from medai.evaluation.worlds import world_cases

    case = next(world_cases("heldout", 87, seed=0, start=86))
    pred = shipped_classifier.predict(case.volume)
    q = pred.quantification
    assert q.lung_volume_ml < 0.75 * case.lung_volume_ml  # the failure this flag is for is still there
    assert min(q.right_lung_volume_ml, q.left_lung_volume_ml) < 0.5 * max(q.right_lung_volume_ml, q.left_lung_volume_ml)
    assert QCFlag.LUNG_SIDES_UNEQUAL in pred.qc_flags and pred.indeterminate


def test_a_determinate_normal_decision_is_graded_ct0_whatever_the_measured_opacity(
    shipped_classifier: Classifier, phantoms: dict[str, synthetic.Phantom]
) -> None:
    from dataclasses import replace

    pred = shipped_classifier.predict(phantoms["covid19"].volume)
    measured = pred.quantification.severity
    assert measured.value in ("CT-1", "CT-2")  # 30 % of the lungs are opaque
    assert replace(pred, label="covid19", indeterminate=False).severity == measured
    assert replace(pred, label="other_pneumonia", indeterminate=False).severity == measured
    assert replace(pred, label="normal", indeterminate=False).severity.value == "CT-0"
    assert replace(pred, label="normal", indeterminate=True).severity == measured  # no decision, no CT-0


def test_a_lung_under_the_ct0_line_is_not_called_sick(
    shipped_classifier: Classifier, phantoms: dict[str, synthetic.Phantom], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's rule: a lung without measured opacity (under the CT-0 line) is not called sick, whatever the
    probabilities; the label is normal and flagged for a reader where the rule would have called a disease."""
    eager = DecisionRule(threshold=0.01, band_half_width=0.0)  # calls covid19 on any probability at all
    clear = shipped_classifier.predict(phantoms["normal"].volume)
    assert clear.quantification.lesion_percent < LESION_NOISE_FLOOR_PERCENT
    assert eager.decide(list(clear.probabilities.values())) == ("covid19", False)
    monkeypatch.setattr(shipped_classifier, "rule", eager)
    gated = shipped_classifier.predict(phantoms["normal"].volume)
    assert (gated.label, gated.indeterminate) == ("normal", True)
    assert gated.probabilities == clear.probabilities  # the probabilities are the rule's alone
    assert gated.severity.value == "CT-0"
    sick = shipped_classifier.predict(phantoms["covid19"].volume)  # 30 % opaque: above the line, not gated
    assert (sick.label, sick.indeterminate) == ("covid19", False)
