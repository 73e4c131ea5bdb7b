"""The medai viewer: a Streamlit UI on top of medai (``medai app``; the script is ``app/viewer.py``).

UI only. The worklist, the rendering, the case report, uploads and DICOMweb are medai's
(:mod:`medai.report.worklist`, :mod:`medai.report.rendering`, :mod:`medai.report.case_report`,
:mod:`medai.ingest.upload`, :mod:`medai.ingest.dicomweb`); these modules lay them out. The viewer is
torch-free and never imports batch, the PACS hook or the model side (import-linter contracts in
pyproject.toml).
"""
