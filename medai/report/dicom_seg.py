"""Lungs and opacities of a prediction as a DICOM Segmentation (binary), with highdicom.

Four segments on the source series' own grid (one frame per source slice that holds any of them):

1. right lung and 2. left lung (anatomical structures, SNOMED CT right/left lung);
3. ground-glass opacity and 4. consolidation (morphologically abnormal structures).

The masks are the quantification's (:attr:`~medai.inference.classifier.Prediction.lung_mask` and
:attr:`~medai.inference.classifier.Prediction.lesion_mask`), computed on a coarse grid and brought back to
the source slices by nearest neighbour, so their edges are blocky at the grid's block size. They are the
measurement behind the lesion percentage, not a contour for treatment planning. Research use only; not for
diagnosis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medai.report.dicom_sr import MANUFACTURER, MedaiCode
from medai.volume import Volume

if TYPE_CHECKING:
    from medai.inference.classifier import Prediction

__all__ = ["SEG_SERIES_DESCRIPTION", "build_seg"]

log = logging.getLogger(__name__)

SEG_SERIES_DESCRIPTION = "medai lungs and opacities - research use only"
_ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
_GROUND_GLASS = Code("50960005", "SCT", "Ground glass opacity")
_CONSOLIDATION = Code("95436008", "SCT", "Lung consolidation")

#: (label, category, type, lung-mask value or None, lesion-mask value or None), in segment-number order.
_SEGMENTS = (
    ("right lung", _ANATOMY, MedaiCode.RIGHT_LUNG, 1, None),
    ("left lung", _ANATOMY, MedaiCode.LEFT_LUNG, 2, None),
    ("ground-glass opacity", _ABNORMAL, _GROUND_GLASS, None, 1),
    ("consolidation", _ABNORMAL, _CONSOLIDATION, None, 2),
)


def _ordered_sources(volume: Volume, sources: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    if not volume.sop_instance_uids:
        raise ValueError("volume must come from a single-frame DICOM series (one SOP instance per slice)")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = [uid for uid in volume.sop_instance_uids if uid not in by_uid]
    if missing:
        raise ValueError(f"sources must hold every slice of the volume, not {len(missing)} fewer")
    return [by_uid[uid] for uid in volume.sop_instance_uids]


def build_seg(
    volume: Volume,
    prediction: Prediction,
    sources: Sequence[pydicom.Dataset],
    *,
    series_number: int = 9903,
) -> pydicom.Dataset:
    """A binary DICOM Segmentation of the lungs and opacities, referencing every source slice.

    Args:
        volume: the scored volume, loaded from a single-frame series (``volume.sop_instance_uids`` set).
        prediction: its prediction.
        sources: the datasets of every slice of the series (headers suffice), in any order.
        series_number: SeriesNumber of the new series.

    Raises:
        ValueError: a multi-frame or non-DICOM volume, a missing slice, or a prediction of another volume.

    Example:
        >>> seg = build_seg(volume, clf.predict(volume), headers)  # doctest: +SKIP
        >>> [s.SegmentLabel for s in seg.SegmentSequence]  # doctest: +SKIP
        ['right lung', 'left lung', 'ground-glass opacity', 'consolidation']
    """
    if tuple(prediction.saliency.source_shape) != tuple(volume.shape):
        raise ValueError(f"prediction must belong to the volume of shape {volume.shape}")
    ordered = _ordered_sources(volume, sources)
    grid = prediction.quantification.grid
    lungs = grid.upsample(prediction.lung_mask)
    lesions = grid.upsample(prediction.lesion_mask)
    masks = np.zeros((*volume.shape, len(_SEGMENTS)), dtype=bool)
    for k, (_, _, _, lung_value, lesion_value) in enumerate(_SEGMENTS):
        masks[..., k] = lungs == lung_value if lung_value is not None else lesions == lesion_value
    algorithm = hd.AlgorithmIdentificationSequence(
        name=prediction.model_id.split("@", 1)[0] or "medai",
        family=codes.DCM.ArtificialIntelligence,
        version=prediction.model_sha256[:16] or prediction.model_id,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=f"medai {label}",
        )
        for number, (label, category, kind, _, _) in enumerate(_SEGMENTS, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=prediction.model_id.split("@", 1)[0][:64] or "medai",
        software_versions=prediction.model_id[:64],
        device_serial_number=prediction.model_sha256[:16] or "unknown",
        content_description="lungs and opacities (coarse grid, research use only)",
        content_label="MEDAI_LUNGS",
    )
    seg.SeriesDescription = SEG_SERIES_DESCRIPTION
    log.info("SEG for series %s: %d frames", prediction.series_uid, int(seg.NumberOfFrames))
    return seg
