"""The QC gate and series selection.

Two questions, answered from headers only (no pixel decoding):

* :func:`check_frames`: is this set of frames one regular volume? These are
  highdicom's series checks (same series and frame of reference, same
  orientation and matrix, slices perpendicular to the stacking direction,
  regular spacing, no duplicates or gaps) plus plausibility limits checked
  before anything is allocated. A failure raises
  :class:`~medai.errors.InvalidSeriesError` naming the :class:`QCReason`, what
  was expected and what was seen. Nothing is repaired.
* :func:`select_series`: which series of a study should be scored? CT,
  ORIGINAL/PRIMARY, axial, not a localizer, enough slices and coverage, a
  regular geometry; then the thinnest slices with a lung (then soft) kernel.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medai.errors import InvalidSeriesError, MedaiError, NoSeriesError, QCReason

if TYPE_CHECKING:
    from medai.ingest.sources import FrameHeader, SeriesInfo

__all__ = [
    "DEFAULT_RULES",
    "QCReport",
    "Rejection",
    "SelectionReport",
    "SelectionRules",
    "check_frames",
    "select_per_study",
    "select_series",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectionRules:
    """Thresholds of the QC gate and preferences of series selection.

    Defaults suit adult chest CT; every value is in the unit its name says.
    """

    # Modalities accepted (upper case). Anything else is rejected as not_ct.
    modalities: tuple[str, ...] = ("CT",)
    # A chest CT volume needs at least this many slices (10 mm slices over a 300 mm chest give 30).
    min_slices: int = 20
    # Cranio-caudal coverage; a chest is ~250-350 mm, under 100 mm is a partial or targeted scan.
    min_coverage_mm: float = 100.0
    # Refuse ImageType other than ORIGINAL\PRIMARY (reformats, MIPs, screenshots).
    require_original_primary: bool = True
    # Axial: the slice normal must be within this angle of the patient's head-feet axis.
    max_axial_angle_deg: float = 30.0
    # Largest matrix (Rows, Columns) and total voxels accepted, checked before allocating.
    max_matrix: int = 4096
    max_voxels: int = 1_500_000_000
    # Voxel edges (pixel spacing, slice step) outside this range are not a CT's (mm): a header's unit error or
    # corruption, which would otherwise make every volume and lesion size meaningless.
    voxel_size_range_mm: tuple[float, float] = (0.05, 25.0)
    # Gantry tilt: largest angle between the stacking direction and the slice normal.
    max_tilt_deg: float = 0.5
    # Two slices closer than this along the normal are duplicates.
    duplicate_tolerance_mm: float = 0.01
    # A step larger than gap_factor x the median step is a missing slice.
    gap_factor: float = 1.5
    # Steps may deviate from the median by max(spacing_tolerance_mm, spacing_tolerance_fraction x median).
    spacing_tolerance_mm: float = 0.1
    spacing_tolerance_fraction: float = 0.1
    # Orientation cosines of different slices may differ by this much.
    orientation_tolerance: float = 1e-3
    # Pixel spacing of different slices may differ by this much (mm).
    pixel_spacing_tolerance_mm: float = 1e-3
    # Ranking: series with slices at most this thick come first.
    thin_slice_mm: float = 1.5
    # Ranking: ConvolutionKernel patterns (case-insensitive regular expressions), most wanted first.
    # Lung (sharp) kernels, then soft/standard ones; vendor names vary, unmatched kernels rank last.
    kernel_preference: tuple[str, ...] = (
        r"lung",  # GE LUNG, named lung kernels
        r"^[bi]r?[5-9]\d",  # Siemens sharp kernels B60f, B70f, Br60, I70f
        r"^fc(5\d|8\d)",  # Canon/Toshiba lung kernels FC51-FC86
        r"^(l|yb|yc)$",  # Philips lung kernels
        r"soft|standard|std",  # GE SOFT, STANDARD
        r"^[bi]r?[1-4]\d",  # Siemens soft kernels B30f, Br40
        r"^fc(0\d|1\d)",  # Canon/Toshiba body kernels FC01-FC19
        r"^[abc]$",  # Philips soft kernels
    )

    def kernel_rank(self, kernel: str) -> int:
        """Position of ``kernel`` in :attr:`kernel_preference` (len(...) when unmatched)."""
        for rank, pattern in enumerate(self.kernel_preference):
            if re.search(pattern, kernel.strip(), flags=re.IGNORECASE):
                return rank
        return len(self.kernel_preference)


#: The rules used when none are given.
DEFAULT_RULES = SelectionRules()
#: How far a direction's axes may be from unit length and orthogonality (DICOM ImageOrientationPatient, a NIfTI
#: affine).
ORTHONORMAL_TOLERANCE = 1e-2


@dataclass(frozen=True)
class QCReport:
    """What the QC gate checked on one series, and the values it saw.

    Attributes:
        series_uid, series_description: the series concerned.
        n_slices, rows, columns: matrix of the volume.
        spacing_mm: ``(z, y, x)``; ``z`` is the median step between slice centres.
        coverage_mm: distance between the first and last slice centres.
        tilt_deg: angle between the stacking direction and the slice normal.
        median_step_mm, max_step_deviation_mm: regularity of the slice steps.
        slice_thickness_mm: SliceThickness of the first slice (None if absent).
        origin_mm: LPS position of the first slice in z order.
        direction: 3x3 nested tuple, columns = row, column and slice-normal directions.
        slice_order: index (in the input frames) of each slice in z order.
        checks: names of the checks passed.
    """

    series_uid: str
    series_description: str
    n_slices: int
    rows: int
    columns: int
    spacing_mm: tuple[float, float, float]
    coverage_mm: float
    tilt_deg: float
    median_step_mm: float
    max_step_deviation_mm: float
    slice_thickness_mm: float | None
    origin_mm: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]
    slice_order: tuple[int, ...]
    checks: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the slice order)."""
        data = asdict(self)
        data.pop("slice_order")
        return data


def _fail(reason: QCReason, uid: str, description: str, message: str) -> InvalidSeriesError:
    label = f"{description!r}: " if description else ""
    return InvalidSeriesError(reason, f"{label}{message}", series_uid=uid)


def _distinct(values: Sequence[Any]) -> list[Any]:
    return sorted({v for v in values}, key=str)


def check_frames(
    frames: Sequence[FrameHeader],
    *,
    rules: SelectionRules = SelectionRules(),
    description: str = "",
) -> QCReport:
    """Check that ``frames`` form one regular volume, and measure it.

    Args:
        frames: per-frame headers of one series (any order).
        rules: thresholds and tolerances.
        description: SeriesDescription, used in messages.

    Returns:
        The :class:`QCReport`, including the z order of the frames.

    Raises:
        InvalidSeriesError: the first failed check (see :class:`QCReason`).
        NoSeriesError: ``frames`` is empty.

    Example:
        >>> from medai.ingest.load import find_series  # doctest: +SKIP
        >>> check_frames(find_series("study")[0].frames).coverage_mm  # doctest: +SKIP
        300.0
    """
    if not frames:
        raise NoSeriesError("no DICOM frames to check")
    uids = _distinct([f.series_uid for f in frames])
    uid = uids[0] if len(uids) == 1 else ""
    checks: list[str] = []

    def fail(reason: QCReason, message: str) -> InvalidSeriesError:
        return _fail(reason, uid, description, message)

    if len(uids) > 1:
        raise fail(QCReason.MIXED_SERIES, f"files must belong to one series, not {len(uids)}: {', '.join(uids)}")
    for_uids = _distinct([f.frame_of_reference_uid for f in frames])
    if len(for_uids) > 1:
        raise fail(
            QCReason.MIXED_SERIES,
            f"slices must share one FrameOfReferenceUID, not {len(for_uids)}: {', '.join(for_uids)}",
        )
    checks.append("single_series")
    modalities = _distinct([f.modality for f in frames])
    if any(m not in rules.modalities for m in modalities):
        seen = "/".join(m or "(absent)" for m in modalities)
        raise fail(QCReason.NOT_CT, f"Modality must be {'/'.join(rules.modalities)}, not {seen}")
    checks.append("modality")
    for name, attr in (
        ("ImagePositionPatient", "position_mm"),
        ("ImageOrientationPatient", "orientation"),
        ("PixelSpacing", "pixel_spacing_mm"),
        ("Rows", "rows"),
        ("Columns", "columns"),
    ):
        missing = sum(getattr(f, attr) is None for f in frames)
        if missing:
            raise fail(
                QCReason.MISSING_ATTRIBUTE, f"{name} must be present and valid on every slice, missing on {missing}"
            )
    zero_slope = sum(f.rescale_slope == 0 for f in frames)
    if zero_slope:
        raise fail(QCReason.MISSING_ATTRIBUTE, f"RescaleSlope must be non-zero, not 0 on {zero_slope} slices")
    for name, attr, limit in (("RescaleSlope", "rescale_slope", 1e4), ("RescaleIntercept", "rescale_intercept", 1e6)):
        odd = _distinct([getattr(f, attr) for f in frames if not abs(getattr(f, attr)) <= limit])
        if odd:
            raise fail(QCReason.MISSING_ATTRIBUTE, f"{name} must be a finite number within +-{limit:g}, not {odd[:3]}")
    checks.append("attributes")
    rows, cols = frames[0].rows or 0, frames[0].columns or 0
    for f in frames:
        r, c = f.rows or 0, f.columns or 0
        if not (0 < r <= rules.max_matrix and 0 < c <= rules.max_matrix):
            raise fail(
                QCReason.IMPLAUSIBLE_DIMENSIONS, f"Rows and Columns must be in 1..{rules.max_matrix}, not {r}x{c}"
            )
    n_voxels = len(frames) * rows * cols
    if n_voxels > rules.max_voxels:
        raise fail(
            QCReason.IMPLAUSIBLE_DIMENSIONS,
            f"the volume must hold at most {rules.max_voxels} voxels, not {len(frames)}x{rows}x{cols} = {n_voxels}",
        )
    checks.append("dimensions")
    matrices = _distinct([(f.rows, f.columns) for f in frames])
    if len(matrices) > 1:
        raise fail(QCReason.INCONSISTENT_GEOMETRY, f"all slices must have one Rows x Columns, not {matrices}")
    spacings = np.asarray([f.pixel_spacing_mm for f in frames], dtype=np.float64)
    if np.ptp(spacings, axis=0).max() > rules.pixel_spacing_tolerance_mm or spacings.min() <= 0:
        raise fail(
            QCReason.INCONSISTENT_GEOMETRY,
            f"PixelSpacing must be positive and equal on all slices, not {_distinct([tuple(s) for s in spacings])}",
        )
    low, high = rules.voxel_size_range_mm
    if not (low <= spacings.min() and spacings.max() <= high):
        raise fail(
            QCReason.IMPLAUSIBLE_DIMENSIONS,
            f"PixelSpacing must lie within {low:g}..{high:g} mm, not {_distinct([tuple(s) for s in spacings])[:3]}",
        )
    checks.append("matrix_and_pixel_spacing")
    orientations = np.asarray([f.orientation for f in frames], dtype=np.float64)
    if np.ptp(orientations, axis=0).max() > rules.orientation_tolerance:
        raise fail(
            QCReason.INCONSISTENT_ORIENTATION,
            f"ImageOrientationPatient must be equal on all slices, not {len(np.unique(orientations.round(3), axis=0))}"
            " different orientations",
        )
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > ORTHONORMAL_TOLERANCE
        or abs(np.linalg.norm(col_dir) - 1) > ORTHONORMAL_TOLERANCE
        or abs(row_dir @ col_dir) > ORTHONORMAL_TOLERANCE
    ):
        raise fail(
            QCReason.INCONSISTENT_ORIENTATION,
            f"ImageOrientationPatient must hold two orthogonal unit vectors, not {orientations[0].tolist()}",
        )
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    checks.append("orientation")
    if len(frames) < rules.min_slices:
        raise fail(QCReason.TOO_FEW_SLICES, f"a volume must have at least {rules.min_slices} slices, not {len(frames)}")
    checks.append("min_slices")

    positions = np.asarray([f.position_mm for f in frames], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    steps = np.diff(along)
    tilt_deg = 0.0
    median = 0.0
    deviation = 0.0
    if len(frames) >= 2:
        dup = np.flatnonzero(steps < rules.duplicate_tolerance_mm)
        if dup.size:
            k = int(dup[0])
            raise fail(
                QCReason.DUPLICATE_POSITION,
                f"slice positions must be distinct, not {dup.size + 1}+ slices at {along[k]:.3f} mm along the normal "
                f"(e.g. {frames[order[k]].source} and {frames[order[k + 1]].source})",
            )
        checks.append("distinct_positions")
        stack = positions[-1] - positions[0]
        cos = float(np.clip(abs(stack @ normal) / np.linalg.norm(stack), -1.0, 1.0))
        tilt_deg = math.degrees(math.acos(cos))
        if tilt_deg > rules.max_tilt_deg:
            gantry = _distinct([f.gantry_tilt_deg for f in frames if f.gantry_tilt_deg is not None])
            raise fail(
                QCReason.GANTRY_TILT,
                f"slices must be stacked along their normal (tilt <= {rules.max_tilt_deg} deg), not tilted by "
                f"{tilt_deg:.2f} deg (GantryDetectorTilt {gantry or 'absent'}); resample to an untilted grid first",
            )
        checks.append("perpendicular_stack")
        median = float(np.median(steps))
        if steps.max() > rules.gap_factor * median:
            k = int(np.argmax(steps))
            raise fail(
                QCReason.SLICE_GAP,
                f"slice steps must be regular ({median:.3f} mm), not a {steps[k]:.3f} mm gap between "
                f"{along[k]:.2f} and {along[k + 1]:.2f} mm along the normal (a missing slice?)",
            )
        checks.append("no_gap")
        deviation = float(np.abs(steps - median).max())
        tolerance = max(rules.spacing_tolerance_mm, rules.spacing_tolerance_fraction * median)
        if deviation > tolerance:
            raise fail(
                QCReason.NONUNIFORM_SPACING,
                f"slice steps must be uniform within {tolerance:.3f} mm, not {steps.min():.3f} to {steps.max():.3f} mm",
            )
        checks.append("uniform_spacing")
        if not low <= median <= high:
            raise fail(
                QCReason.IMPLAUSIBLE_DIMENSIONS,
                f"the slice step must lie within {low:g}..{high:g} mm, not {median:.3f} mm",
            )
    coverage = float(along[-1] - along[0])
    if coverage < rules.min_coverage_mm and len(frames) >= 2:
        raise fail(
            QCReason.INSUFFICIENT_COVERAGE,
            f"coverage along the normal must be at least {rules.min_coverage_mm:.0f} mm, not {coverage:.1f} mm",
        )
    checks.append("coverage")
    thickness = frames[0].slice_thickness_mm
    z_spacing = median if median > 0 else (thickness if thickness and thickness > 0 else 1.0)
    ps = frames[0].pixel_spacing_mm or (1.0, 1.0)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    return QCReport(
        series_uid=uid,
        series_description=description,
        n_slices=len(frames),
        rows=rows,
        columns=cols,
        spacing_mm=(float(z_spacing), float(ps[0]), float(ps[1])),
        coverage_mm=coverage,
        tilt_deg=round(tilt_deg, 4),
        median_step_mm=median,
        max_step_deviation_mm=deviation,
        slice_thickness_mm=thickness,
        origin_mm=(float(positions[0][0]), float(positions[0][1]), float(positions[0][2])),
        direction=tuple(tuple(float(v) for v in row) for row in direction),  # type: ignore[misc]
        slice_order=tuple(int(i) for i in order),
        checks=tuple(checks),
    )


# ---------------------------------------------------------------- selection


@dataclass(frozen=True)
class Rejection:
    """A series that selection refused, with the reason and a one-line message."""

    series: SeriesInfo
    reason: QCReason
    message: str


@dataclass(frozen=True)
class SelectionReport:
    """Outcome of :func:`select_series` for one study.

    Attributes:
        study_uid: the study ("" when the input mixed several studies).
        selected: the series to score, or ``None``.
        candidates: every acceptable series, best first (``selected`` is the first).
        rejected: every refused series with its reason.
    """

    study_uid: str
    selected: SeriesInfo | None
    candidates: tuple[SeriesInfo, ...]
    rejected: tuple[Rejection, ...]


def _rejection(info: SeriesInfo, rules: SelectionRules) -> Rejection | None:
    def reject(reason: QCReason, message: str) -> Rejection:
        return Rejection(info, reason, message)

    if info.modality not in rules.modalities:
        return reject(QCReason.NOT_CT, f"Modality must be {'/'.join(rules.modalities)}, not {info.modality or '?'}")
    image_type = info.image_type
    shown = "\\".join(image_type) or "(absent)"
    if "LOCALIZER" in image_type or "SCOUT" in image_type or "LOCALIZER" in info.series_description.upper():
        return reject(QCReason.LOCALIZER, f"a localizer/scout cannot be scored (ImageType {shown})")
    if rules.require_original_primary and image_type[:2] != ("ORIGINAL", "PRIMARY"):
        return reject(
            QCReason.DERIVED,
            f"ImageType must start with ORIGINAL\\PRIMARY, not {shown}",
        )
    if info.orientation is not None:
        normal = np.cross(info.orientation[:3], info.orientation[3:])
        norm = float(np.linalg.norm(normal))
        angle = math.degrees(math.acos(min(1.0, abs(normal[2]) / norm))) if norm > 0 else 90.0
        if angle > rules.max_axial_angle_deg:
            return reject(
                QCReason.NOT_AXIAL,
                f"slices must be axial (normal within {rules.max_axial_angle_deg:.0f} deg of head-feet), "
                f"not {angle:.0f} deg off",
            )
    try:
        check_frames(info.frames, rules=rules, description=info.series_description)
    except InvalidSeriesError as exc:
        return reject(exc.reason, str(exc))
    except MedaiError as exc:
        return reject(QCReason.UNREADABLE, str(exc))
    return None


def _rank_key(info: SeriesInfo, rules: SelectionRules) -> tuple[Any, ...]:
    thickness = info.slice_thickness_mm if info.slice_thickness_mm else (info.coverage_mm / max(info.n_slices, 1))
    return (
        thickness > rules.thin_slice_mm,
        rules.kernel_rank(info.convolution_kernel),
        thickness,
        -info.coverage_mm,
        info.series_number if info.series_number is not None else 1 << 30,
        info.series_uid,
    )


def select_series(
    series: Sequence[SeriesInfo],
    *,
    rules: SelectionRules = SelectionRules(),
) -> SelectionReport:
    """Pick the series of a study to score.

    Rejects non-CT, localizers, derived (not ORIGINAL\\PRIMARY), non-axial
    series, and series failing the header QC gate (too few slices, too
    little coverage, gaps, tilt, ...). Ranks the rest: thin slices first
    (``<= rules.thin_slice_mm``), then the kernel preference, then thinner,
    longer coverage, lower series number. Pass one study's series; for
    many studies use :func:`select_per_study`.

    Args:
        series: from :func:`medai.find_series`.
        rules: thresholds and preferences.

    Returns:
        A :class:`SelectionReport`; ``selected`` is ``None`` when every series was rejected.

    Example:
        >>> report = select_series([])
        >>> report.selected is None
        True
    """
    candidates, rejected = [], []
    for info in series:
        rejection = _rejection(info, rules)
        if rejection is None:
            candidates.append(info)
        else:
            log.info("series %s (%s) rejected: %s", info.series_uid, info.label, rejection.message)
            rejected.append(rejection)
    candidates.sort(key=lambda s: _rank_key(s, rules))
    studies = {s.study_uid for s in series}
    if len(studies) > 1:
        log.warning("select_series got %d studies; ranking them together (use select_per_study)", len(studies))
    return SelectionReport(
        study_uid=studies.pop() if len(studies) == 1 else "",
        selected=candidates[0] if candidates else None,
        candidates=tuple(candidates),
        rejected=tuple(rejected),
    )


def select_per_study(
    series: Sequence[SeriesInfo],
    *,
    rules: SelectionRules = SelectionRules(),
) -> dict[str, SelectionReport]:
    """Run :func:`select_series` on each study (StudyInstanceUID), in order of first appearance.

    Example:
        >>> select_per_study([])
        {}
    """
    studies: dict[str, list[SeriesInfo]] = {}
    for info in series:
        studies.setdefault(info.study_uid, []).append(info)
    return {uid: select_series(items, rules=rules) for uid, items in studies.items()}
