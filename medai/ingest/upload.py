"""Uploaded files and zip archives onto disk, safely: no path traversal, no links, no zip bombs.

The viewer takes studies as uploads (one zip archive, or several DICOM/NIfTI files). :func:`save_upload`
writes one upload into a folder of the caller's (a fresh temporary folder per upload), and refuses with
:class:`~medai.errors.UnsafeUploadError`, before anything is written, an archive with:

* a member path that leaves the folder (``../x``, ``/etc/x``, ``C:\\x``, a NUL byte) or repeats another one;
* a symbolic link or an encrypted member;
* more members, bytes per member or bytes in all than :class:`UploadLimits` allows, counted from the
  archive's directory;
* a member whose size over its compressed size exceeds ``max_ratio`` (a zip bomb: 1 KB that inflates to 1 GB).

The sizes an archive declares can lie, so extraction counts the bytes it actually writes and stops (removing
what it wrote) as soon as a member outgrows its declared size. Plain uploads keep only a safe base name.
Imports only the vocabulary (errors).
"""

from __future__ import annotations

import io
import logging
import re
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from medai.errors import UnsafeUploadError

__all__ = ["DEFAULT_LIMITS", "UploadLimits", "extract_zip", "member_path", "safe_name", "save_upload"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold.

    Attributes:
        max_files: members of an archive (a 1 mm chest CT has 300-600 files).
        max_file_bytes: bytes of one file, uncompressed.
        max_total_bytes: bytes of all files together, uncompressed.
        max_ratio: uncompressed over compressed size of one member (CT compresses 2-10x; zip bombs 1000x).
    """

    max_files: int = 20_000
    max_file_bytes: int = 1 << 30
    max_total_bytes: int = 4 << 30
    max_ratio: float = 200.0

    def __post_init__(self) -> None:
        if min(self.max_files, self.max_file_bytes, self.max_total_bytes) < 1 or self.max_ratio < 1.0:
            raise ValueError(f"upload limits must be positive (and max_ratio >= 1), not {self}")


DEFAULT_LIMITS = UploadLimits()
_DRIVE = re.compile(r"^[A-Za-z]:")


def member_path(name: str) -> PurePosixPath:
    """The relative path an archive member may be written to, or :class:`UnsafeUploadError`.

    Example:
        >>> member_path("study/CT/IM0001.dcm")
        PurePosixPath('study/CT/IM0001.dcm')
        >>> member_path("../etc/passwd")
        Traceback (most recent call last):
        ...
        medai.errors.UnsafeUploadError: archive member '../etc/passwd' must stay inside the upload folder, ...
    """
    normal = name.replace("\\", "/")
    parts = [p for p in normal.split("/") if p not in ("", ".")]
    if "\x00" in name or normal.startswith("/") or _DRIVE.match(normal) or any(p == ".." for p in parts) or not parts:
        raise UnsafeUploadError(
            f"archive member {name!r} must stay inside the upload folder, not point outside it "
            "(absolute path, drive letter or '..'); nothing was extracted"
        )
    return PurePosixPath(*parts)


def safe_name(name: str) -> str:
    """A plain file name from an uploaded file's name: its base name, other characters replaced by ``_``.

    Example:
        >>> safe_name("../../scan 1.nii.gz"), safe_name("C:\\\\x\\\\IM1.dcm")
        ('scan_1.nii.gz', 'IM1.dcm')
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return base or "upload"


def _check_members(infos: Sequence[zipfile.ZipInfo], limits: UploadLimits) -> list[tuple[zipfile.ZipInfo, Path]]:
    files = [i for i in infos if not i.is_dir()]
    if len(files) > limits.max_files:
        raise UnsafeUploadError(f"an archive must hold at most {limits.max_files} files, not {len(files)}")
    total = 0
    seen: set[PurePosixPath] = set()
    plan = []
    for info in files:
        target = member_path(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeUploadError(f"archive member {info.filename!r} must be a file, not a symbolic link")
        if info.flag_bits & 0x1:
            raise UnsafeUploadError(f"archive member {info.filename!r} must not be encrypted")
        if target in seen:
            raise UnsafeUploadError(f"archive member {info.filename!r} must appear once, not twice")
        seen.add(target)
        if info.file_size > limits.max_file_bytes:
            raise UnsafeUploadError(
                f"archive member {info.filename!r} must be at most {limits.max_file_bytes} bytes, not {info.file_size}"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _CHUNK and ratio > limits.max_ratio:
            raise UnsafeUploadError(
                f"archive member {info.filename!r} must compress at most {limits.max_ratio:g}:1, not {ratio:.0f}:1 "
                "(a zip bomb?)"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeUploadError(f"an archive must unpack to at most {limits.max_total_bytes} bytes, not more")
        plan.append((info, Path(*target.parts)))
    return plan


def extract_zip(
    archive: str | Path | BinaryIO, folder: str | Path, *, limits: UploadLimits = DEFAULT_LIMITS
) -> list[Path]:
    """Extract a zip archive into ``folder`` after checking every member (see the module docstring).

    Args:
        archive: the zip file, or a binary file object holding it.
        folder: where to write; created if needed. Files already there are kept.
        limits: what the archive may hold.

    Returns:
        The files written, in archive order.

    Raises:
        UnsafeUploadError: an unsafe or oversized archive, or not a zip archive; nothing is left behind.

    Example:
        >>> extract_zip("study.zip", "/tmp/upload-1")  # doctest: +SKIP
        [PosixPath('/tmp/upload-1/CT/IM0001.dcm'), ...]
    """
    folder = Path(folder)
    try:
        with zipfile.ZipFile(archive) as zf:
            plan = _check_members(zf.infolist(), limits)
            written: list[Path] = []
            try:
                for info, relative in plan:
                    target = folder / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _copy_bounded(zf, info, target)
                    written.append(target)
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile as exc:
        raise UnsafeUploadError(
            f"an upload ending in .zip must be a readable zip archive, not one that fails: {exc}"
        ) from exc
    log.info("extracted %d files from an uploaded archive", len(written))
    return written


def _copy_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Copy one member, stopping as soon as it outgrows the size its directory entry declared."""
    size = 0
    try:
        with zf.open(info) as source, open(target, "xb") as sink:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                if size > info.file_size:
                    raise UnsafeUploadError(
                        f"archive member {info.filename!r} must hold the {info.file_size} bytes it declares, not more"
                    )
                sink.write(chunk)
    except UnsafeUploadError:
        target.unlink(missing_ok=True)
        raise
    except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        target.unlink(missing_ok=True)
        raise UnsafeUploadError(f"archive member {info.filename!r} cannot be extracted: {exc}") from exc


def save_upload(
    name: str, data: bytes | BinaryIO, folder: str | Path, *, limits: UploadLimits = DEFAULT_LIMITS
) -> list[Path]:
    """Write one uploaded file into ``folder``: a zip archive is extracted (checked), anything else saved as is.

    Args:
        name: the file name the user's browser sent (only a safe base name of it is used).
        data: its content.
        folder: where to write (created if needed).
        limits: what the upload may hold.

    Returns:
        The files written.

    Raises:
        UnsafeUploadError: an unsafe archive, or a file over ``limits.max_file_bytes``.

    Example:
        >>> import tempfile
        >>> save_upload("../ct.nii.gz", b"not really NIfTI", tempfile.mkdtemp())[0].name
        'ct.nii.gz'
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    if _peek(stream, 4) == b"PK\x03\x04" or name.lower().endswith(".zip"):
        return extract_zip(stream, folder, limits=limits)
    target = folder / safe_name(name)
    stem, n = target.name, 1
    while target.exists():
        target = folder / f"{n}_{stem}"
        n += 1
    copied = 0
    with open(target, "xb") as sink:
        while chunk := stream.read(_CHUNK):
            copied += len(chunk)
            if copied > limits.max_file_bytes:
                break
            sink.write(chunk)
    if copied > limits.max_file_bytes:
        target.unlink()
        raise UnsafeUploadError(f"an upload must be at most {limits.max_file_bytes} bytes, not more")
    return [target]


def _peek(stream: BinaryIO, n: int) -> bytes:
    position = stream.tell()
    head = stream.read(n)
    stream.seek(position)
    return head
