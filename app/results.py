"""The results panel (label, probabilities, lesions, severity, volumes, QC, model) and the exports."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app import cache
from medai.inference.classifier import Classifier, Prediction, explain_qc_flags
from medai.labels import CLASS_NAMES, INTENDED_USE
from medai.report import dicom_sr
from medai.report.case_report import case_report_html, indeterminate_warning
from medai.report.deidentify import Deidentifier, RowDeidentifier, UidMap, deidentify_case
from medai.report.worklist import Case, StudyRef


def panel(row: Mapping[str, Any], case: Case, ref: StudyRef, classifier: Classifier) -> None:
    """The numbers of the open study, from its prediction when scored here, else from its results row."""
    prediction = case.prediction
    label = str(row.get("label") or "")
    st.markdown(f"## {label or 'not scored'}")
    probabilities = {name: row.get(f"p_{name}") for name in CLASS_NAMES}
    if row.get("indeterminate"):
        known = {k: float(v) for k, v in probabilities.items() if v is not None}
        lesion = row.get("lesion_percent")
        text = indeterminate_warning(label, known, None if lesion is None else float(lesion))
        st.warning(text.replace("Indeterminate:", "**Indeterminate**:", 1))
    if all(p is not None for p in probabilities.values()):
        chart = pd.DataFrame({"class": list(probabilities), "probability": [float(p) for p in probabilities.values()]})  # type: ignore[arg-type]
        st.bar_chart(
            chart,
            x="class",
            y="probability",
            horizontal=True,
            height=140,
            y_label="",
            x_label="probability",
            sort=False,
        )
        st.caption("Calibrated probabilities: " + ", ".join(f"{k} {float(v):.3f}" for k, v in probabilities.items()))  # type: ignore[arg-type]
    left, right = st.columns(2)
    left.metric("Lesions (both lungs)", _percent(row.get("lesion_percent")))
    right.metric("Severity", str(row.get("severity") or "-"))
    left.metric("Right lung", _percent(row.get("right_lesion_percent")))
    right.metric("Left lung", _percent(row.get("left_lesion_percent")))
    if prediction is not None:
        q = prediction.quantification
        left.metric("Ground glass", f"{q.ggo_percent:.1f} %")
        right.metric("Consolidation", f"{q.consolidation_percent:.1f} %")
        volumes = f"right {q.right_lung_volume_ml:.0f}, left {q.left_lung_volume_ml:.0f}"
        st.caption(f"Lung volume {q.lung_volume_ml:.0f} ml ({volumes})")
    elif row.get("lung_volume_ml") is not None:
        st.caption(f"Lung volume {float(row['lung_volume_ml']):.0f} ml")
    flags = [f for f in str(row.get("qc_flags") or "").split(";") if f]
    if flags:
        st.warning("QC warnings:\n" + "\n".join(f"- {line}" for line in explain_qc_flags(flags)))
    _model(row, classifier)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} %"


def _model(row: Mapping[str, Any], classifier: Classifier) -> None:
    model_id = str(row.get("model_id") or classifier.scoring_id)
    name, _, version = model_id.partition("@")
    note = "" if model_id == classifier.scoring_id else "  \nScored earlier by another model version (results file)."
    st.caption(f"Model **{name}**, version {version}{note}")
    card = (
        classifier.path.parent / "README.md"
        if classifier.path.stem == "medai-ref"
        else classifier.path.with_suffix(".json")
    )
    with st.expander("Model card"):
        if card.suffix == ".md" and card.is_file():
            st.markdown(card.read_text(encoding="utf-8"))
        elif card.is_file():
            st.json(json.loads(card.read_text(encoding="utf-8")), expanded=False)
        else:
            st.write(f"No card beside {classifier.path.name}.")


def _file_stem(ref: StudyRef) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ref.title).strip("._") or "study"


def exports(row: Mapping[str, Any], case: Case, ref: StudyRef, classifier: Classifier) -> None:
    """Download buttons: the case report (HTML, print it to PDF), the JSON result and the DICOM SR; with
    "De-identify exports" on, none of them names the patient, the study's folder or its original UIDs."""
    st.markdown("#### Export")
    deidentify = st.toggle(
        "De-identify exports",
        key="deidentify_exports",
        help="PS3.15 Basic Profile: no patient name, ID, accession number, dates, descriptions or folder names; "
        "UIDs replaced consistently (the same study keeps the same new UIDs while this server runs).",
    )
    prediction = case.prediction
    volume = case.volume
    title = ref.title
    if deidentify:
        key = cache.deidentify_key()
        row = RowDeidentifier(key).row(row)
        if prediction is not None:
            volume, prediction = deidentify_case(case.volume, prediction, UidMap(key))
        title = f"study {row.get('study_uid', '')[5:17] or row.get('source', '')}"
        ref = dataclasses.replace(ref, title=title)
    stem = _file_stem(ref)
    card = str(classifier.path.with_suffix(".json").name)
    if prediction is None:
        st.caption("The case report and the DICOM SR need the model's result: score this study first.")
    else:
        report_prediction = prediction
        st.download_button(
            "Case report (HTML, print to PDF)",
            data=lambda: case_report_html(
                volume, report_prediction, title=title, model_card=card, show_identifiers=not deidentify
            ),
            file_name=f"{stem}_report.html",
            mime="text/html",
            key="export_report",
            on_click="ignore",
        )
    st.download_button(
        "Result (JSON)",
        data=lambda: json.dumps(_result_json(row, prediction), indent=2, default=str),
        file_name=f"{stem}_result.json",
        mime="application/json",
        key="export_json",
        on_click="ignore",
    )
    _sr_button(case, case.prediction, stem, deidentify=deidentify)


def _result_json(row: Mapping[str, Any], prediction: Prediction | None) -> dict[str, Any]:
    if prediction is not None:
        return {**prediction.to_dict(), "intended_use": INTENDED_USE}
    return {**{k: v for k, v in row.items() if v is not None}, "intended_use": INTENDED_USE}


def sr_bytes(case: Case, prediction: Prediction, *, deidentify: bool = False) -> bytes:
    """The DICOM SR (TID 1500) of a scored DICOM study as a Part 10 file, from the SR encoder in medai.report;
    de-identified (Basic Profile, this server's UID key) when asked."""
    from medai.ingest.discovery import read_header

    sources = [read_header(source) for source in case.sources]  # headers suffice
    dataset = dicom_sr.build_sr(prediction, sources)
    if deidentify:
        dataset = Deidentifier(key=cache.deidentify_key()).dataset(dataset)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _sr_button(case: Case, prediction: Prediction | None, stem: str, *, deidentify: bool = False) -> None:
    """The DICOM SR (TID 1500) download, built only when clicked."""
    if prediction is None or not case.sources:
        st.caption("DICOM SR export needs a scored DICOM series (not a NIfTI file or a results row).")
        return
    st.download_button(
        "DICOM SR (TID 1500)",
        data=lambda: sr_bytes(case, prediction, deidentify=deidentify),
        file_name=f"{stem}_sr.dcm",
        mime="application/dicom",
        key="export_sr",
        on_click="ignore",
    )


def source_note(ref: StudyRef, row: Mapping[str, Any]) -> str:
    """Where the study and its numbers come from, in one line."""
    where = {"folder": "folder", "upload": "upload", "results": "results file", "dicomweb": "PACS"}[ref.kind.value]
    scored = f", scored {row['scored_at']}" if row.get("scored_at") else ""
    return f"{ref.title} ({where}{scored}); series {row.get('series_uid') or Path(str(row.get('source', ''))).name}"
