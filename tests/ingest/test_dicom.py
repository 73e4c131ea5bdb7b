"""DICOM ingestion: discovery, selection, loading and every QC gate reason."""

from __future__ import annotations

import json
import math
import shutil
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import medai
from medai.cli import main as cli_main
from medai.errors import InvalidSeriesError, MedaiError, NoSeriesError, QCReason
from medai.ingest import pixels
from medai.ingest.discovery import find_series, read_header
from medai.ingest.load import check_series, load_series
from medai.ingest.qc import SelectionRules, select_per_study, select_series
from medai.ingest.sources import DicomSource
from medai.phantoms.ctwriter import TransferSyntax, write_ct_series, write_enhanced_ct
from medai.volume import Volume

N_SLICES, MATRIX = 24, 64
SPACING = (5.0, 0.7, 0.7)
ORIGIN = (-22.4, -22.4, -100.0)


def make_volume(
    *,
    n: int = N_SLICES,
    matrix: int = MATRIX,
    spacing: tuple[float, float, float] = SPACING,
    direction: np.ndarray | None = None,
    seed: int = 0,
    low: int = -1024,
) -> Volume:
    rng = np.random.default_rng(seed)
    hu = rng.integers(low, 2000, size=(n, matrix, matrix)).astype(np.int16)
    return Volume(hu, spacing_mm=spacing, origin_mm=ORIGIN, direction=np.eye(3) if direction is None else direction)


@pytest.fixture
def write_series(tmp_path: Path) -> Callable[..., tuple[Volume, list[Path]]]:
    """Factory: write a small CT series into tmp_path/NAME; returns (volume, paths in z order)."""

    def write(name: str = "ct", *, volume: Volume | None = None, **kwargs: Any) -> tuple[Volume, list[Path]]:
        volume = volume if volume is not None else make_volume()
        return volume, write_ct_series(volume, tmp_path / name, **kwargs)

    return write


def mutate(path: Path, change: Callable[[Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def assert_same(volume: Volume, expected: Volume) -> None:
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.hu, expected.hu)
    assert volume.spacing_mm == pytest.approx(expected.spacing_mm)
    assert volume.origin_mm == pytest.approx(expected.origin_mm, abs=1e-3)
    assert np.allclose(volume.direction, expected.direction, atol=1e-6)


# ---------------------------------------------------------------- round trips


ROUND_TRIP_SYNTAXES = list(TransferSyntax)


@pytest.mark.parametrize("syntax", ROUND_TRIP_SYNTAXES, ids=lambda s: s.value)
def test_round_trip_every_transfer_syntax(write_series, syntax: TransferSyntax) -> None:
    expected, paths = write_series(transfer_syntax=syntax)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax.uid
    volume = load_series(paths[0].parent)
    assert_same(volume, expected)
    assert volume.sop_instance_uids == tuple(pydicom.dcmread(p).SOPInstanceUID for p in paths)


def test_round_trip_jpeg_lossless_via_gdcm(write_series) -> None:
    expected, paths = write_series(transfer_syntax=TransferSyntax.JPEG_LOSSLESS)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == TransferSyntax.JPEG_LOSSLESS.uid
    assert_same(load_series(paths[0].parent), expected)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_signed_and_unsigned_storage(write_series, signed: bool) -> None:
    expected, paths = write_series(signed=signed, volume=make_volume(low=-2048 if signed else -1024))
    assert pydicom.dcmread(paths[0]).PixelRepresentation == int(signed)
    assert_same(load_series(paths[0].parent), expected)


def test_order_comes_from_positions_not_file_names(write_series) -> None:
    names = [f"IMG{k:03d}.dcm" for k in np.random.default_rng(3).permutation(N_SLICES)]
    expected, paths = write_series(file_names=names)
    for path in paths:  # InstanceNumber must not be used either
        mutate(path, lambda ds: setattr(ds, "InstanceNumber", 1))
    assert_same(load_series(paths[0].parent), expected)


def test_reversed_positions_feet_first(write_series) -> None:
    direction = np.diag([1.0, 1.0, -1.0])  # positions decrease along the slice normal (0, 0, 1)
    written, paths = write_series(volume=make_volume(direction=direction))
    volume = load_series(paths[0].parent)
    assert np.array_equal(volume.hu, written.hu[::-1])
    assert np.allclose(volume.direction, np.eye(3))
    last = written.index_to_patient(np.array([N_SLICES - 1, 0, 0]))
    assert volume.origin_mm == pytest.approx(tuple(last), abs=1e-3)
    assert volume.spacing_mm == pytest.approx(SPACING)


def test_monochrome1_keeps_hu_from_the_modality_lut(write_series) -> None:
    expected, paths = write_series()
    for path in paths:
        mutate(path, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    # PS3.3 C.7.6.3.1.2: MONOCHROME1 inverts the display only; HU = slope x stored + intercept
    assert_same(load_series(paths[0].parent), expected)


def test_padding_value_and_range_become_air(write_series) -> None:
    volume = make_volume()
    hu = volume.hu.copy()
    hu[:, :6, :] = -3000  # outside the field of view
    hu[:, -6:, :] = -2990
    expected, paths = write_series(volume=volume.with_array(hu), signed=True)
    for path in paths:
        mutate(
            path,
            lambda ds: (
                ds.add_new("PixelPaddingValue", "SS", -3000),
                ds.add_new("PixelPaddingRangeLimit", "SS", -2990),
            ),
        )
    loaded = load_series(paths[0].parent)
    assert (loaded.hu[:, :6, :] == -1024).all() and (loaded.hu[:, -6:, :] == -1024).all()
    assert np.array_equal(loaded.hu[:, 6:-6, :], expected.hu[:, 6:-6, :])


def test_per_slice_rescale_intercept(write_series) -> None:
    expected, paths = write_series()
    for k, path in enumerate(paths):

        def shift(ds: Dataset, k: int = k) -> None:
            stored = np.frombuffer(ds.PixelData, "<u2").astype(np.int64) + 10 * k
            ds.PixelData = stored.astype("<u2").tobytes()
            ds.RescaleIntercept = -1024 - 10 * k

        mutate(path, shift)
    assert_same(load_series(paths[0].parent), expected)


def test_non_integer_slope_gives_float32(write_series) -> None:
    expected, paths = write_series()
    for path in paths:
        mutate(path, lambda ds: (setattr(ds, "RescaleSlope", 0.5), setattr(ds, "RescaleIntercept", -512.25)))
    loaded = load_series(paths[0].parent)
    assert loaded.hu.dtype == np.float32
    assert np.allclose(loaded.hu, (expected.hu.astype(np.float64) + 1024) * 0.5 - 512.25)


@pytest.mark.parametrize("syntax", [TransferSyntax.EXPLICIT, TransferSyntax.JPEG2000], ids=lambda s: s.value)
def test_enhanced_ct_multiframe(tmp_path: Path, syntax: TransferSyntax) -> None:
    expected = make_volume()
    order = np.random.default_rng(1).permutation(N_SLICES)
    attributes = {"SeriesDescription": "enhanced", "SeriesNumber": 7}
    write_enhanced_ct(
        expected, tmp_path / "enh" / "enhanced.dcm", order=order, transfer_syntax=syntax, attributes=attributes
    )
    (info,) = find_series(tmp_path / "enh")
    assert (info.n_instances, info.n_slices) == (1, N_SLICES)
    volume = load_series(info)
    assert_same(volume, expected)
    assert volume.header["SeriesDescription"] == "enhanced"
    assert volume.sop_instance_uids == ()


# ---------------------------------------------------------------- discovery


def test_zip_archive_input(write_series, tmp_path: Path) -> None:
    expected, paths = write_series()
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in paths:
            zf.write(path, f"DICOM/{path.name}")
        zf.writestr("DICOMDIR", b"not really")
        zf.writestr("README.txt", b"hello")
    (info,) = find_series(archive)
    assert all(s.member is not None and s.path == archive for s in info.sources)
    assert_same(load_series(info), expected)
    assert_same(load_series(archive), expected)
    # zips found while walking a folder are opened too
    nested = tmp_path / "inbox"
    nested.mkdir()
    shutil.copy(archive, nested / "upload.zip")
    (info,) = find_series(nested)
    assert info.n_instances == N_SLICES
    assert str(DicomSource(archive, "a/b.dcm")) == f"{archive}!a/b.dcm"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken file
def test_nested_folders_with_junk_dicomdir_and_empty_files(write_series, tmp_path: Path) -> None:
    _, paths = write_series("study/a/b/ct")
    root = tmp_path / "study"
    (root / "DICOMDIR").write_bytes(paths[0].read_bytes())
    (root / "a" / "notes.txt").write_text("not dicom")
    (root / "a" / "empty.dcm").write_bytes(b"")
    (root / "a" / "b" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    found = find_series(root)
    assert len(found) == 1 and found[0].n_instances == N_SLICES
    reasons = {Path(str(s.source)).name: s.reason for s in found.skipped}
    assert set(reasons) == {"DICOMDIR", "notes.txt", "empty.dcm", "broken.dcm"}
    assert "DICOMDIR" in reasons["DICOMDIR"] and reasons["empty.dcm"] == "empty file"
    assert "not a DICOM file" in reasons["notes.txt"]


def test_series_info_fields(write_series) -> None:
    _, paths = write_series(
        attributes={"ConvolutionKernel": "B70f", "SeriesDescription": "Thorax 5mm", "SeriesNumber": 3}
    )
    (info,) = find_series(paths[0].parent)
    assert info.modality == "CT" and info.image_type[:2] == ("ORIGINAL", "PRIMARY")
    assert (info.series_description, info.series_number, info.convolution_kernel) == ("Thorax 5mm", 3, "B70f")
    assert info.slice_thickness_mm == 5.0 and info.pixel_spacing_mm == (0.7, 0.7)
    assert info.coverage_mm == pytest.approx(5.0 * (N_SLICES - 1))
    assert sorted(info.paths) == sorted(paths)
    volume = load_series(info)
    assert volume.header["ConvolutionKernel"] == "B70f" and volume.header["SeriesNumber"] == 3
    assert volume.header["Modality"] == "CT" and "InstitutionName" not in volume.header


def test_load_series_accepts_a_list_of_files(write_series) -> None:
    expected, paths = write_series()
    assert_same(load_series([str(p) for p in reversed(paths)]), expected)
    with pytest.raises(NoSeriesError):
        load_series([])


def test_a_header_is_read_into_frames_once(write_series, monkeypatch: pytest.MonkeyPatch) -> None:
    from medai.ingest import discovery

    expected, paths = write_series()
    calls: list[Path] = []
    real = discovery._frames_of

    def counting(ds: Dataset, source: DicomSource) -> list:
        calls.append(source.path)
        return real(ds, source)

    monkeypatch.setattr(discovery, "_frames_of", counting)
    assert_same(load_series(paths[0].parent), expected)  # parse, QC gate, group and load: one pass per file
    assert sorted(calls) == sorted(paths)
    source = DicomSource(paths[0])
    ds = read_header(source)
    first = discovery.frames_from_dataset(ds, source)
    assert discovery.frames_from_dataset(ds, source) == first and len(calls) == len(paths) + 1
    other = DicomSource(paths[0])  # another source of the same file: its frames name that source
    assert discovery.frames_from_dataset(ds, other)[0].source is other and len(calls) == len(paths) + 2


# ---------------------------------------------------------------- QC gate: one test per reason


def _reason(source: Any, **kwargs: Any) -> InvalidSeriesError:
    with pytest.raises(InvalidSeriesError) as info:
        load_series(source, **kwargs)
    return info.value


def test_not_ct(write_series) -> None:
    _, paths = write_series(attributes={"Modality": "MR"})
    exc = _reason(paths[0].parent)
    assert exc.reason is QCReason.NOT_CT and "Modality must be CT, not MR" in str(exc)


def test_mixed_series_in_a_folder(write_series, tmp_path: Path) -> None:
    write_series("mixed/a")
    write_series("mixed/b")
    exc = _reason(tmp_path / "mixed")
    assert exc.reason is QCReason.MIXED_SERIES
    uids = {pydicom.dcmread(next((tmp_path / "mixed" / n).iterdir())).SeriesInstanceUID for n in "ab"}
    assert all(uid in str(exc) for uid in uids)


def test_mixed_frame_of_reference(write_series) -> None:
    _, paths = write_series()
    mutate(paths[5], lambda ds: setattr(ds, "FrameOfReferenceUID", generate_uid()))
    assert _reason(paths[0].parent).reason is QCReason.MIXED_SERIES


def test_inconsistent_orientation(write_series) -> None:
    _, paths = write_series()
    c, s = math.cos(0.2), math.sin(0.2)
    mutate(paths[7], lambda ds: setattr(ds, "ImageOrientationPatient", [c, s, 0, -s, c, 0]))
    assert _reason(paths[0].parent).reason is QCReason.INCONSISTENT_ORIENTATION


def test_gantry_tilt(write_series) -> None:
    _, paths = write_series()
    shift = math.tan(math.radians(15)) * SPACING[0]
    for k, path in enumerate(paths):

        def tilt(ds: Dataset, k: int = k) -> None:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + k * shift, z]
            ds.GantryDetectorTilt = 15

        mutate(path, tilt)
    exc = _reason(paths[0].parent)
    assert exc.reason is QCReason.GANTRY_TILT and "15.00 deg" in str(exc)


def test_slice_gap(write_series) -> None:
    _, paths = write_series()
    paths[10].unlink()
    exc = _reason(paths[0].parent)
    assert exc.reason is QCReason.SLICE_GAP and "10.000 mm gap" in str(exc)


def test_duplicate_position(write_series) -> None:
    _, paths = write_series()
    copy = paths[3].with_name("copy.dcm")
    shutil.copy(paths[3], copy)
    mutate(copy, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    assert _reason(paths[0].parent).reason is QCReason.DUPLICATE_POSITION


def test_nonuniform_spacing(write_series) -> None:
    _, paths = write_series()
    jitter = np.random.default_rng(5).uniform(-1.0, 1.0, N_SLICES)
    for k, path in enumerate(paths):

        def move(ds: Dataset, k: int = k) -> None:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + jitter[k]]

        mutate(path, move)
    assert _reason(paths[0].parent).reason is QCReason.NONUNIFORM_SPACING


def test_too_few_slices(write_series) -> None:
    _, paths = write_series(volume=make_volume(n=5, spacing=(30.0, 0.7, 0.7)))
    exc = _reason(paths[0].parent)
    assert exc.reason is QCReason.TOO_FEW_SLICES and "at least 20 slices, not 5" in str(exc)


def test_insufficient_coverage(write_series) -> None:
    _, paths = write_series(volume=make_volume(spacing=(1.0, 0.7, 0.7)))
    assert _reason(paths[0].parent).reason is QCReason.INSUFFICIENT_COVERAGE


def test_truncated_pixel_data(write_series) -> None:
    _, paths = write_series()
    mutate(paths[4], lambda ds: setattr(ds, "PixelData", ds.PixelData[:-1000]))
    exc = _reason(paths[0].parent)
    assert exc.reason is QCReason.TRUNCATED_PIXEL_DATA and f"must hold {MATRIX * MATRIX * 2} bytes" in str(exc)


@pytest.mark.parametrize(
    ("volume", "attributes", "words"),
    [
        (None, {"PixelSpacing": ["1e39", "1e39"]}, "PixelSpacing must lie within 0.05..25 mm"),
        (None, {"PixelSpacing": ["7e-4", "7e-4"]}, "PixelSpacing must lie within 0.05..25 mm"),  # metres
        (make_volume(spacing=(40.0, 0.7, 0.7)), {}, "slice step must lie within 0.05..25 mm, not 40.000"),
    ],
    ids=["huge-pixels", "pixels-in-metres", "slices-40mm-apart"],
)
def test_voxels_no_ct_has_are_refused(write_series, volume, attributes, words) -> None:
    _, paths = write_series(volume=volume)
    for path in paths:
        mutate(path, lambda ds: [setattr(ds, k, v) for k, v in attributes.items()])
    exc = _reason(paths[0].parent, rules=SelectionRules(min_coverage_mm=0.0))
    assert exc.reason is QCReason.IMPLAUSIBLE_DIMENSIONS and words in str(exc)


def test_truncated_file_on_disk(write_series) -> None:
    _, paths = write_series()
    data = paths[4].read_bytes()
    paths[4].write_bytes(data[:-3000])
    with pytest.raises(MedaiError):
        load_series(paths[0].parent)


def test_implausible_dimensions_refused_before_allocating(write_series) -> None:
    _, paths = write_series()
    for path in paths:
        mutate(path, lambda ds: (setattr(ds, "Rows", 65000), setattr(ds, "Columns", 65000)))
    tracemalloc.start()
    try:
        exc = _reason(paths[0].parent)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.reason is QCReason.IMPLAUSIBLE_DIMENSIONS and "65000x65000" in str(exc)
    assert peak < 20 * 2**20  # 24 x 65000 x 65000 int16 would be 200 GB


def test_implausible_voxel_count(write_series) -> None:
    _, paths = write_series()
    exc = _reason(paths[0].parent, rules=SelectionRules(max_voxels=10_000))
    assert exc.reason is QCReason.IMPLAUSIBLE_DIMENSIONS


def test_undecodable_transfer_syntax(write_series) -> None:
    _, paths = write_series(transfer_syntax="jpeg2000")

    def corrupt(ds: Dataset) -> None:
        frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__())
        frame[len(frame) // 2 :] = b"\x00" * (len(frame) - len(frame) // 2)
        ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])

    mutate(paths[2], corrupt)
    assert _reason(paths[0].parent).reason is QCReason.UNDECODABLE_TRANSFER_SYNTAX


def test_unsupported_transfer_syntax_uid(write_series) -> None:
    _, paths = write_series()

    def to_mpeg2(ds: Dataset) -> None:
        ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no image decoder

    for path in paths:
        mutate(path, to_mpeg2)
    assert _reason(paths[0].parent).reason is QCReason.UNDECODABLE_TRANSFER_SYNTAX


@pytest.mark.parametrize(
    "change",
    [
        lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.8]),
        lambda ds: (setattr(ds, "Rows", 32), setattr(ds, "PixelData", ds.PixelData[: 32 * MATRIX * 2])),
    ],
    ids=["pixel_spacing", "rows"],
)
def test_inconsistent_geometry(write_series, change: Callable[[Dataset], None]) -> None:
    _, paths = write_series()
    mutate(paths[9], change)
    assert _reason(paths[0].parent).reason is QCReason.INCONSISTENT_GEOMETRY


def test_missing_attribute(write_series) -> None:
    _, paths = write_series()
    mutate(paths[6], lambda ds: delattr(ds, "ImagePositionPatient"))
    exc = _reason(paths[0].parent)
    assert exc.reason is QCReason.MISSING_ATTRIBUTE and "ImagePositionPatient" in str(exc)


def test_error_message_names_the_series(write_series) -> None:
    _, paths = write_series(attributes={"SeriesDescription": "Thorax 1mm"})
    paths[3].unlink()
    exc = _reason(paths[0].parent)
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    assert exc.series_uid == uid and uid in str(exc) and "Thorax 1mm" in str(exc)


def test_check_series_reports_measurements(write_series) -> None:
    _, paths = write_series()
    report = check_series(paths[0].parent)
    assert (report.n_slices, report.rows, report.columns) == (N_SLICES, MATRIX, MATRIX)
    assert report.coverage_mm == pytest.approx(115.0) and report.tilt_deg == pytest.approx(0.0)
    assert "no_gap" in report.checks and "uniform_spacing" in report.checks
    assert json.dumps(report.as_dict())


# ---------------------------------------------------------------- selection


@pytest.fixture
def study(tmp_path: Path) -> dict[str, str]:
    """One study with a localizer, a derived reformat, thick and thin CT series and an MR series."""
    study_uid = generate_uid()
    uids = {}

    def add(name: str, volume: Volume, **attributes: Any) -> None:
        uid = generate_uid()
        uids[name] = uid
        attrs = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": uid, "SeriesDescription": name, **attributes}
        write_ct_series(volume, tmp_path / "study" / name, attributes=attrs)

    small = dict(matrix=16)
    add("localizer", make_volume(n=2, spacing=(1.0, 2.0, 2.0), **small), ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    add("derived", make_volume(n=120, spacing=(1.0, 0.7, 0.7), **small), ImageType=["DERIVED", "SECONDARY", "MPR"])
    add("thick", make_volume(n=30, spacing=(5.0, 0.7, 0.7), **small), ConvolutionKernel="B70f", SeriesNumber=2)
    add("thin", make_volume(n=120, spacing=(1.0, 0.7, 0.7), **small), ConvolutionKernel="B30f", SeriesNumber=3)
    add("mr", make_volume(n=30, **small), Modality="MR")
    uids["root"] = str(tmp_path / "study")
    uids["study"] = study_uid
    return uids


def test_select_series_prefers_thin_and_explains_rejections(study: dict[str, str]) -> None:
    found = find_series(study["root"])
    report = select_series(found)
    assert report.study_uid == study["study"]
    assert report.selected is not None and report.selected.series_uid == study["thin"]
    assert [s.series_uid for s in report.candidates] == [study["thin"], study["thick"]]
    reasons = {r.series.series_uid: r.reason for r in report.rejected}
    assert reasons == {
        study["localizer"]: QCReason.LOCALIZER,
        study["derived"]: QCReason.DERIVED,
        study["mr"]: QCReason.NOT_CT,
    }
    assert all(r.message for r in report.rejected)


def test_select_series_kernel_preference(tmp_path: Path) -> None:
    study_uid = generate_uid()
    for kernel in ("B30f", "B70f", "FC13"):
        write_ct_series(
            make_volume(n=24, matrix=16),
            tmp_path / kernel,
            attributes={"StudyInstanceUID": study_uid, "ConvolutionKernel": kernel},
        )
    found = find_series(tmp_path)
    report = select_series(found)
    assert [s.convolution_kernel for s in report.candidates] == ["B70f", "B30f", "FC13"]
    rules = SelectionRules(kernel_preference=(r"^fc",))
    assert select_series(found, rules=rules).selected.convolution_kernel == "FC13"  # type: ignore[union-attr]


def test_select_series_rejects_a_series_with_a_gap(write_series) -> None:
    _, paths = write_series()
    paths[10].unlink()
    report = select_series(find_series(paths[0].parent))
    assert report.selected is None and report.rejected[0].reason is QCReason.SLICE_GAP


def test_select_per_study(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_ct_series(make_volume(matrix=16), tmp_path / name)
    reports = select_per_study(find_series(tmp_path))
    assert len(reports) == 2 and all(r.selected is not None for r in reports.values())
    assert select_series([]).selected is None


# ---------------------------------------------------------------- inspect CLI


def test_inspect_good_folder(study: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inspect", study["root"]]) == 0
    out = capsys.readouterr().out
    assert f"selected for scoring: {study['thin']}" in out
    assert "[localizer]" in out and "[derived]" in out and "[not_ct]" in out and "QC passed" in out


def test_inspect_json(study: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inspect", study["root"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (entry,) = report["studies"]
    assert entry["selected"] == study["thin"] and entry["qc"]["shape"] == [120, 16, 16]
    assert len(report["series"]) == 5 and report["ok"] is True


def test_inspect_junk_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert cli_main(["inspect", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "no DICOM series found" in out and "notes.txt" in out and "empty file" in out
    assert "Traceback" not in out


def test_inspect_failing_qc(write_series, capsys: pytest.CaptureFixture[str]) -> None:
    _, paths = write_series()
    mutate(paths[4], lambda ds: setattr(ds, "PixelData", ds.PixelData[:-1000]))
    assert cli_main(["inspect", str(paths[0].parent)]) == 1
    assert "QC failed [truncated_pixel_data]" in capsys.readouterr().out


def test_public_api_exports() -> None:
    for name in ("find_series", "select_series", "load_series", "SeriesInfo", "SelectionRules", "SelectionReport"):
        assert name in medai.__all__ and hasattr(medai, name)


# ---------------------------------------------------------------- real-world corpus


def _corpus() -> list[Path]:
    from pydicom.data import get_testdata_files

    files = {Path(f) for f in get_testdata_files()}
    try:
        import data_store

        files |= {p for p in (Path(data_store.__file__).parent / "data").rglob("*") if p.is_file()}
    except ImportError:
        pass
    images = []
    for path in sorted(files):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        sop_class = getattr(ds.get("SOPClassUID"), "name", "")
        if ds.get("Modality") == "CT" or "Image Storage" in sop_class:
            images.append(path)
    return images


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_real_world_corpus_never_crashes() -> None:
    files = _corpus()
    assert len(files) > 50
    modalities = ("CT", "MR", "OT", "US", "CR", "NM", "DX", "MG", "PT", "XA", "RF", "SC", "SEG")
    permissive = SelectionRules(modalities=modalities, min_slices=1, min_coverage_mm=0)
    loaded = 0
    for path in files:
        start = time.perf_counter()
        try:
            volume = load_series([path], rules=permissive, workers=1)
            loaded += 1
            assert volume.hu.ndim == 3
        except MedaiError:
            pass
        assert time.perf_counter() - start < 20, f"{path} took too long"
    assert loaded >= 10


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_real_world_corpus_pixel_decoding_never_crashes() -> None:
    """Every frame of every image file, straight to the decoder: an array or a MedaiError."""
    decoded = 0
    for path in _corpus():
        start = time.perf_counter()
        try:
            ds = read_header(DicomSource(path), stop_before_pixels=False)
            frames = int(ds.get("NumberOfFrames") or 1)
            plan = [pixels.FrameTask(ds, DicomSource(path), i, 1.0, 0.0) for i in range(min(frames, 200))]
            array = pixels.decode_frames(plan, workers=1)
            decoded += 1
            assert array.shape[0] == len(plan)
        except MedaiError:
            pass
        assert time.perf_counter() - start < 20, f"{path} took too long"
    assert decoded >= 40
