"""The medai viewer, a Streamlit script: ``medai app [--data DIR] [--results FILE] [--dicomweb URL]``.

Equivalent to ``streamlit run app/viewer.py -- --data DIR ...``. The sidebar holds the source of the studies
and the triage worklist; the page shows the open study: images with overlays, the results and the exports.
With ``--data`` the first study of the worklist opens at once. "Research use only - not for diagnosis" is on
every page. Failures a reader can act on (a refused upload, a series the QC gate rejects) are shown in one
line; anything else is logged for the administrator and summarised in one line, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import streamlit as st

from app import cache, images, results, sources
from medai.errors import MedaiError
from medai.report.case_report import RESEARCH_BANNER
from medai.report.results import RowStatus
from medai.report.worklist import Worklist

log = logging.getLogger("app.viewer")


def options(argv: Sequence[str]) -> argparse.Namespace:
    """The script's own options (after ``--`` on the ``streamlit run`` line)."""
    parser = argparse.ArgumentParser(prog="medai app", add_help=False)
    parser.add_argument("--data", default="", help="folder of studies (DICOM, zip, NIfTI)")
    parser.add_argument("--results", default="", help="a medai score results file")
    parser.add_argument("--dicomweb", default="", help="DICOMweb root of a PACS")
    parser.add_argument("--audit-log", default="", help="tamper-evident audit trail of every scoring")
    known, _ = parser.parse_known_args(list(argv))
    return known


def banner() -> None:
    st.markdown(
        f'<div style="background:#b00020;color:#fff;font-weight:600;padding:6px 12px;border-radius:4px;'
        f'margin-bottom:8px" role="alert" id="medai-banner">{RESEARCH_BANNER}</div>',
        unsafe_allow_html=True,
    )


def show_study(worklist: Worklist, key: str) -> None:
    """The open study: a header line, the images and the results side by side."""
    entry = worklist.entry(key)
    if entry.status == RowStatus.ERROR:
        reason = entry.row.get("reason") or "error"
        st.error(f"{entry.ref.title} cannot be scored ({reason}): {entry.row.get('message') or 'see the server log'}")
        return
    # a row read from a results file opens without running the model, until the reader asks for the overlays
    scored = entry.status != RowStatus.OK or worklist.scored_here(key) or bool(st.session_state.get(f"score:{key}"))
    try:
        with st.spinner(f"Loading {'and scoring ' if scored else ''}{entry.ref.title} ..."):
            mpr = cache.prepared_view(worklist, id(worklist), key, scored)
    except MedaiError as exc:  # the QC gate's reason (or a load failure) in one line
        st.error(f"{entry.ref.title} cannot be scored: {' '.join(str(exc).split())}")
        return
    entry = worklist.entry(key)
    case = worklist.open(key, score=scored)
    st.caption(results.source_note(entry.ref, entry.row))
    image_col, result_col = st.columns([7, 3])
    with image_col:
        layers = images.controls(mpr, key)
        images.legend(mpr, layers)
        if case.prediction is None and st.button(
            "Show the overlays (runs the model on this study)", key=f"score-button:{key}", type="primary"
        ):
            st.session_state[f"score:{key}"] = True
            st.rerun()
        images.views(mpr, layers, key)
    with result_col:
        results.panel(entry.row, case, entry.ref, cache.classifier())
        results.exports(entry.row, case, entry.ref, cache.classifier())


def main() -> None:
    st.set_page_config(page_title="medai viewer", layout="wide", initial_sidebar_state="expanded")
    banner()
    st.sidebar.markdown(f"**medai viewer**  \n{RESEARCH_BANNER}")
    try:
        opts = options(sys.argv[1:])
        cache.use_audit_log(opts.audit_log)
        worklist, name = sources.choose_worklist(opts)
        if worklist is None:
            st.info("Choose where the studies come from in the sidebar.")
            return
        with st.sidebar:
            sources.scoring_progress(worklist)
        key = sources.pick_study(worklist, name)
        if key is not None:
            show_study(worklist, key)
    except MedaiError as exc:
        st.error(" ".join(str(exc).split()))
    except Exception as exc:  # a bug: the reader gets one line, the administrator the traceback
        log.exception("the viewer failed")
        st.error(f"Internal error ({type(exc).__name__}); the details are in the server log.")


main()
