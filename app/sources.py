"""The sidebar: where the studies come from, and the triage worklist to pick one from."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import streamlit as st

from app import cache
from medai.errors import MedaiError
from medai.ingest.upload import save_upload
from medai.report.results import RowStatus
from medai.report.worklist import TRIAGE_GROUPS, Worklist, WorklistEntry, triage_group

log = logging.getLogger(__name__)

FOLDER, UPLOAD, PACS, DEMO = "Folder or results file", "Upload", "PACS (DICOMweb)", "Demo studies"
#: Worklist marks per triage group (Streamlit Markdown colours; no emoji: a reading room's browser may lack the font).
_MARK = (":red[\u25a0]", ":orange[\u25a0]", ":violet[\u25b2]", ":gray[\u25cb]", ":green[\u25a0]")


def demo_folder() -> Path | None:
    """``demo/studies`` written by ``make demo``, if it is there (working directory first, then the checkout)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "demo" / "studies").is_dir():
            return base / "demo" / "studies"
    return None


def choose_worklist(options: argparse.Namespace) -> tuple[Worklist | None, str]:
    """The source chooser; returns the worklist (None until one is chosen) and a name for it."""
    demo = demo_folder()
    choices = [FOLDER, UPLOAD, PACS] + ([DEMO] if demo is not None else [])
    default = PACS if options.dicomweb and not options.data and not options.results else FOLDER
    if not (options.data or options.results or options.dicomweb) and demo is not None:
        default = DEMO
    source = st.sidebar.radio("Studies from", choices, index=choices.index(default), horizontal=True, key="source")
    if source == FOLDER:
        folder = st.sidebar.text_input("Folder (DICOM, zip, NIfTI)", value=options.data or "", key="folder")
        results = st.sidebar.text_input(
            "medai score results file (optional)", value=options.results or "", key="results"
        )
        if not folder.strip() and not results.strip():
            st.sidebar.info("Type a folder of studies, or a results file of `medai score`.")
            return None, ""
        return cache.folder_worklist(folder.strip(), results.strip()), f"folder:{folder}|{results}"
    if source == DEMO and demo is not None:
        results = demo.parent / "results.csv"
        return cache.folder_worklist(str(demo), str(results) if results.is_file() else ""), "demo"
    if source == PACS:
        url = st.sidebar.text_input(
            "DICOMweb URL", value=options.dicomweb or "", placeholder="http://pacs:8042/dicom-web"
        )
        if not url.strip():
            st.sidebar.info("Type the DICOMweb root of your PACS (QIDO-RS and WADO-RS).")
            return None, ""
        return cache.dicomweb_worklist(url.strip()), f"pacs:{url}"
    return upload(), "upload"


def upload() -> Worklist | None:
    """A zip archive or DICOM/NIfTI files from the browser, written safely into a private folder."""
    files = st.sidebar.file_uploader(
        "A zip archive, DICOM files or a NIfTI volume",
        accept_multiple_files=True,
        key="upload",
        help="Uploads are checked before anything is written: no paths outside the upload, no links, no zip bombs.",
    )
    if not files:
        st.session_state.pop("upload_worklist", None)
        return None
    signature = tuple((f.name, f.size) for f in files)
    if st.session_state.get("upload_signature") != signature:
        if previous := st.session_state.get("upload_folder"):  # the reader replaced the upload: drop the old one
            shutil.rmtree(previous, ignore_errors=True)
        folder = cache.private_folder("medai-upload-")
        st.session_state["upload_folder"] = str(folder)
        worklist: Worklist | None = None
        try:
            with st.spinner("Checking and unpacking the upload ..."):
                for file in files:
                    save_upload(file.name, file, folder)
                worklist = cache.upload_worklist(folder)
        except MedaiError as exc:
            st.session_state.pop("upload_worklist", None)
            st.session_state["upload_signature"] = signature
            st.session_state["upload_error"] = " ".join(str(exc).split())
            log.warning("an upload was refused: %s", type(exc).__name__)
        else:
            st.session_state.update(upload_worklist=worklist, upload_signature=signature, upload_error="")
    if st.session_state.get("upload_error"):
        st.error(f"Upload refused: {st.session_state['upload_error']}")
        return None
    worklist = st.session_state.get("upload_worklist")
    if worklist is not None and not worklist.entries():  # type: ignore[union-attr]
        st.error("The upload holds no DICOM series and no NIfTI volume: nothing to read.")
        return None
    return worklist


def describe(entry: WorklistEntry) -> str:
    """One worklist line: priority mark, study, label and p(COVID-19), severity or the QC reason."""
    row = entry.row
    group = triage_group(row)
    if entry.status == RowStatus.OK:
        p = row.get("p_covid19")
        verdict = f"{row.get('label')}{'?' if row.get('indeterminate') else ''}"
        detail = f"{verdict}  p(COVID) {p:.2f}  {row.get('severity') or ''}" if p is not None else verdict
        flags = "  QC: " + str(row["qc_flags"]).replace(";", ", ") if row.get("qc_flags") else ""
        return f"{_MARK[group]} {entry.ref.title} - {detail}{flags}"
    if entry.status == RowStatus.ERROR:
        return f"{_MARK[group]} {entry.ref.title} - not scored: {row.get('reason') or 'error'}"
    waiting = "scoring ..." if entry.row.get("status") == "scoring" else "waiting to be scored"
    return f"{_MARK[group]} {entry.ref.title} - {waiting}"


def pick_study(worklist: Worklist, name: str) -> str | None:
    """The worklist as a list to click, in triage order; returns the chosen study's key (the first by default)."""
    entries = worklist.entries()
    if not entries:
        st.sidebar.warning("No studies here.")
        return None
    keys = [e.key for e in entries]
    labels = {e.key: describe(e) for e in entries}
    # until the reader picks a study, the most urgent one is open (the order changes while the worklist is scored)
    picked_state = f"picked:{name}"
    chosen = st.session_state.get(picked_state)
    if chosen not in keys:
        chosen = keys[0]
    picked = st.sidebar.radio(
        "Worklist (most urgent first)",
        keys,
        index=keys.index(chosen),
        format_func=labels.__getitem__,
        key=f"worklist:{name}:{'|'.join(keys)}",
        help="Order: "
        + ", ".join(f"{_MARK[i]} {g}" for i, g in enumerate(TRIAGE_GROUPS))
        + "; then by the probability of COVID-19.",
    )
    if picked != chosen or picked_state in st.session_state:
        st.session_state[picked_state] = picked
    return str(picked)


@st.fragment(run_every=2.0)
def scoring_progress(worklist: Worklist) -> None:
    """Progress of the background scoring; reruns the page when a study finishes so the order is up to date.

    Call it inside ``with st.sidebar:`` (a fragment draws only into its own container).
    """
    done, total = worklist.progress()
    last = st.session_state.get("scored_seen")
    st.session_state["scored_seen"] = done
    if done < total:
        st.progress(done / max(total, 1), text=f"Scoring the worklist: {done}/{total} studies")
    if last is not None and last != done:
        st.rerun()
