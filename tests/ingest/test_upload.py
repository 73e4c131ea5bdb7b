"""Uploads onto disk: zip archives are checked member by member before anything is written."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from medai.errors import UnsafeUploadError
from medai.ingest.upload import UploadLimits, extract_zip, member_path, safe_name, save_upload


def make_zip(members: dict[str, bytes], *, link: str | None = None, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def test_a_zip_is_extracted_under_the_folder(tmp_path: Path) -> None:
    data = make_zip({"study/CT/IM1.dcm": b"a" * 100, "study/CT/IM2.dcm": b"b" * 100, "./notes.txt": b"c"})
    files = save_upload("study.zip", data, tmp_path / "up")
    assert sorted(p.relative_to(tmp_path / "up").as_posix() for p in files) == [
        "notes.txt",
        "study/CT/IM1.dcm",
        "study/CT/IM2.dcm",
    ]
    assert (tmp_path / "up/study/CT/IM2.dcm").read_bytes() == b"b" * 100


@pytest.mark.parametrize("name", ["../evil.dcm", "study/../../evil.dcm", "/etc/evil.dcm", "C:\\evil.dcm", "..\\evil"])
def test_a_member_leaving_the_folder_refuses_the_whole_archive(tmp_path: Path, name: str) -> None:
    data = make_zip({"IM1.dcm": b"x" * 10, name: b"evil"})
    with pytest.raises(UnsafeUploadError, match="must stay inside the upload folder"):
        save_upload("study.zip", data, tmp_path / "up")
    assert not any((tmp_path / "up").rglob("*.dcm"))  # nothing written, not even the good member
    assert not (tmp_path / "evil.dcm").exists()


def test_links_duplicates_and_non_zips_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeUploadError, match="not a symbolic link"):
        save_upload("a.zip", make_zip({"IM1.dcm": b"x"}, link="IM2.dcm"), tmp_path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("IM1.dcm", b"x")
        zf.writestr("IM1.dcm", b"y")
    with pytest.raises(UnsafeUploadError, match="must appear once"):
        save_upload("a.zip", buffer.getvalue(), tmp_path)
    with pytest.raises(UnsafeUploadError, match="readable zip archive"):
        save_upload("a.zip", b"PK\x03\x04 broken", tmp_path)


def test_zip_bombs_and_oversized_archives_are_refused(tmp_path: Path) -> None:
    bomb = make_zip({"IM1.dcm": bytes(50 << 20)})  # 50 MB of zeros in ~50 KB
    assert len(bomb) < 100_000
    with pytest.raises(UnsafeUploadError, match=r"must compress at most 200:1, not \d+:1"):
        save_upload("bomb.zip", bomb, tmp_path)
    limits = UploadLimits(max_files=2, max_total_bytes=150)
    with pytest.raises(UnsafeUploadError, match="at most 2 files, not 3"):
        extract_zip(io.BytesIO(make_zip({"a": b"1", "b": b"2", "c": b"3"})), tmp_path, limits=limits)
    with pytest.raises(UnsafeUploadError, match="at most 150 bytes"):
        extract_zip(io.BytesIO(make_zip({"a": b"1" * 100, "b": b"2" * 100})), tmp_path, limits=limits)
    assert not any(tmp_path.iterdir())


def test_a_member_larger_than_it_declares_is_cut_off(tmp_path: Path) -> None:
    data = bytearray(make_zip({"IM1.dcm": b"z" * 5000}, compression=zipfile.ZIP_STORED))
    # lie in both size fields (local header at 22, central directory entry at its own offset + 24)
    central = data.rfind(b"PK\x01\x02")
    for offset in (22, central + 24):
        data[offset : offset + 4] = (100).to_bytes(4, "little")
    with pytest.raises(UnsafeUploadError, match=r"IM1.dcm' must hold the 100 bytes it declares|cannot be extracted"):
        save_upload("a.zip", bytes(data), tmp_path)
    assert not (tmp_path / "IM1.dcm").exists()


def test_plain_files_keep_a_safe_base_name_and_never_overwrite(tmp_path: Path) -> None:
    first = save_upload("../../ct scan.nii.gz", b"1", tmp_path)[0]
    second = save_upload("ct scan.nii.gz", b"2", tmp_path)[0]
    assert (first.name, second.name) == ("ct_scan.nii.gz", "1_ct_scan.nii.gz")
    assert first.parent == second.parent == tmp_path
    with pytest.raises(UnsafeUploadError, match="at most 4 bytes"):
        save_upload("big.dcm", b"12345", tmp_path, limits=UploadLimits(max_file_bytes=4))
    assert not (tmp_path / "big.dcm").exists()
    assert safe_name("..") == "upload" and member_path("a//b/./c").as_posix() == "a/b/c"
