"""Real-world trees, as a new user meets them: studies behind symbolic links (and link loops), medai's own
outputs inside the scanned tree, and one input resolver for ``medai predict`` and ``medai score``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from medai.batch.plan import plan_inputs
from medai.cli import main as cli_main
from medai.inference.classifier import QC_FLAG_MEANINGS
from medai.ingest.discovery import find_series
from medai.ingest.load import load_study
from medai.ingest.nifti import write_nifti
from medai.phantoms import files as phantom_files
from medai.phantoms import synthetic
from medai.report.results import read_results


@pytest.fixture(scope="module")
def study_elsewhere(small_phantom: Callable[..., synthetic.Phantom], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One phantom study written outside the tree the tests scan."""
    folder = tmp_path_factory.mktemp("elsewhere") / "study"
    phantom_files.write_dicom(small_phantom("covid19", 0.3, 5), folder)
    return folder


def test_a_study_behind_a_symbolic_link_is_found_and_a_link_loop_ends(study_elsewhere: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "study").symlink_to(study_elsewhere, target_is_directory=True)
    (tree / "again").symlink_to(study_elsewhere, target_is_directory=True)  # the same study through two links
    (study_elsewhere / "loop").symlink_to(tree, target_is_directory=True)  # and a loop back to the top
    try:
        found = find_series(tree)
        assert len(found) == 1 and found[0].n_instances == 30
        reasons = " ".join(s.reason for s in found.skipped)
        assert "already walked" in reasons
        plan = plan_inputs([tree])
        assert len(plan.jobs) == 1 and not [r for r in plan.rows if r["status"] == "error"]
        assert len(plan_inputs([tree], map_unordered=lambda f, items: map(f, items)).jobs) == 1
    finally:
        (study_elsewhere / "loop").unlink()


def test_medai_outputs_inside_the_tree_are_not_inputs(study_elsewhere: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "study").symlink_to(study_elsewhere, target_is_directory=True)
    out = tree / "results.csv"
    args = ["score", str(tree), "--out", str(out), "--saliency-dir", str(tree / "keys"), "--saliency-nifti"]
    assert cli_main([*args, "--workers", "1", "--no-progress"]) == 0
    (tree / "results.jsonl").write_text(json.dumps(read_results(out)[0], default=str) + "\n")
    spool = tree / "spool"
    (spool / "instances" / "1.2.3").mkdir(parents=True)
    (spool / "queue.sqlite3").write_bytes(b"SQLite format 3\x00")
    (spool / "instances" / "1.2.3" / "1.2.3.4.dcm").write_bytes(study_elsewhere.joinpath("IM00000.dcm").read_bytes())
    found = find_series(tree)
    assert [s.n_instances for s in found] == [30]  # not the spooled instance
    assert found.skipped == () and found.volumes == ()  # no key image, saliency map or results file
    assert cli_main([*args, "--workers", "1", "--no-progress"]) == 0  # resumes: nothing new to score
    assert [r["status"] for r in read_results(out)] == ["ok"]


def test_predict_scores_a_nifti_file_as_score_does(
    small_phantom: Callable[..., synthetic.Phantom], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ct.nii.gz"
    write_nifti(small_phantom("normal", 0.0, 6).volume, path)
    assert cli_main(["predict", str(path), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert cli_main(["score", str(path), "--out", str(tmp_path / "r.jsonl"), "--no-progress"]) == 0
    (row,) = read_results(tmp_path / "r.jsonl")
    assert row["label"] == predicted["label"]
    assert row["p_covid19"] == pytest.approx(predicted["probabilities"]["covid19"], abs=1e-6)
    capsys.readouterr()
    assert cli_main(["predict", str(path)]) == 0  # the lines a person reads say what the results file says
    text = capsys.readouterr().out
    assert f"severity {row['severity']}\n" in text  # the served grade (CT-0 for a determinate normal)
    for flag in filter(None, str(row["qc_flags"] or "").split(";")):
        assert f"qc       {flag}: {QC_FLAG_MEANINGS[flag]}\n" in text  # each warning with what it means
    report, volume = load_study(tmp_path)  # a folder holding one NIfTI volume, as predict PATH/ sees it
    assert report.selected is None and volume.shape == (30, 112, 112)
    assert cli_main(["inspect", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["volumes"] == [str(path)]


def test_a_folder_of_two_studies_is_one_too_many_for_predict(study_elsewhere: Path, tmp_path: Path) -> None:
    os.symlink(study_elsewhere, tmp_path / "a")
    write_nifti(load_study(study_elsewhere)[1], tmp_path / "b.nii")
    assert cli_main(["predict", str(tmp_path)]) == 1
