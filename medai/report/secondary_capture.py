"""Key images as a DICOM Secondary Capture series, with highdicom, for the PACS hook and the viewer.

One RGB Secondary Capture instance per key slice (where the evidence that decided is), each the key image
of :mod:`medai.report.keyimages`: the slice in a lung window with that evidence as an overlay inside the
lungs (the measured opacities when the findings decided, the saliency when the network did), and a caption
burned in with the label, the probabilities, the lesion percentage and severity, the model id and the line
"Research use only — not for diagnosis".

Nothing identifying the patient is drawn: the caption is built from the prediction only (never from the
header), so two patients' identical scans give identical pixels (a test checks it). The instances therefore
say ``BurnedInAnnotation NO`` (the DICOM meaning: no annotation sufficient to identify the patient) while the
study, patient and frame of reference come from the source series so that the PACS files them in the same
study.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, generate_uid

from medai.labels import INTENDED_USE
from medai.report.dicom_sr import MANUFACTURER
from medai.report.keyimages import key_image_array, key_slices, shows_opacities
from medai.volume import Volume

if TYPE_CHECKING:
    from medai.inference.classifier import Prediction

__all__ = ["SC_SERIES_DESCRIPTION", "build_secondary_capture"]

log = logging.getLogger(__name__)

#: The series description of the key images (64 characters at most).
SC_SERIES_DESCRIPTION = "medai key images - research use only, not for diagnosis"
#: Transfer syntaxes the encoder writes: uncompressed, or lossless RLE (smaller, every PACS decodes it).
SC_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, RLELossless)


def build_secondary_capture(
    volume: Volume,
    prediction: Prediction,
    sources: Sequence[pydicom.Dataset],
    *,
    series_number: int = 9902,
    n_slices: int = 4,
    tile_px: int = 512,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[pydicom.Dataset]:
    """The key images of a scored series as Secondary Capture instances of one new series in its study.

    Args:
        volume: the scored volume.
        prediction: its prediction (from ``volume``).
        sources: the source series' datasets (headers suffice); the first gives patient, study and equipment.
        series_number: SeriesNumber of the new series.
        n_slices: key slices, one instance each (:func:`medai.report.keyimages.key_slices`: where the evidence that
            decided is; fewer when it has fewer distinct peaks).
        tile_px: the image's slice tile in pixels.
        transfer_syntax: Explicit VR Little Endian or RLE Lossless.

    Returns:
        One dataset per key slice, InstanceNumber 1..n in slice order.

    Raises:
        ValueError: no sources, a prediction of another volume, or an unsupported transfer syntax.

    Example:
        >>> images = build_secondary_capture(volume, clf.predict(volume), headers)  # doctest: +SKIP
        >>> images[0].SOPClassUID.name  # doctest: +SKIP
        'Secondary Capture Image Storage'
    """
    if len(sources) == 0:
        raise ValueError("sources must hold at least one dataset of the source series, not none")
    if UID(transfer_syntax) not in SC_TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer_syntax must be one of {[str(u) for u in SC_TRANSFER_SYNTAXES]}, not {transfer_syntax!r}"
        )
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, not {n_slices}")
    series_uid = generate_uid()
    images: list[pydicom.Dataset] = []
    overlay = "measured opacity" if shows_opacities(prediction) else "saliency"
    for number, z in enumerate(key_slices(prediction, n_slices), start=1):
        pixels = np.ascontiguousarray(key_image_array(volume, prediction, slices=[z], tile_px=tile_px))
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=sources[0],
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=number,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "P"),  # radiological tiles: rows run to the patient's left, columns posterior
            transfer_syntax_uid=transfer_syntax,
        )
        sc.SeriesDescription = SC_SERIES_DESCRIPTION
        sc.ImageComments = f"key slice {z + 1} of {volume.shape[0]}; {prediction.model_id}; {INTENDED_USE}"
        sc.BodyPartExamined = "CHEST"  # unpaired: no Laterality (type 2C) needed
        sc.BurnedInAnnotation = "NO"
        sc.RecognizableVisualFeatures = "NO"
        sc.DerivationDescription = f"medai {overlay} overlay on a lung-window key slice"
        images.append(sc)
    log.info("%d key images for series %s", len(images), prediction.series_uid)
    return images
