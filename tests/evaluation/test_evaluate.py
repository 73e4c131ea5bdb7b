"""Evaluation core, subgroups, report files and the ``medai evaluate`` command."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from medai.evaluation.evaluate import CaseError, EvaluationResult, evaluate_predictions
from medai.evaluation.reliability import expected_calibration_error
from medai.evaluation.report import INTENDED_USE_HEADER, render_html, write_report
from medai.evaluation.run import predict_cases
from medai.evaluation.subgroups import bin_fixed, slice_thickness_group, subgroups_from_attributes
from medai.inference.calibration import DecisionRule, softmax

CLASSES = ("normal", "covid19", "other_pneumonia")


@pytest.fixture
def toy() -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """200 cases with overconfident (x3) logits and two subgroup variables, one with a tiny group."""
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(200, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    sites = ["A"] * 120 + ["B"] * 75 + ["C"] * 5
    thickness = [slice_thickness_group(float(t)) for t in rng.choice([1.0, 2.5, 5.0], size=200)]
    return labels, 3.0 * true_logits, {"site": sites, "slice_thickness": thickness}


@pytest.fixture
def result(toy: tuple[np.ndarray, np.ndarray, dict[str, list[str]]]) -> EvaluationResult:
    labels, logits, groups = toy
    return evaluate_predictions(
        labels,
        logits,
        temperature=3.0,
        class_names=CLASSES,
        subgroups=groups,
        prevalence=0.1,
        n_bootstrap=200,
        seed=0,
        min_subgroup_size=20,
        errors=[CaseError("broken-1", "InvalidSeriesError: slice gap [slice_gap]", "covid19")],
    )


def test_evaluate_predictions_numbers(
    toy: tuple[np.ndarray, np.ndarray, dict[str, list[str]]], result: EvaluationResult
) -> None:
    labels, logits, _ = toy
    probs = softmax(logits, 3.0)
    assert result.n_cases == 200
    assert sum(result.n_per_class.values()) == 200
    assert result.confusion_argmax.sum() == 200
    assert np.array_equal(result.predicted, probs.argmax(axis=1))
    for name, interval in [*result.auc.items(), ("macro", result.macro_auc)]:
        assert 0.5 < interval.estimate <= 1.0, name
        assert interval.low <= interval.estimate <= interval.high, name
    # temperature scaling helps on overconfident logits
    cal = result.calibration
    assert cal["ece_top_label_after"] < cal["ece_top_label_before"]
    assert cal["nll_after"] < cal["nll_before"]
    assert cal["ece_top_label_after"] == pytest.approx(expected_calibration_error(labels, probs))
    # operating points: 3 argmax (one per class) + threshold + threshold on decided cases
    names = [op.name for op in result.operating_points]
    assert names[:3] == ["argmax"] * 3 and names[3] == "threshold 0.50"
    threshold_op = result.operating_points[3]
    called = probs[:, 1] >= 0.5
    assert threshold_op.counts.tp == int((called & (labels == 1)).sum())
    assert threshold_op.ppv_at_prevalence is not None and threshold_op.npv_at_prevalence is not None
    assert result.operating_points[0].ppv_at_prevalence is None  # prevalence applies to covid19 only
    decided_only = result.operating_points[4]
    assert decided_only.n_excluded == int(result.indeterminate.sum())
    assert 0 <= result.indeterminate_rate <= 1


def test_tiny_subgroup_is_flagged_without_metrics(result: EvaluationResult) -> None:
    by_group = {(s.variable, s.group): s for s in result.subgroups}
    assert by_group["site", "C"].n == 5 and by_group["site", "C"].small
    assert np.isnan(by_group["site", "C"].macro_auc)
    assert not by_group["site", "A"].small and 0.5 < by_group["site", "A"].macro_auc <= 1
    assert [s.group for s in result.subgroups if s.variable == "slice_thickness"] == [
        "<= 1.5 mm",
        "1.5-3 mm",
        "> 3 mm",
    ]
    payload = result.to_dict()
    tiny = next(s for s in payload["subgroups"] if s["group"] == "C")
    assert tiny["small"] is True and tiny["macro_auc"] is None and tiny["n"] == 5


def test_report_files(result: EvaluationResult, tmp_path: Path) -> None:
    paths = write_report(result, tmp_path / "report", model={"model_id": "toy-model", "sha256": "0" * 64}, data={})
    page = paths["html"].read_text(encoding="utf-8")
    assert INTENDED_USE_HEADER in page
    assert "toy-model" in page
    for interval in [*result.auc.values(), result.macro_auc]:
        assert interval.format() in page  # e.g. "0.871 (0.815–0.923)"
    assert "fitted on the validation split" in page and "never fitted on these (test) cases" in page
    assert page.count("<svg") == 3  # ROC, reliability before and after
    assert "n &lt; 20" in page  # the tiny subgroup flag
    assert "broken-1" in page and "slice gap" in page
    assert not re.search(r"<script|<link|<img|src=|href=", page)  # self-contained, nothing to fetch

    metrics = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert metrics["intended_use"] == INTENDED_USE_HEADER
    assert metrics["macro_auc"]["estimate"] == pytest.approx(result.macro_auc.estimate)
    assert metrics["auc"]["covid19"]["low"] == pytest.approx(result.auc["covid19"].low)
    assert metrics["n_errors"] == 1 and metrics["errors"][0]["case_id"] == "broken-1"
    assert metrics["confusion_matrix"]["argmax"] == result.confusion_argmax.tolist()

    with paths["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 201
    assert rows[-1]["case_id"] == "broken-1" and rows[-1]["error"] and rows[-1]["p_covid19"] == ""
    assert float(rows[0]["p_normal"]) + float(rows[0]["p_covid19"]) + float(rows[0]["p_other_pneumonia"]) == (
        pytest.approx(1.0, abs=1e-5)
    )
    assert {"site", "slice_thickness", "indeterminate", "decision"} <= set(rows[0])


def test_report_escapes_untrusted_text(toy: tuple[np.ndarray, np.ndarray, dict[str, list[str]]]) -> None:
    labels, logits, _ = toy
    r = evaluate_predictions(
        labels, logits, temperature=1.0, class_names=CLASSES, n_bootstrap=0, errors=[CaseError("<b>x</b>", "<script>")]
    )
    page = render_html(r, model={"model_id": "<img src=x>"}, data={})
    assert "<script>" not in page and "<img src=x>" not in page and "&lt;script&gt;" in page


def test_evaluate_predictions_rejects_bad_input(toy: tuple[np.ndarray, np.ndarray, dict[str, list[str]]]) -> None:
    labels, logits, _ = toy
    with pytest.raises(ValueError, match=r"logits must have shape \(n, 3\)"):
        evaluate_predictions(labels, logits[:, :2], temperature=1.0, class_names=CLASSES)
    with pytest.raises(ValueError, match=r"prevalence must be in \(0, 1\)"):
        evaluate_predictions(labels, logits, temperature=1.0, class_names=CLASSES, prevalence=1.0)
    with pytest.raises(ValueError, match="subgroup 'site' must have 200 values"):
        evaluate_predictions(labels, logits, temperature=1.0, class_names=CLASSES, subgroups={"site": ["A"]})
    with pytest.raises(ValueError, match="decision rule class_names must be"):
        evaluate_predictions(
            labels,
            logits,
            temperature=1.0,
            class_names=CLASSES,
            decision_rule=DecisionRule(class_names=("a", "b"), positive_class="a"),
        )


def test_subgroups_from_attributes_and_bins() -> None:
    attrs = [
        {"slice_thickness_mm": 1.0, "noise_hu": 10.0, "site": "A"},
        {"SliceThickness": "5", "noise_hu": 20.0, "Manufacturer": "ACME"},
        {"noise_hu": 30.0, "InstitutionName": "General"},
    ]
    groups = subgroups_from_attributes(attrs)
    assert groups["slice_thickness"] == ["<= 1.5 mm", "> 3 mm", "unknown"]
    assert groups["noise"] == ["< 15 HU", "15-30 HU", ">= 30 HU"]
    assert groups["site"] == ["A", "unknown", "General"]  # manifest column first, then DICOM InstitutionName
    assert groups["manufacturer"] == ["unknown", "ACME", "unknown"]
    assert "kernel" not in groups
    assert bin_fixed([None, 0.5, 1.0, 1.5, 2.0], [1.0, 2.0], ["low", "mid", "high"]) == [
        "unknown",
        "low",
        "mid",
        "mid",
        "high",
    ]
    with pytest.raises(ValueError, match="labels must number"):
        bin_fixed([1.0], [1.0], ["one"])


def test_predict_cases_turns_failures_into_error_rows() -> None:
    def load_ok(value: float):  # type: ignore[no-untyped-def]
        return lambda: (np.full(2, value), {"site": "A"})

    def load_broken():  # type: ignore[no-untyped-def]
        raise OSError("truncated file")

    def predict(arrays: list[np.ndarray]) -> np.ndarray:
        if any(a[0] < 0 for a in arrays):
            raise RuntimeError("bad input in batch")
        return np.stack([[a[0], 0.0, -a[0]] for a in arrays])

    cases = [
        ("a", "normal", load_ok(1.0)),
        ("b", "covid19", load_broken),
        ("c", "covid19", load_ok(-1.0)),  # fails in the model: its batch is retried case by case
        ("d", "other_pneumonia", load_ok(2.0)),
        ("e", "flu", load_ok(3.0)),  # unknown label
    ]
    seen: list[str] = []
    out = predict_cases(
        cases, to_array=lambda v: v, predict=predict, class_names=CLASSES, batch_size=2, progress=seen.append
    )
    assert out.case_ids == ["a", "d"]
    assert out.labels == [0, 2]
    assert out.logits_array(3).shape == (2, 3)
    errors = {e.case_id: e.message for e in out.errors}
    assert set(errors) == {"b", "c", "e"}
    assert "truncated file" in errors["b"] and "bad input" in errors["c"] and "label must be one of" in errors["e"]
    assert seen == ["a", "b", "c", "d", "e"]


# --------------------------------------------------------------------------- medai evaluate, end to end


def _tiny_chest(seed: int, lesion: bool):  # type: ignore[no-untyped-def]
    from medai.volume import Volume

    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:24, 0:48, 0:48]
    hu = np.full((24, 48, 48), -1000.0, np.float32)
    hu[((y - 24) / 20) ** 2 + ((x - 24) / 22) ** 2 <= 1] = 40
    for cx in (14, 34):
        hu[((y - 24) / 13) ** 2 + ((x - cx) / 7) ** 2 + ((z - 12) / 11) ** 2 <= 1] = -850
    if lesion:
        hu[((y - 28) / 4) ** 2 + ((x - 14) / 3) ** 2 + ((z - 12) / 3) ** 2 <= 1] = -400
    hu += rng.normal(0, 10, hu.shape)
    return Volume(np.round(hu).astype(np.int16), spacing_mm=(10.0, 7.0, 7.0))


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """An untrained tiny model saved in the training helper's checkpoint format."""
    torch = pytest.importorskip("torch")
    from medai.preprocess import PreprocessParams
    from medai.training.network import CHECKPOINT_FORMAT, ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(input_shape=(16, 16, 16), channels=(4, 8), strides=(2, 2), dropout=0.0)
    model = build_model(spec)
    path = tmp_path / "tiny.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "kind": "final",
            "model_state": model.state_dict(),
            "model_spec": spec.to_dict(),
            "preprocess": PreprocessParams(grid_shape=(16, 16, 16)).to_dict(),
            "class_names": list(CLASSES),
            "temperature": 1.5,
            "decision_rule": DecisionRule(threshold=0.4, band_half_width=0.05).to_dict(),
            "config": {"seed": 0, "val_fraction": 0.0, "test_fraction": 0.5},
        },
        path,
    )
    return path


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> Path:
    """6 tiny NIfTI chests (2 per class, 2 sites) and one corrupt file, all in the test split."""
    from medai.ingest.nifti import write_nifti

    folder = tmp_path / "cases"
    folder.mkdir()
    lines = ["path,label,patient_id,split,site,slice_thickness_mm"]
    for i in range(6):
        label = CLASSES[i % 3]
        write_nifti(_tiny_chest(i, lesion=label != "normal"), folder / f"c{i}.nii.gz")
        lines.append(f"cases/c{i}.nii.gz,{label},p{i},test,{'AB'[i % 2]},{[1.0, 5.0][i % 2]}")
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    lines.append("cases/broken.nii.gz,covid19,p9,test,A,1.0")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_medai_evaluate_end_to_end(
    tiny_checkpoint: Path, tiny_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medai.cli import main

    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(tiny_checkpoint), "--manifest", str(tiny_manifest), "--out", str(out)]
    assert main([*argv, "--bootstrap", "50", "--prevalence", "0.1", "--min-subgroup", "3"]) == 0
    printed = capsys.readouterr().out
    assert "macro AUC" in printed and "not a medical device" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_cases"] == 6 and metrics["n_errors"] == 1
    assert metrics["errors"][0]["case_id"].startswith("broken.nii.gz")
    assert metrics["temperature"] == 1.5
    assert metrics["decision_rule"]["threshold"] == 0.4
    assert {s["variable"] for s in metrics["subgroups"]} == {"site", "slice_thickness"}
    assert all(s["n"] == 3 and not s["small"] for s in metrics["subgroups"])
    page = (out / "report.html").read_text()
    assert INTENDED_USE_HEADER in page and "tiny" in page  # model id falls back to the file name
    with (out / "predictions.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 7


def test_medai_evaluate_reports_unusable_inputs(
    tiny_checkpoint: Path, tiny_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medai.cli import main

    out = str(tmp_path / "r")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_checkpoint),
                "--manifest",
                str(tiny_manifest),
                "--out",
                out,
                "--split",
                "val",
            ]
        )
        == 1
    )
    assert "no rows with split 'val'" in capsys.readouterr().err
    assert (
        main(["evaluate", "--model", str(tmp_path / "missing.pt"), "--manifest", str(tiny_manifest), "--out", out]) == 1
    )
    assert "checkpoint must be an existing file" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_checkpoint),
                "--synthetic-heldout",
                "4",
                "--out",
                out,
                "--prevalence",
                "1.5",
            ]
        )
        == 1
    )
    assert "--prevalence must be in (0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(tiny_checkpoint), "--out", out])  # no data source


def test_medai_evaluate_reproduces_the_training_split(
    tiny_checkpoint: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    from medai.cli import main
    from medai.training.manifest import assign_splits, read_manifest

    lines = tiny_manifest.read_text().splitlines()
    no_split = tmp_path / "no_split.csv"  # drop the split column: evaluation must redo training's assignment
    no_split.write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != 3) for line in lines))
    expected = {
        r.path.name
        for r in assign_splits(read_manifest(no_split), val_fraction=0.0, test_fraction=0.5)
        if r.split is not None and r.split.value == "test"
    }
    out = tmp_path / "r"
    argv = ["evaluate", "--model", str(tiny_checkpoint), "--manifest", str(no_split), "--out", str(out)]
    assert main([*argv, "--bootstrap", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_cases"] + metrics["n_errors"] == len(expected) < 7
    assert "assigned as in training" in metrics["data"]["split assignment"]


def test_medai_evaluate_synthetic_heldout(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from medai.cli import main

    out = tmp_path / "heldout"
    argv = ["evaluate", "--model", str(tiny_checkpoint), "--synthetic-heldout", "6", "--seed", "3", "--out", str(out)]
    assert main([*argv, "--bootstrap", "20", "--min-subgroup", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_cases"] + metrics["n_errors"] == 6
    assert "synthetic held-out" in metrics["data"]["source"]
    variables = {s["variable"] for s in metrics["subgroups"]}
    assert {"slice_thickness", "noise", "kernel", "patient_size", "manufacturer"} <= variables
    assert all(s["group"] == "> 3 mm" for s in metrics["subgroups"] if s["variable"] == "slice_thickness")
    with (out / "predictions.csv").open(newline="") as f:
        ids = [row["case_id"] for row in csv.DictReader(f)]
    assert ids[0] == "heldout-s3-0000" and len(ids) == 6
