"""Reports: a Prediction turned into objects for people and systems.

Key images (:mod:`~medai.report.keyimages`, PNG montages with the saliency
overlay). The DICOM result objects (SR, Secondary Capture, SEG) and the case
report belong here too, so the batch scorer, the PACS hook and the viewer share
one encoder.
"""
