"""A :class:`~medai.inference.classifier.Prediction` as a DICOM Comprehensive 3D SR (TID 1500), with highdicom.

The report is an *Imaging Measurement Report* (TID 1500) in the source study, its evidence the scored series.
It holds one TID 1501 measurement group per concern, every value coded:

* ``classification``: one group per class, its finding type the class (COVID-19 is SNOMED CT 840539006),
  its measurement the calibrated ``Probability`` (DCM 122157, no units);
* ``result``: the ``Finding`` (DCM 121071, the group's finding type) the decision rule chose, whether it
  is ``Indeterminate`` (SCT 82334004: Yes/No), and each QC warning (``Quality control warning``, its value the
  flag: ``EXPIRATION``, ``LUNG_SIDES_UNEQU``...; the flags that make the label indeterminate say why it is);
* ``quantification``: opacity percentage of lung volume for both lungs and per lung (finding sites
  SCT Lung / Right lung / Left lung), lung volumes in ml and the MosMedData severity grade CT-0..CT-4.

Every group names the algorithm (TID 4019): the model name, medai's version, and the model's full sha256
and id as parameters. Concepts no standard vocabulary has (the opacity fraction, the severity grades, the
scoring outcome) use the private coding scheme ``99MEDAI``, declared in the CodingSchemeIdentificationSequence.

A series medai could not score gets a report too (:func:`build_failure_sr`): the same template, a
``Scoring outcome`` naming the QC reason and the one-line message, so the PACS shows why instead of nothing.

Research use only; not for diagnosis (the series description says so).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medai.labels import INTENDED_USE, Severity

if TYPE_CHECKING:
    from medai.inference.classifier import Prediction

__all__ = [
    "CLASS_CODES",
    "MEDAI_SCHEME",
    "MedaiCode",
    "build_failure_sr",
    "build_sr",
    "qc_warning_code",
    "severity_code",
]

log = logging.getLogger(__name__)

#: The private coding scheme of the concepts no standard vocabulary has.
MEDAI_SCHEME = "99MEDAI"
#: Manufacturer written into every result object.
MANUFACTURER = "medai"
#: A Comprehensive 3D SR's series description (64 characters at most).
SR_SERIES_DESCRIPTION = "medai AI result - research use only, not for diagnosis"


class MedaiCode:
    """Coded concepts of the report: standard codes where they exist, ``99MEDAI`` where they do not."""

    PROCEDURE = Code("169069000", "SCT", "CT of chest")
    PROBABILITY = codes.DCM.Probability
    INDETERMINATE = Code("82334004", "SCT", "Indeterminate")
    YES = codes.SCT.Yes
    NO = codes.SCT.No
    LUNG = codes.SCT.Lung
    RIGHT_LUNG = Code("3341006", "SCT", "Right lung")
    LEFT_LUNG = Code("44029006", "SCT", "Left lung")
    OPACITY = codes.DCM.Opacity
    VOLUME = codes.SCT.Volume
    SEVERITY = Code("246112005", "SCT", "Severity")
    OPACITY_PERCENT = Code("OPACITY-PCT", MEDAI_SCHEME, "Opacity volume as percentage of lung volume")
    SCORING_OUTCOME = Code("OUTCOME", MEDAI_SCHEME, "Scoring outcome")
    QC_WARNING = Code("QC-WARNING", MEDAI_SCHEME, "Quality control warning")
    NO_UNITS = codes.UCUM.NoUnits
    PERCENT = codes.UCUM.Percent
    MILLILITER = Code("mL", "UCUM", "milliliter")


#: The finding each class name stands for.
CLASS_CODES: dict[str, Code] = {
    "normal": Code("17621005", "SCT", "Normal"),
    "covid19": Code("840539006", "SCT", "COVID-19"),
    "other_pneumonia": Code("233604007", "SCT", "Pneumonia"),
}

_SEVERITY_MEANINGS = {
    Severity.CT_0: "CT-0: no opacity",
    Severity.CT_1: "CT-1: opacities under 25% of lung",
    Severity.CT_2: "CT-2: opacities 25-50% of lung",
    Severity.CT_3: "CT-3: opacities 50-75% of lung",
    Severity.CT_4: "CT-4: opacities 75% of lung or more",
}


def severity_code(severity: Severity) -> Code:
    """The coded MosMedData grade.

    Example:
        >>> severity_code(Severity.CT_2).meaning
        'CT-2: opacities 25-50% of lung'
    """
    return Code(severity.value, MEDAI_SCHEME, _SEVERITY_MEANINGS[Severity(severity)])


def qc_warning_code(flag: str) -> Code:
    """A QC flag of the prediction (``Prediction.qc_flags``) as a coded value: the flag in capitals (16 characters
    at most, as DICOM's code values are) and its words.

    Example:
        >>> code = qc_warning_code("lung_sides_unequal")
        >>> code.value, code.meaning
        ('LUNG_SIDES_UNEQU', 'lung sides unequal')
    """
    return Code(flag.upper()[:16], MEDAI_SCHEME, flag.replace("_", " ")[:64])


def _medai_version() -> str:
    try:
        return metadata.version("medai")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_sources(sources: Sequence[pydicom.Dataset]) -> None:
    if len(sources) == 0:
        raise ValueError("sources must hold at least one dataset of the source series, not none")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in sources}
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in sources}
    if len(series) != 1 or len(studies) != 1 or "" in series or "" in studies:
        raise ValueError(
            f"sources must be datasets of one series in one study, not {len(series)} series in {len(studies)} studies"
        )


def _observation_context(model_name: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["medai-device", model_name]),
        name="medai",
        manufacturer_name=MANUFACTURER,
        model_name=model_name[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _algorithm(model_id: str, model_sha256: str, extra: Sequence[str] = ()) -> hd.sr.AlgorithmIdentification:
    name = model_id.split("@", 1)[0] or "medai"
    parameters = [f"model_id={model_id}", f"model_sha256={model_sha256 or 'unknown'}", *extra]
    return hd.sr.AlgorithmIdentification(name=name, version=_medai_version(), parameters=parameters)


def _group(
    name: str,
    algorithm: hd.sr.AlgorithmIdentification,
    *,
    finding_type: Code | None = None,
    measurements: Sequence[hd.sr.Measurement] = (),
    evaluations: Sequence[hd.sr.QualitativeEvaluation] = (),
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=name),
        finding_type=finding_type,
        algorithm_id=algorithm,
        measurements=list(measurements) or None,
        qualitative_evaluations=list(evaluations) or None,
    )


def _measure(name: Code, value: float, unit: Code, site: Code | None = None) -> hd.sr.Measurement:
    sites = [hd.sr.FindingSite(anatomic_location=site)] if site is not None else None
    return hd.sr.Measurement(name=name, value=round(float(value), 4), unit=unit, finding_sites=sites)


def _groups(prediction: Prediction) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    quant = prediction.quantification
    algorithm = _algorithm(prediction.model_id, prediction.model_sha256, [f"quantification={quant.method}"])
    groups = []
    for name, probability in prediction.probabilities.items():
        concept = CLASS_CODES.get(name, Code(name.upper()[:16], MEDAI_SCHEME, name))
        groups.append(
            _group(
                f"classification: {name}",
                algorithm,
                finding_type=concept,
                measurements=[_measure(MedaiCode.PROBABILITY, probability, MedaiCode.NO_UNITS)],
            )
        )
    label = CLASS_CODES.get(prediction.label, Code(prediction.label.upper()[:16], MEDAI_SCHEME, prediction.label))
    groups.append(
        _group(
            "result",
            algorithm,
            finding_type=label,
            evaluations=[
                hd.sr.QualitativeEvaluation(
                    MedaiCode.INDETERMINATE, MedaiCode.YES if prediction.indeterminate else MedaiCode.NO
                ),
                *(hd.sr.QualitativeEvaluation(MedaiCode.QC_WARNING, qc_warning_code(f)) for f in prediction.qc_flags),
            ],
        )
    )
    groups.append(
        _group(
            "quantification",
            algorithm,
            finding_type=MedaiCode.OPACITY,
            measurements=[
                _measure(MedaiCode.OPACITY_PERCENT, quant.lesion_percent, MedaiCode.PERCENT, MedaiCode.LUNG),
                _measure(
                    MedaiCode.OPACITY_PERCENT, quant.right_lesion_percent, MedaiCode.PERCENT, MedaiCode.RIGHT_LUNG
                ),
                _measure(MedaiCode.OPACITY_PERCENT, quant.left_lesion_percent, MedaiCode.PERCENT, MedaiCode.LEFT_LUNG),
                _measure(MedaiCode.VOLUME, quant.lung_volume_ml, MedaiCode.MILLILITER, MedaiCode.LUNG),
                _measure(MedaiCode.VOLUME, quant.right_lung_volume_ml, MedaiCode.MILLILITER, MedaiCode.RIGHT_LUNG),
                _measure(MedaiCode.VOLUME, quant.left_lung_volume_ml, MedaiCode.MILLILITER, MedaiCode.LEFT_LUNG),
            ],
            evaluations=[hd.sr.QualitativeEvaluation(MedaiCode.SEVERITY, severity_code(prediction.severity))],
        )
    )
    return groups


def _encode(
    groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations],
    sources: Sequence[pydicom.Dataset],
    *,
    model_name: str,
    series_number: int,
) -> pydicom.Dataset:
    if not 1 <= series_number <= 2**31 - 1:
        raise ValueError(f"series_number must be a positive integer, not {series_number}")
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model_name),
        procedure_reported=MedaiCode.PROCEDURE,
        imaging_measurements=list(groups),
        referenced_images=list(
            sources[:1]
        ),  # the image library (TID 1600): the series; the evidence lists every instance
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.SoftwareVersions = f"medai {_medai_version()}"
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = MEDAI_SCHEME
    scheme.CodingSchemeName = "medai result concepts"
    scheme.CodingSchemeResponsibleOrganization = "medai project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def build_sr(
    prediction: Prediction, sources: Sequence[pydicom.Dataset], *, series_number: int = 9901
) -> pydicom.Dataset:
    """The Comprehensive 3D SR (TID 1500) of a prediction, in the source series' study.

    Args:
        prediction: from :meth:`medai.inference.classifier.Classifier.predict` on the series of ``sources``.
        sources: the source series' datasets (headers suffice: ``stop_before_pixels`` is fine); at least one.
        series_number: SeriesNumber of the new SR series.

    Returns:
        The SR dataset with file meta (Explicit VR Little Endian), ready for ``save_as`` or C-STORE.

    Raises:
        ValueError: no sources, sources from several series or studies, or sources of another series than
            the prediction's.

    Example:
        >>> sr = build_sr(clf.predict(volume), headers)  # doctest: +SKIP
        >>> sr.StudyInstanceUID == headers[0].StudyInstanceUID  # doctest: +SKIP
        True
    """
    _check_sources(sources)
    source_series = str(sources[0].SeriesInstanceUID)
    if prediction.series_uid and prediction.series_uid != source_series:
        raise ValueError(f"sources must be of the scored series {prediction.series_uid}, not of series {source_series}")
    model_name = prediction.model_id.split("@", 1)[0] or "medai"
    sr = _encode(_groups(prediction), sources, model_name=model_name, series_number=series_number)
    log.info("SR for series %s: %s, model %s", source_series, prediction.label, prediction.model_id)
    return sr


def build_failure_sr(
    reason: str,
    message: str,
    sources: Sequence[pydicom.Dataset],
    *,
    model_id: str,
    model_sha256: str = "",
    series_number: int = 9901,
) -> pydicom.Dataset:
    """The SR saying a series could not be scored, and why (same template as :func:`build_sr`).

    Args:
        reason: a machine-readable reason, e.g. a :class:`medai.errors.QCReason` value (``too_few_slices``).
        message: the one-line explanation for a person (no patient identifiers).
        sources: the series' datasets (headers suffice); at least one.
        model_id, model_sha256: the model that would have scored it.
        series_number: SeriesNumber of the new SR series.

    Example:
        >>> sr = build_failure_sr("too_few_slices", "12 slices", headers, model_id=m)  # doctest: +SKIP
    """
    _check_sources(sources)
    if not reason:
        raise ValueError("reason must be a non-empty code such as 'too_few_slices', not ''")
    outcome = Code(reason.upper(), MEDAI_SCHEME, f"Not scored: {reason.replace('_', ' ')}"[:64])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"not scored: {message} ({INTENDED_USE})"
        ),
        algorithm_id=_algorithm(model_id, model_sha256),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(MedaiCode.SCORING_OUTCOME, outcome)],
    )
    model_name = model_id.split("@", 1)[0] or "medai"
    log.info("failure SR for series %s: %s", sources[0].SeriesInstanceUID, reason)
    return _encode([group], sources, model_name=model_name, series_number=series_number)
