"""Tests for medai.training.manifest and medai.ingest.nifti."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medai.errors import InvalidSeriesError, ManifestError, QCReason
from medai.ingest.nifti import read_nifti, write_nifti
from medai.labels import CLASS_NAMES
from medai.training.manifest import ManifestRow, Split, assign_splits, load_case, read_manifest, write_manifest
from medai.volume import Volume


def write_csv(tmp_path, text: str):
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_read_manifest_resolves_paths_and_keeps_extras(tmp_path):
    path = write_csv(tmp_path, "path,label,patient_id,split,site\ncases/a.nii.gz,normal,p1,train,A\nb,covid19,p2,,B\n")
    rows = read_manifest(path)
    assert [r.label for r in rows] == ["normal", "covid19"]
    assert rows[0].path == tmp_path.resolve() / "cases" / "a.nii.gz"
    assert rows[0].split is Split.TRAIN and rows[1].split is None
    assert rows[1].extra == {"site": "B"}
    assert rows[1].row_number == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "path,label\na,covid\n",
            r"row 2: label must be one of \['normal', 'covid19', 'other_pneumonia'\], not 'covid'",
        ),
        ("path,patient_id\na,p1\n", r"must have columns \['path', 'label'\], missing \['label'\]"),
        ("path,label,split\na,normal,training\n", r"row 2: split must be one of \['train', 'val', 'test'\]"),
        ("path,label\n,normal\n", "row 2: path must not be empty"),
        ("path,label\n", "at least one case"),
        ("path,label,patient_id,split\na,normal,p1,train\nb,normal,p1,test\n", "patient 'p1' must be in one split"),
    ],
)
def test_read_manifest_errors(tmp_path, text, message):
    with pytest.raises(ManifestError, match=message):
        read_manifest(write_csv(tmp_path, text))


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="existing CSV"):
        read_manifest(tmp_path / "nope.csv")


def test_assign_splits_is_patient_level_stratified_and_seeded():
    rows = [ManifestRow(path=Path(f"c{i}"), label=CLASS_NAMES[i % 3], patient_id=f"p{i // 3}") for i in range(300)]
    out = assign_splits(rows, val_fraction=0.2, test_fraction=0.2, seed=1)
    by_patient: dict[str, set] = {}
    for r in out:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    counts = {s: sum(r.split is s for r in out) for s in Split}
    assert 40 <= counts[Split.TEST] <= 80 and 40 <= counts[Split.VAL] <= 80
    assert [r.split for r in assign_splits(rows, val_fraction=0.2, test_fraction=0.2, seed=1)] == [r.split for r in out]
    assert [r.split for r in assign_splits(rows, val_fraction=0.2, test_fraction=0.2, seed=2)] != [r.split for r in out]


def test_assign_splits_keeps_given_splits_and_follows_patients():
    rows = [
        ManifestRow(Path("a"), "normal", patient_id="p1", split=Split.TEST),
        ManifestRow(Path("b"), "normal", patient_id="p1"),
        ManifestRow(Path("c"), "covid19", patient_id="p2"),
    ]
    out = assign_splits(rows, val_fraction=0.0, test_fraction=0.0)
    assert [r.split for r in out] == [Split.TEST, Split.TEST, Split.TRAIN]
    bad = [*rows, ManifestRow(Path("d"), "normal", patient_id="p1", split=Split.TRAIN)]
    with pytest.raises(ManifestError, match="must be in one split"):
        assign_splits(bad, val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(ValueError, match="sum < 1"):
        assign_splits(rows, val_fraction=0.6, test_fraction=0.5)


def test_write_then_read_manifest(tmp_path):
    rows = [ManifestRow(tmp_path / "x.nii", "other_pneumonia", "p9", Split.VAL, {"kernel": "B30f"})]
    write_manifest(rows, tmp_path / "m.csv")
    back = read_manifest(tmp_path / "m.csv")
    assert back[0].path == (tmp_path / "x.nii").resolve()
    assert (back[0].label, back[0].patient_id, back[0].split, dict(back[0].extra)) == (
        "other_pneumonia",
        "p9",
        Split.VAL,
        {"kernel": "B30f"},
    )


def test_nifti_round_trip_keeps_lps_geometry(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 400, (4, 5, 6)).astype(np.int16)
    direction = np.array([[-1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]])
    vol = Volume(hu, (2.5, 0.75, 0.8), origin_mm=(10.0, -20.0, 30.0), direction=direction)
    path = tmp_path / "ct.nii.gz"
    write_nifti(vol, path)
    back = read_nifti(path)
    np.testing.assert_array_equal(back.hu, hu)
    assert back.spacing_mm == (2.5, 0.75, 0.8)
    np.testing.assert_allclose(back.direction, direction)
    np.testing.assert_allclose(back.origin_mm, vol.origin_mm, atol=1e-4)
    # nibabel sees the same voxel at the RAS position = LPS with x, y negated
    img = nib.load(str(path))
    ras = img.affine @ np.array([1, 2, 3, 1.0])
    lps = vol.index_to_patient(np.array([3, 2, 1]))
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-4)


def test_load_case_reads_nifti(tmp_path):
    vol = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0))
    write_nifti(vol, tmp_path / "a.nii.gz")
    loaded = load_case(ManifestRow(tmp_path / "a.nii.gz", "normal"))
    assert loaded.shape == (3, 4, 5)


def test_read_nifti_rejects_4d(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.int16), np.eye(4)), str(tmp_path / "t.nii"))
    with pytest.raises(Exception, match="3D volume"):
        read_nifti(tmp_path / "t.nii")


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_read_nifti_rejects_a_volume_without_voxels(tmp_path, dtype):
    # found by the coverage-guided fuzzer: a float volume with a zero dimension reached numpy's min() and raised
    # ValueError, not a typed error naming the file
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), dtype), np.eye(4)), str(tmp_path / "e.nii"))
    with pytest.raises(InvalidSeriesError, match="holds no voxels") as caught:
        read_nifti(tmp_path / "e.nii")
    assert caught.value.reason is QCReason.IMPLAUSIBLE_DIMENSIONS and "e.nii" in str(caught.value)


def _shear(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0, 1] = 0.3
    return a


def _non_finite(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0, 3] = np.inf
    return a


@pytest.mark.parametrize(
    ("data", "affine", "reason", "words"),
    [
        (np.full((4, 5, 6), np.nan, np.float32), np.eye(4), QCReason.NOT_HOUNSFIELD, "non-finite values"),
        (np.full((4, 5, 6), 1e300, np.float64), np.eye(4), QCReason.NOT_HOUNSFIELD, "beyond float32"),
        (np.zeros((4, 5, 6), np.complex64), np.eye(4), QCReason.NOT_HOUNSFIELD, "complex64 values"),
        (np.zeros((4, 5, 6), [("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4), QCReason.NOT_HOUNSFIELD, "colour"),
        (np.zeros((4, 5, 6), np.int16), _non_finite(np.eye(4)), QCReason.INCONSISTENT_GEOMETRY, "non-finite affine"),
        (np.zeros((4, 5, 6), np.int16), _shear(np.eye(4)), QCReason.INCONSISTENT_ORIENTATION, "sheared affine"),
        (np.zeros((4, 5, 6), np.int16), np.diag([7e-4, 7e-4, 1e-3, 1]), QCReason.IMPLAUSIBLE_DIMENSIONS, "0.05..25"),
    ],
    ids=["nan", "beyond-float32", "complex", "rgb", "infinite-origin", "sheared", "metres"],
)
def test_read_nifti_refuses_what_is_not_a_ct_volume_by_name(tmp_path, data, affine, reason, words):
    # a volume that loaded with NaN HU or a non-finite or sheared geometry would fail later, silently or far
    # from its cause (found by hand after the fuzzer's zero-size find; each is a byte or two away from a seed)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "bad.nii"))
    with pytest.raises(InvalidSeriesError, match=words) as caught:
        read_nifti(tmp_path / "bad.nii")
    assert caught.value.reason is reason and "bad.nii" in str(caught.value)


def test_read_nifti_keeps_real_float_and_wide_integer_volumes(tmp_path):
    nib.save(nib.Nifti1Image(np.full((4, 5, 6), -1000.5, np.float32), np.eye(4)), str(tmp_path / "f.nii"))
    nib.save(nib.Nifti1Image(np.full((4, 5, 6), -1000, np.int32), np.eye(4)), str(tmp_path / "i.nii"))
    assert read_nifti(tmp_path / "f.nii").hu.dtype == np.float32
    assert read_nifti(tmp_path / "i.nii").hu.dtype == np.int16


def test_read_nifti_refuses_a_declared_giant_before_reading_it(tmp_path):
    # a small .nii.gz can declare, and inflate to, gigabytes: the shape is judged on the header first
    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)).header.copy()
    header.set_data_shape((5000, 5000, 400))
    with open(tmp_path / "giant.nii", "wb") as handle:
        header.write_to(handle)
        handle.write(bytes(1024))
    with pytest.raises(InvalidSeriesError, match=r"at most 4096 .* not shape \(5000, 5000, 400\)") as caught:
        read_nifti(tmp_path / "giant.nii")
    assert caught.value.reason is QCReason.IMPLAUSIBLE_DIMENSIONS
