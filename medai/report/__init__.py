"""Reports: a Prediction turned into objects for people and systems.

Key images (:mod:`~medai.report.keyimages`, PNG montages with the saliency overlay) and the DICOM result
objects: the TID 1500 SR (:mod:`~medai.report.dicom_sr`), Secondary Capture key images
(:mod:`~medai.report.secondary_capture`) and the SEG of lungs and opacities (:mod:`~medai.report.dicom_seg`).
The batch scorer, the PACS hook and the viewer share these encoders; the case report belongs here too.
"""
