"""The PACS hook: ``medai pacs serve`` receives CT series by DICOM, scores them and sends results back.

:mod:`~medai.pacs.listener` (pynetdicom C-STORE into :mod:`~medai.pacs.spool`, recorded in the SQLite
:mod:`~medai.pacs.queue`), :mod:`~medai.pacs.worker` (scoring and the result objects of :mod:`medai.report`),
:mod:`~medai.pacs.sender` (C-STORE and STOW-RS with retries), :mod:`~medai.pacs.audit`,
:mod:`~medai.pacs.config`, :mod:`~medai.pacs.status` and :mod:`~medai.pacs.cli`; :mod:`~medai.pacs.service`
wires them. Sits beside :mod:`medai.batch`; the two never import each other. Research use only.
"""
