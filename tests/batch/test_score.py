"""medai score: discovery to rows, reasons, key images, pseudonyms, resume after kill -9, scale-out, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import generate_uid

from medai.batch.plan import plan_inputs
from medai.batch.pseudonym import Pseudonymizer
from medai.batch.run import run_score
from medai.cli import main as cli_main
from medai.ingest.nifti import write_nifti
from medai.phantoms import files as phantom_files
from medai.phantoms import synthetic
from medai.phantoms.ctwriter import write_ct_series
from medai.report.results import COLUMNS, read_results
from medai.volume import Volume

KEY = "test-key-0123456789abcdef"
_VOLATILE = {"load_s", "preprocess_s", "inference_s", "saliency_s", "quantify_s", "total_s", "worker", "scored_at"}


@dataclass
class Tree:
    root: Path
    uids: dict[str, str]  # name -> series UID
    identities: list[str]  # patient names, IDs and accession numbers written into the files


@pytest.fixture(scope="module")
def tree(small_phantom: Callable[..., synthetic.Phantom], tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """good_a (covid19) + an MR and a lower-ranked CT series in its study; good_b (normal) zipped;
    a study whose only series has a gap; one with truncated pixel data; junk files."""
    root = tmp_path_factory.mktemp("studies")
    uids: dict[str, str] = {}
    identities: list[str] = []

    def remember(ph: synthetic.Phantom, name: str, accession: str) -> dict[str, Any]:
        uids[name] = ph.volume.series_uid
        identities.extend([str(ph.volume.header["PatientName"]), str(ph.volume.header["PatientID"]), accession])
        return {"AccessionNumber": accession}

    a = small_phantom("covid19", 0.25, 1)
    extra = remember(a, "good_a", "ACC1001")
    phantom_files.write_dicom(a, root / "good_a")
    for path in (root / "good_a").iterdir():  # accession number into the files
        import pydicom

        ds = pydicom.dcmread(path)
        ds.AccessionNumber = extra["AccessionNumber"]
        ds.save_as(path)
    header = {k: a.volume.header[k] for k in ("PatientID", "PatientName")}
    for name, attrs in (
        ("mr_a", {"Modality": "MR"}),
        ("thick_a", {"Modality": "CT", "ConvolutionKernel": "UNKNOWN", "SeriesNumber": 9}),
    ):
        other = Volume(
            a.volume.hu,
            a.volume.spacing_mm,
            a.volume.origin_mm,
            a.volume.direction,
            series_uid=generate_uid(),
            study_uid=a.volume.study_uid,
        )
        uids[name] = other.series_uid
        write_ct_series(other, root / name, attributes={**header, **attrs}, slice_thickness_mm=9.0)
    b = small_phantom("normal", 0.0, 2)
    remember(b, "good_b", "")
    phantom_files.write_dicom(b, root / "tmp_b")
    with zipfile.ZipFile(root / "good_b.zip", "w") as archive:
        for path in sorted((root / "tmp_b").iterdir()):
            archive.write(path, f"b/{path.name}")
    shutil.rmtree(root / "tmp_b")
    c = small_phantom("other_pneumonia", 0.3, 3)
    remember(c, "gap_c", "")
    phantom_files.write_dicom(c, root / "gap_c")[12].unlink()
    d = small_phantom("covid19", 0.1, 4)
    remember(d, "trunc_d", "")
    files = phantom_files.write_dicom(d, root / "trunc_d")
    files[5].write_bytes(files[5].read_bytes()[:-3000])
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not dicom")
    (root / "junk" / "empty.dcm").write_bytes(b"")
    return Tree(root, uids, identities)


def _by_series(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["series_uid"]: r for r in rows}


def _stable(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["series_uid"]: {k: v for k, v in r.items() if k not in _VOLATILE} for r in rows}


def test_mixed_tree_gives_one_row_per_series_with_reasons(tree: Tree, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    keys = tmp_path / "keys"
    code = cli_main(
        ["score", str(tree.root), "--out", str(out), "--workers", "1", "--no-progress", "--saliency-dir", str(keys)]
    )
    assert code == 1  # the gap and the truncated series failed
    rows = read_results(out)
    by = _by_series(rows)
    assert len(rows) == 6 and set(by) == set(tree.uids.values())
    expect = {
        "good_a": ("ok", None),
        "good_b": ("ok", None),
        "mr_a": ("skipped", "not_ct"),
        "thick_a": ("skipped", "not_selected"),
        "gap_c": ("error", "slice_gap"),
        "trunc_d": ("error", "truncated_pixel_data"),
    }
    for name, (status, reason) in expect.items():
        row = by[tree.uids[name]]
        assert (row["status"], row["reason"]) == (status, reason), (name, row["message"])
    good_a, good_b = by[tree.uids["good_a"]], by[tree.uids["good_b"]]
    assert good_a["label"] == "covid19"
    # good_b is a normal phantom; the shipped model reads it other_pneumonia (a findings-only
    # decision at a low opacity burden, docs/ood.md): it must at least be more normal than the COVID-19 study
    assert good_b["p_normal"] > good_a["p_normal"] and good_b["lesion_percent"] < good_a["lesion_percent"]
    for row in (good_a, good_b):
        assert row["model_id"].startswith("medai-ref@")
        assert row["p_normal"] + row["p_covid19"] + row["p_other_pneumonia"] == pytest.approx(1.0, abs=1e-5)
        assert row["severity"].startswith("CT-") and 0 <= row["lesion_percent"] <= 100
        assert row["right_upper_lesion_percent"] is not None and row["total_s"] > 0
        assert Path(row["key_image"]).is_file() and Path(row["key_image"]).parent == keys
    assert good_b["source"].endswith("good_b.zip")
    assert good_a["accession_number"] == "ACC1001" and good_a["pseudonymized"] is False
    assert "gap" in by[tree.uids["gap_c"]]["message"]
    assert all(r["model_id"] == good_a["model_id"] for r in rows)


def test_manifest_with_dicom_nifti_and_missing_paths(
    small_phantom: Callable[..., synthetic.Phantom], tree: Tree, tmp_path: Path
) -> None:
    phantom_files.write_nifti(small_phantom("covid19", 0.3, 6), tmp_path / "nifti" / "case.nii.gz")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,label\n{tree.root / 'good_a'},covid19\nnifti/case.nii.gz,covid19\nnowhere/c9,normal\n")
    plan = plan_inputs([manifest])
    assert [j.key for j in plan.jobs] == [str(tmp_path / "nifti" / "case.nii.gz"), tree.uids["good_a"]]
    (missing,) = plan.rows
    assert (missing["status"], missing["reason"]) == ("error", "unreadable")
    assert missing["source"].endswith("nowhere/c9")
    out = tmp_path / "r.csv"
    run_score([manifest], out, workers=1)
    nifti_row = next(r for r in read_results(out) if r["source"].endswith(".nii.gz"))
    assert nifti_row["status"] == "ok" and nifti_row["n_slices"] == 30 and nifti_row["series_uid"] is None
    assert run_score([manifest], out, workers=1).n_resumed == 2  # NIfTI rows resume by their file


def test_upper_case_nifti_names_its_key_images_without_the_suffix(
    small_phantom: Callable[..., synthetic.Phantom], tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    write_nifti(small_phantom("covid19", 0.3, 6).volume, tmp_path / "in" / "CT.NII.GZ")
    keys = tmp_path / "keys"
    run_score([tmp_path / "in" / "CT.NII.GZ"], tmp_path / "r.csv", workers=1, saliency_dir=keys, saliency_nifti=True)
    (row,) = read_results(tmp_path / "r.csv")
    assert row["status"] == "ok"
    assert sorted(p.name for p in keys.iterdir()) == ["CT.png", "CT_saliency.nii.gz"]


def test_a_label_map_is_refused_and_the_batch_goes_on(
    small_phantom: Callable[..., synthetic.Phantom], tmp_path: Path
) -> None:
    """The phantom writer puts the masks beside the CT; scoring one by mistake gives a clear error row."""
    phantom_files.write_nifti(small_phantom("covid19", 0.3, 6), tmp_path / "case.nii.gz")
    inputs = [tmp_path / "case.nii.gz", tmp_path / "case_lung.nii.gz"]
    assert run_score(inputs, tmp_path / "r.csv", workers=1).n_errors == 1
    by_source = {Path(r["source"]).name: r for r in read_results(tmp_path / "r.csv")}
    assert by_source["case.nii.gz"]["status"] == "ok"
    bad = by_source["case_lung.nii.gz"]
    assert (bad["status"], bad["reason"]) == ("error", "not_hounsfield")
    assert "values 0..2" in bad["message"] and "label map" in bad["message"]


@pytest.mark.parametrize("parallel", [False, True])
def test_nifti_files_under_a_folder_are_scored_and_phantom_masks_are_not(
    small_phantom: Callable[..., synthetic.Phantom], tmp_path: Path, parallel: bool
) -> None:
    phantom_files.write_nifti(small_phantom("covid19", 0.3, 6), tmp_path / "data" / "a" / "case.nii.gz")
    (tmp_path / "data" / "b").mkdir()
    write_nifti(small_phantom("normal", 0.0, 7).volume, tmp_path / "data" / "b" / "CT.NII")
    (tmp_path / "data" / "b" / "notes.txt").write_text("not an image")
    map_unordered = (lambda f, items: map(f, items)) if parallel else None
    plan = plan_inputs([tmp_path / "data", tmp_path / "data" / "b" / "CT.NII"], map_unordered=map_unordered)
    assert sorted(Path(j.key).name for j in plan.jobs) == ["CT.NII", "case.nii.gz"]  # each once
    assert sorted(Path(str(f.source)).name for f in plan.skipped_files) == [
        "case_lesion.nii.gz",
        "case_lung.nii.gz",
        "notes.txt",
    ]
    assert plan.rows == []


def test_a_new_quantification_head_scores_again_instead_of_resuming(
    small_phantom: Callable[..., synthetic.Phantom], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows say which classifier and which quantification head made them; resuming matches both."""
    from medai.quantify.head import DEFAULT_QUANT_MODEL, QUANT_MODEL_ENV

    onnx = pytest.importorskip("onnx")
    synthetic_input = tmp_path / "case.nii.gz"
    phantom_files.write_nifti(small_phantom("covid19", 0.3, 6), synthetic_input)
    out = tmp_path / "r.csv"
    first = run_score([synthetic_input], out, workers=1)
    assert first.model_id.startswith("medai-ref@") and "+medai-quant@" in first.model_id
    assert run_score([synthetic_input], out, workers=1).n_resumed == 1
    # the same head, re-saved with another doc string: another file, another sha256, another id
    other = tmp_path / "head" / "medai-quant.onnx"
    other.parent.mkdir()
    proto = onnx.load(str(DEFAULT_QUANT_MODEL))
    proto.doc_string = "re-exported"
    onnx.save(proto, str(other))
    card = json.loads(DEFAULT_QUANT_MODEL.with_suffix(".json").read_text())
    card["sha256"] = hashlib.sha256(other.read_bytes()).hexdigest()
    other.with_suffix(".json").write_text(json.dumps(card))
    monkeypatch.setenv(QUANT_MODEL_ENV, str(other))
    second = run_score([synthetic_input], out, workers=1)
    assert second.n_resumed == 0 and second.model_id != first.model_id
    assert [r["model_id"] for r in read_results(out)] == [first.model_id, second.model_id]


def test_pseudonymized_output_has_no_identifiers(tree: Tree, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    code = cli_main(
        ["score", str(tree.root), "--out", str(out), "--workers", "1", "--no-progress", "--pseudonymize-key", KEY]
    )
    assert code == 1
    text = out.read_text()
    for identity in tree.identities:
        if identity:
            assert identity not in text, identity
    rows = read_results(out)
    pseudo = Pseudonymizer(KEY.encode())
    good_a = _by_series(rows)[tree.uids["good_a"]]
    assert good_a["patient_id"] == pseudo("PatientID", tree.identities[1])
    assert good_a["accession_number"] == pseudo("AccessionNumber", "ACC1001")
    assert all(r["pseudonymized"] and not r["patient_name"] for r in rows if r["series_uid"])
    other = Pseudonymizer(b"another-key-0123456789")
    assert other("PatientID", tree.identities[1]) != good_a["patient_id"]


def test_resume_skips_scored_series_and_force_rescores(tree: Tree, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    first = run_score([tree.root], out, workers=1)
    assert first.n_jobs == 3 and first.n_resumed == 0 and first.n_errors == 2
    before = read_results(out)
    second = run_score([tree.root], out, workers=1)
    assert second.n_jobs == 0 and second.n_resumed == 3 and second.n_errors == 2
    assert read_results(out) == before
    forced = run_score([tree.root], out, workers=1, force=True)
    assert forced.n_jobs == 3
    after = read_results(out)
    assert len(after) == 6 and len({r["series_uid"] for r in after}) == 6
    assert _stable(after) == _stable(before)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_torn_last_line_is_dropped_on_resume(tree: Tree, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"results{suffix}"
    run_score([tree.root / "good_a", tree.root / "good_b.zip"], out, workers=1)
    complete = out.read_bytes()
    lines = complete.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # kill -9 mid-write
    summary = run_score([tree.root / "good_a", tree.root / "good_b.zip"], out, workers=1)
    assert summary.n_jobs == 1 and summary.n_resumed == 1
    rows = read_results(out)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}


def test_output_formats_round_trip(tree: Tree, tmp_path: Path) -> None:
    inputs = [tree.root / "good_a", tree.root / "gap_c"]
    results = {}
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"results{suffix}"
        run_score(inputs, out, workers=1)
        rows = read_results(out)
        assert all(tuple(r) == COLUMNS for r in rows)
        results[suffix] = _stable(rows)
    assert results[".csv"] == results[".jsonl"] == results[".parquet"]
    assert not list(tmp_path.glob(".*.tmp"))
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "results.parquet").num_rows == 2


def test_exit_codes(tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = ["score", str(tree.root / "good_a"), "--workers", "1", "--no-progress"]
    assert cli_main([*ok, "--out", str(tmp_path / "ok.csv")]) == 0
    assert cli_main([*ok, "--out", str(tmp_path / "ok.txt")]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli_main(["score", str(tmp_path / "missing"), "--out", str(tmp_path / "x.csv")]) == 2
    assert cli_main([*ok, "--out", str(tmp_path / "k.csv"), "--pseudonymize-key", "short"]) == 2
    assert cli_main([*ok, "--out", str(tmp_path / "n.csv"), "--saliency-nifti"]) == 2
    assert "needs --saliency-dir" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "k.csv").exists()


def test_saliency_nifti_maps_match_the_volume(tree: Tree, tmp_path: Path) -> None:
    import nibabel as nib

    out = tmp_path / "r.jsonl"
    run_score([tree.root / "good_a"], out, workers=1, saliency_dir=tmp_path / "sal", saliency_nifti=True)
    (row,) = read_results(out)
    image = nib.load(row["saliency_nifti"])
    assert image.shape == (112, 112, 30)
    data = np.asarray(image.dataobj)
    assert np.abs(data).max() > 0.5 and data.min() >= -1.0001 and data.max() <= 1.0001  # a signed map in [-1, 1]


def test_parallel_processes_and_dask_equal_sequential(tree: Tree, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    run_score([tree.root], tmp_path / "seq.jsonl", workers=1)
    run_score([tree.root], tmp_path / "proc.jsonl", workers=2)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as c,
        Client(c) as client,
    ):
        run_score([tree.root], tmp_path / "dask.jsonl", scheduler=client)
    seq, proc, dask = (read_results(tmp_path / f"{n}.jsonl") for n in ("seq", "proc", "dask"))
    assert not {r["worker"] for r in proc if r["status"] == "ok"} & {r["worker"] for r in seq}  # other processes
    for other in (proc, dask):
        a, b = _stable(seq), _stable(other)
        assert a.keys() == b.keys()
        for uid in a:
            for name in a[uid]:
                if isinstance(a[uid][name], float):
                    assert b[uid][name] == pytest.approx(a[uid][name], abs=1e-4), name
                else:
                    assert b[uid][name] == a[uid][name], name


@pytest.fixture(scope="module")
def many(small_phantom: Callable[..., synthetic.Phantom], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small series (one phantom written under eight UIDs) for the kill test."""
    root = tmp_path_factory.mktemp("many")
    ph = small_phantom("covid19", 0.2, 11, slices=24)
    for i in range(8):
        volume = Volume(
            ph.volume.hu,
            ph.volume.spacing_mm,
            ph.volume.origin_mm,
            ph.volume.direction,
            series_uid=generate_uid(),
            study_uid=generate_uid(),
        )
        write_ct_series(volume, root / f"s{i}", attributes={"PatientID": f"P{i}"})
    return root


def test_resume_after_kill9_loses_nothing_and_duplicates_nothing(many: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "medai.cli", "score", str(many), "--out", str(out), "--workers", "1"]
    command.append("--no-progress")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]
    assert 2 <= len(partial) < 8  # killed mid-run
    assert cli_main(["score", str(many), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    rows = read_results(out)
    assert len(rows) == 8 and len({r["series_uid"] for r in rows}) == 8
    assert {r["status"] for r in rows} == {"ok"}


def test_discovery_split_into_chunks_equals_one_walk(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    from medai.batch import plan as scoreplan

    whole = plan_inputs([tree.root])
    monkeypatch.setattr(scoreplan, "_FILES_PER_CHUNK", 7)  # series split across chunks, merged again
    chunked = plan_inputs([tree.root], map_unordered=lambda f, items: reversed([f(i) for i in items]))
    assert [j.series for j in chunked.jobs] == [j.series for j in whole.jobs]
    assert chunked.rows == whole.rows
    assert sorted(map(str, chunked.skipped_files)) == sorted(map(str, whole.skipped_files))


def test_scoring_path_does_not_import_torch(tree: Tree, tmp_path: Path) -> None:
    code = (
        "import sys; from medai.cli import main; "
        f"main(['score', {str(tree.root / 'good_a')!r}, '--out', {str(tmp_path / 'r.csv')!r}, '--no-progress', "
        f"'--saliency-dir', {str(tmp_path / 'k')!r}]); "
        "import medai.batch.pool, medai.report.keyimages; "
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "r.csv").is_file()
