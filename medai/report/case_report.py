"""The case report: one scored series as a self-contained HTML page, printable to PDF from any browser.

What a reader files or forwards: the label (with the indeterminate warning), the calibrated probabilities, the
lesion percentage overall, per lung and per zone, ground glass and consolidation, the severity grade, the lung
volumes, the QC warnings, the key images (the most salient axial slices and a coronal view through the most
salient point, lung window, saliency and lung contours, with the colour scale) and the model that produced it,
under the "Research use only - not for diagnosis" banner. Images are embedded as PNG data URIs; the page
loads nothing from anywhere. A print style sheet lays it out on A4.

Identifiers (patient ID, accession number) are shown only when ``show_identifiers`` is True.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from medai.labels import INTENDED_USE, LESION_NOISE_FLOOR_PERCENT
from medai.report.keyimages import OPACITY_CAPTION, key_slices, shows_opacities
from medai.report.rendering import (
    CONSOLIDATION_RGB,
    GGO_RGB,
    LEFT_LUNG_RGB,
    MPR,
    RIGHT_LUNG_RGB,
    Layers,
    Overlays,
    Plane,
    encode_png,
    saliency_caption,
    saliency_colorbar,
)
from medai.volume import Volume

if TYPE_CHECKING:
    from medai.inference.classifier import Prediction

__all__ = ["RESEARCH_BANNER", "case_report_html", "indeterminate_warning", "key_views"]

log = logging.getLogger(__name__)

#: The banner on every page the viewer and its reports show.
RESEARCH_BANNER = "Research use only - not for diagnosis"

_STYLE = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #111; max-width: 980px; }
.banner { background: #b00020; color: #fff; font-weight: bold; padding: 8px 12px; border-radius: 4px; }
h1 { font-size: 22px; margin: 16px 0 4px; } h2 { font-size: 17px; margin: 20px 0 6px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 10px 3px 0; text-align: left; }
.label { font-size: 20px; font-weight: bold; } .warn { color: #8a4b00; font-weight: bold; }
.bar { display: inline-block; height: 12px; background: #3b6fd8; vertical-align: middle; }
.keys img { width: 300px; margin: 0 8px 8px 0; border: 1px solid #444; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin-right: 4px; }
.small { font-size: 11px; color: #444; }
@media print { body { margin: 0; } .keys img { width: 45%; } figure, table { break-inside: avoid; } }
@page { size: A4; margin: 14mm; }
"""


def _png_uri(rgb: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(rgb, compress_level=6)).decode("ascii")


def _rgb(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _swatches(*entries: tuple[str, tuple[int, int, int]]) -> str:
    """Legend entries: a colour swatch and its name for each ``(name, colour)``."""
    return "".join(f'<span><i class="swatch" style="background:{_rgb(c)}"></i>{name}</span>' for name, c in entries)


def key_views(volume: Volume, prediction: Prediction, *, n_axial: int = 3, size_px: int = 420) -> list[tuple[str, Any]]:
    """The report's images: ``(caption, RGB array)`` for the key axial slices and one coronal view.

    The key slices and the overlay are those of the key images (:func:`medai.report.keyimages.key_slices`):
    the measured opacities where they decided the label, else the saliency.

    Example:
        >>> [caption for caption, _ in key_views(volume, prediction)]  # doctest: +SKIP
        ['axial 61/120 (z 117.1 mm)', 'axial 64/120 (z 107.1 mm)', 'coronal 253/512 (y 14.0 mm)']
    """
    overlays = Overlays.from_prediction(prediction)
    mpr = MPR(volume, overlays)
    layers = Layers(lung_contour=True, crosshair=False, size_px=size_px)
    if shows_opacities(prediction):
        layers = replace(layers, saliency_opacity=0.0, lesion_opacity=0.55)
    centre = volume.shape[1] // 2, volume.shape[2] // 2
    slices = sorted({mpr.to_display((z, *centre))[0] for z in key_slices(prediction, n_axial)})
    out = []
    for index in slices:
        caption = f"axial {index + 1}/{mpr.slices(Plane.AXIAL)} ({mpr.position_mm(Plane.AXIAL, index)})"
        out.append((caption, mpr.render(Plane.AXIAL, index, layers)))
    cursor = mpr.start_cursor()
    coronal = cursor[Plane.CORONAL.normal_axis]
    caption = f"coronal {coronal + 1}/{mpr.slices(Plane.CORONAL)} ({mpr.position_mm(Plane.CORONAL, coronal)})"
    out.append((caption, mpr.render(Plane.CORONAL, coronal, layers)))
    return out


def _rows(items: Mapping[str, str]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items.items())


def case_report_html(
    volume: Volume,
    prediction: Prediction,
    *,
    title: str = "",
    show_identifiers: bool = True,
    model_card: str = "",
    generated_at: datetime | None = None,
) -> str:
    """The case report of one scored series as a self-contained HTML page.

    Args:
        volume: the scored volume.
        prediction: its prediction.
        title: the study's name in the worklist (a folder or file name, a study description).
        show_identifiers: include the patient ID and accession number from the header.
        model_card: where the model's card is (a path or URL), shown with the model id.
        generated_at: the time printed on the report (default: now, UTC).

    Raises:
        ValueError: ``prediction`` belongs to another volume.

    Example:
        >>> Path("case.html").write_text(case_report_html(volume, prediction, title="case_0001"))  # doctest: +SKIP
    """
    from medai.inference.classifier import explain_qc_flags  # at call time, as this package's modules do

    if tuple(prediction.saliency.source_shape) != tuple(volume.shape):
        raise ValueError(
            f"prediction must belong to the volume: saliency shape {prediction.saliency.source_shape} "
            f"must be {volume.shape}"
        )
    quant = prediction.quantification
    header = volume.header
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    study = {
        "study": title or str(header.get("StudyDescription") or "(untitled)"),
        "series": f"{header.get('SeriesNumber', '')} {header.get('SeriesDescription', '')}".strip() or "-",
        "study UID": prediction.study_uid or "-",
        "series UID": prediction.series_uid or "-",
        "voxels": "{} x {} x {} at {:.2f} x {:.2f} x {:.2f} mm".format(*volume.shape, *volume.spacing_mm),
    }
    if show_identifiers:
        study["patient ID"] = str(header.get("PatientID") or "-")
        study["accession number"] = str(header.get("AccessionNumber") or "-")
        study["study date"] = str(header.get("StudyDate") or "-")
    probabilities = "".join(
        f'<tr><th>{html.escape(name)}</th><td><span class="bar" style="width:{200 * p:.0f}px"></span> {p:.3f}</td></tr>'
        for name, p in prediction.probabilities.items()
    )
    zones = quant.to_dict()
    numbers = {
        "lesions (both lungs)": f"{quant.lesion_percent:.1f} % of lung volume",
        "right / left lung": f"{quant.right_lesion_percent:.1f} % / {quant.left_lesion_percent:.1f} %",
        "ground glass / consolidation": f"{quant.ggo_percent:.1f} % / {quant.consolidation_percent:.1f} %",
        "severity": f"{prediction.severity.value} (MosMedData grade; CT-0 when the decision is normal)",
        "lung volume": f"{quant.lung_volume_ml:.0f} ml (right {quant.right_lung_volume_ml:.0f}, "
        f"left {quant.left_lung_volume_ml:.0f})",
        "per zone (upper / middle / lower)": "; ".join(
            f"{side} "
            + " / ".join(
                f"{zones.get(f'{side}_{zone}_lesion_percent', 0.0):.1f}" for zone in ("upper", "middle", "lower")
            )
            for side in ("right", "left")
        )
        + " %",
        "QC warnings": "; ".join(explain_qc_flags(prediction.qc_flags)) or "none",
        "quantification": quant.method,
    }
    verdict = html.escape(prediction.label)
    unsure = indeterminate_warning(prediction.label, prediction.probabilities, prediction.lesion_percent)
    warning = f'<p class="warn">{html.escape(unsure)}</p>' if prediction.indeterminate else ""
    images = "".join(
        f'<figure style="display:inline-block;margin:0"><img alt="{html.escape(c)}" src="{_png_uri(rgb)}">'
        f'<figcaption class="small">{html.escape(c)}</figcaption></figure>'
        for c, rgb in key_views(volume, prediction)
    )
    if shows_opacities(prediction):
        overlay_legend = f"<span>{html.escape(OPACITY_CAPTION)}</span>" + _swatches(
            ("ground glass", GGO_RGB), ("consolidation", CONSOLIDATION_RGB)
        )
    else:
        overlay_legend = (
            f'<span><img alt="saliency colour scale" style="width:140px;height:10px;border:0" '
            f'src="{_png_uri(saliency_colorbar(140, 10))}"> '
            f"{html.escape(saliency_caption(prediction.saliency.class_name, prediction.evidence))} (weak to strong)"
            "</span>"
        )
    legend = (
        f'<div class="legend">{overlay_legend}'
        + _swatches(("right lung", RIGHT_LUNG_RGB), ("left lung", LEFT_LUNG_RGB))
        + "</div>"
    )
    model = html.escape(prediction.model_id) + (f" (card: {html.escape(model_card)})" if model_card else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medai case report - {html.escape(study["study"])}</title>
<style>{_STYLE}</style></head><body>
<div class="banner">{RESEARCH_BANNER}</div>
<h1>medai case report: {html.escape(study["study"])}</h1>
<p class="small">Generated {when} by medai. {html.escape(INTENDED_USE)}</p>
<h2>Result</h2>
<p class="label">{verdict}{" (indeterminate)" if prediction.indeterminate else ""}</p>{warning}
<table>{probabilities}</table>
<p class="small">Calibrated probabilities of the three classes (they sum to 1).</p>
<h2>Quantification</h2><table>{_rows(numbers)}</table>
<h2>Key images</h2><div class="keys">{images}</div>{legend}
<p class="small">Radiological convention: the patient's right on the image's left. Lung window W1500/L-600.
Ground glass is shown in <span style="color:{_rgb(GGO_RGB)}">cyan</span> and consolidation in
<span style="color:{_rgb(CONSOLIDATION_RGB)}">magenta</span> in the viewer.</p>
<h2>Study</h2><table>{_rows(study)}</table>
<h2>Model</h2><p>{model}</p>
<div class="banner">{RESEARCH_BANNER}</div>
</body></html>
"""


def indeterminate_warning(label: str, probabilities: Mapping[str, float], lesion_percent: float | None) -> str:
    """The sentence a reader sees beside an indeterminate label (the case report, the viewer).

    A lung measured under the CT-0 line is labelled normal whatever the probabilities
    (:func:`medai.inference.classifier.served_decision`): when they lean to a disease, the warning says so.

    Example:
        >>> indeterminate_warning("normal", {"normal": 0.3, "covid19": 0.6, "other_pneumonia": 0.1}, 0.9)[:60]
        'Indeterminate: the probabilities lean to covid19, but the me'
        >>> indeterminate_warning("covid19", {"normal": 0.45, "covid19": 0.5, "other_pneumonia": 0.05}, 3.0)[:60]
        'Indeterminate: the probabilities are close to the decision t'
    """
    read = "Read this study without relying on the label."
    top = max(probabilities, key=lambda k: probabilities[k]) if probabilities else label
    under_line = lesion_percent is not None and lesion_percent < LESION_NOISE_FLOOR_PERCENT
    if label == "normal" and top != "normal" and under_line:
        return (
            f"Indeterminate: the probabilities lean to {top}, but the measured opacity ({lesion_percent:.1f} %) "
            f"is under the CT-0 line ({LESION_NOISE_FLOOR_PERCENT:g} %), so the lung is not called sick. {read}"
        )
    return (
        "Indeterminate: the probabilities are close to the decision threshold, the model is not confident, or the "
        f"QC warnings say the lungs were not measured reliably. {read}"
    )
