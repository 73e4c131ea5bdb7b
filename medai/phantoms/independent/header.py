"""A CT-like DICOM header with a synthetic identity (invented names and numbers, never patient data).

Every value is derived from the spec's seed, so the same spec always gets the
same identity and UIDs; keys are DICOM keywords and the mapping can be passed
to :func:`~medai.phantoms.ctwriter.write_ct_series` as ``attributes``.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from medai.phantoms.independent.spec import IndependentSpec

__all__ = ["SYNTHETIC_COMMENT", "ct_header", "series_uids"]

#: ImageComments of every series of this family.
SYNTHETIC_COMMENT = "SYNTHETIC PHANTOM (medai independent family B) - not patient data, research use only"

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "fa", "go", "hu", "ji", "pe", "ze", "wa")
_MODELS = {
    "GE MEDICAL SYSTEMS": "SYNTH-B Revolution-like",
    "SIEMENS": "SYNTH-B Definition-like",
    "Philips": "SYNTH-B Ingenuity-like",
    "TOSHIBA": "SYNTH-B Aquilion-like",
}


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(str(rng.choice(_SYLLABLES)) for _ in range(n)).capitalize()


def series_uids(seed: int) -> tuple[str, str]:
    """Deterministic (StudyInstanceUID, SeriesInstanceUID) of a seed."""
    study = generate_uid(entropy_srcs=["medai-independent-b", "study", str(seed)])
    series = generate_uid(entropy_srcs=["medai-independent-b", "series", str(seed)])
    return str(study), str(series)


def ct_header(spec: IndependentSpec) -> dict[str, Any]:
    """DICOM attributes by keyword for the case ``spec``."""
    f = spec.factors
    rng = np.random.default_rng([spec.seed, 0x1D])
    date = _dt.date(2020, 3, 1) + _dt.timedelta(days=int(rng.integers(0, 700)))
    birth = date.year - int(f["age_years"])
    contrast = f["contrast"]
    if contrast == "pulmonary":
        study = "CTA CHEST PE PROTOCOL"
    elif contrast == "arterial":
        study = "CTA THORAX"
    elif contrast == "venous":
        study = "CT CHEST WITH CONTRAST"
    else:
        study = "CT CHEST LOW DOSE" if f["dose"] < 0.4 else "CT CHEST WITHOUT CONTRAST"
    kernel = f["kernel_name"]
    header: dict[str, Any] = {
        "Modality": "CT",
        "Manufacturer": f["vendor"],
        "ManufacturerModelName": _MODELS[f["vendor"]],
        "ConvolutionKernel": kernel,
        "SliceThickness": float(f["slice_mm"]),
        "SpacingBetweenSlices": float(f["increment_mm"]),
        "KVP": int(f["kvp"]),
        "XRayTubeCurrent": round(250 * f["dose"] * (120.0 / f["kvp"]) ** 2),
        "ReconstructionDiameter": float(f["fov_mm"]),
        "PatientName": f"{_word(rng, 3)}^{_word(rng, 2)}",
        "PatientID": f"SYNB{int(rng.integers(10**7, 10**8))}",
        "PatientSex": f["sex"],
        "PatientAge": f"{int(f['age_years']):03d}Y",
        "PatientBirthDate": f"{birth}0101",
        "AccessionNumber": f"SA{int(rng.integers(10**8, 10**9))}",
        "StudyDate": date.strftime("%Y%m%d"),
        "SeriesDate": date.strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}00",
        "StudyID": str(int(rng.integers(1000, 9999))),
        "StudyDescription": study,
        "SeriesDescription": f"{f['slice_mm']:g}mm {kernel}",
        "SeriesNumber": int(rng.integers(2, 9)),
        "BodyPartExamined": "CHEST",
        "PatientPosition": "FFS" if rng.random() < 0.3 else "HFS",
        "InstitutionName": "Synthetic General Hospital",
        "StationName": f"SYNCT{int(rng.integers(1, 9)):02d}",
        "ImageComments": SYNTHETIC_COMMENT,
        "BurnedInAnnotation": "NO",
    }
    if contrast != "none":
        header["ContrastBolusAgent"] = "IV iodinated contrast (synthetic)"
    return header
