"""The triage worklist: studies from folders and results files, triage order, scoring once per series."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medai.errors import InvalidSeriesError
from medai.inference.classifier import Classifier, Prediction
from medai.phantoms import files as phantom_files
from medai.phantoms import synthetic
from medai.report.results import RowStatus
from medai.report.worklist import (
    SourceKind,
    StudyRef,
    Worklist,
    WorklistEntry,
    entries_from_folder,
    entries_from_results,
    merge_results,
    triage_group,
)
from medai.volume import Volume


class CountingClassifier:
    """The shipped classifier, counting predictions per series (thread-safe)."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier
        self.scoring_id = classifier.scoring_id
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def predict(self, volume: Volume) -> Prediction:
        with self._lock:
            self.calls.append(volume.series_uid or str(volume.header.get("SourcePath")))
        return self._classifier.predict(volume)


@dataclass
class Tree:
    root: Path
    uids: dict[str, str]


@pytest.fixture(scope="module")
def tree(small_phantom: Callable[..., synthetic.Phantom], tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """covid (DICOM), normal (DICOM), gap (a series with a missing slice), scan.nii.gz (+ its masks)."""
    root = tmp_path_factory.mktemp("worklist")
    uids = {}
    for name, label, severity, seed in (("covid", "covid19", 0.3, 21), ("normal", "normal", 0.0, 22)):
        phantom = small_phantom(label, severity, seed)
        phantom_files.write_dicom(phantom, root / name)
        uids[name] = phantom.volume.series_uid
    gap = small_phantom("normal", 0.0, 23)
    files = phantom_files.write_dicom(gap, root / "gap")
    files[len(files) // 2].unlink()
    uids["gap"] = gap.volume.series_uid
    phantom_files.write_nifti(small_phantom("other_pneumonia", 0.2, 24), root / "scan.nii.gz")
    return Tree(root, uids)


def row(status: str, label: str = "", p_covid19: float | None = None, indeterminate: bool = False) -> dict[str, Any]:
    return {"status": status, "label": label, "p_covid19": p_covid19, "indeterminate": indeterminate}


def test_triage_order_puts_covid_and_indeterminate_first_then_by_probability() -> None:
    rows = {
        "normal_sure": row("ok", "normal", 0.01),
        "normal_unsure": row("ok", "normal", 0.2),
        "covid_high": row("ok", "covid19", 0.95),
        "covid_low": row("ok", "covid19", 0.6),
        "indeterminate": row("ok", "normal", 0.45, indeterminate=True),
        "other": row("ok", "other_pneumonia", 0.1),
        "qc": row("error"),
        "pending": {},
    }
    entries = [WorklistEntry(StudyRef(k, k, SourceKind.FOLDER), r) for k, r in rows.items()]
    worklist = Worklist(entries, classifier=Classifier.load)
    assert [e.key for e in worklist.entries()] == [
        "covid_high",
        "covid_low",
        "indeterminate",
        "other",
        "qc",
        "pending",
        "normal_unsure",
        "normal_sure",
    ]
    assert triage_group(rows["indeterminate"]) == 0 and triage_group(rows["normal_sure"]) == 4
    with pytest.raises(ValueError, match="keys must be unique"):
        Worklist(entries + entries[:1], classifier=Classifier.load)


def test_a_folder_lists_each_study_once_with_the_qc_reason_of_a_refused_one(tree: Tree) -> None:
    entries = {e.ref.title: e for e in entries_from_folder(tree.root)}
    assert sorted(entries) == ["covid", "gap", "normal", "scan"]
    assert entries["covid"].key == tree.uids["covid"] and entries["covid"].status == "pending"
    assert entries["gap"].status == RowStatus.ERROR and entries["gap"].row["reason"] == "slice_gap"
    assert "\n" not in entries["gap"].row["message"]
    assert entries["scan"].ref.nifti_path == tree.root / "scan.nii.gz"  # the _lung/_lesion masks are not listed


def test_scoring_runs_once_per_series_and_sorts_the_worklist(tree: Tree, shipped_classifier: Classifier) -> None:
    counting = CountingClassifier(shipped_classifier)
    worklist = Worklist(entries_from_folder(tree.root), classifier=lambda: counting)  # type: ignore[arg-type,return-value]
    key = tree.uids["covid"]
    cases = []
    threads = [threading.Thread(target=lambda: cases.append(worklist.open(key))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counting.calls == [key]  # three readers, one inference
    assert cases[0] is cases[1] is cases[2] and cases[0].prediction is not None
    assert len(cases[0].sources) == 30
    worklist.start_scoring()
    worklist.start_scoring()  # idempotent
    assert worklist._thread is not None
    worklist._thread.join(timeout=120)
    assert worklist.progress() == (4, 4)
    assert sorted(counting.calls) == sorted([key, tree.uids["normal"], str(tree.root / "scan.nii.gz")])
    entries = worklist.entries()
    assert all(e.status in ("ok", "error") for e in entries)
    assert entries[0].row["model_id"] == shipped_classifier.scoring_id
    groups = [triage_group(e.row) for e in entries]
    assert groups == sorted(groups)
    with pytest.raises(InvalidSeriesError, match="slice_gap"):
        worklist.open(tree.uids["gap"])
    worklist.open(key)
    assert len(counting.calls) == 3  # the opened study was not scored again


def test_results_rows_open_without_scoring_again(tree: Tree, shipped_classifier: Classifier) -> None:
    results = [
        {
            "source": str(tree.root / "covid"),
            "series_uid": tree.uids["covid"],
            "status": "ok",
            "label": "covid19",
            "p_covid19": 0.9,
            "model_id": "old-model",
        },
        {"source": str(tree.root / "gap"), "series_uid": tree.uids["gap"], "status": "skipped"},
    ]
    listed = merge_results(entries_from_folder(tree.root), entries_from_results(results))
    counting = CountingClassifier(shipped_classifier)
    worklist = Worklist(listed, classifier=lambda: counting)  # type: ignore[arg-type,return-value]
    first = worklist.entries()[0]
    assert (first.key, first.row["label"], first.row["model_id"]) == (tree.uids["covid"], "covid19", "old-model")
    case = worklist.open(first.key, score=False)
    assert case.prediction is None and case.volume.series_uid == tree.uids["covid"]
    assert counting.calls == []
    scored = worklist.open(first.key, score=True)  # the reader asks for the overlays
    assert scored.prediction is not None and counting.calls == [tree.uids["covid"]]
    assert worklist.entry(first.key).row["model_id"] == shipped_classifier.scoring_id
    (only,) = entries_from_results(results)
    assert only.ref.kind is SourceKind.RESULTS
    assert Worklist([only], classifier=Classifier.load).open(only.key, score=False).volume.shape[0] == 30
