"""Ingestion: DICOM (folders, files, zip archives) and NIfTI in, a checked :class:`~medai.volume.Volume` out.

Stages, in the order a series meets them: :mod:`~medai.ingest.discovery` finds
series from headers only (:mod:`~medai.ingest.sources` holds the nouns it makes),
:mod:`~medai.ingest.qc` is the QC gate and picks the series to score,
:mod:`~medai.ingest.pixels` decodes pixel data into Hounsfield units and
:mod:`~medai.ingest.load` puts them together. :mod:`~medai.ingest.nifti` reads
and writes NIfTI; :mod:`~medai.ingest.inspection` is ``medai inspect``.
Imports only :mod:`medai.volume` and :mod:`medai.errors` from the rest of medai.
"""
