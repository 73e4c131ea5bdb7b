"""Quantification: lungs, ground glass and consolidation, lesion percentages, lung volumes, severity.

:mod:`~medai.quantify.measure` (``quantify``) combines the steps: the coarse
grid (:mod:`~medai.quantify.grid`), the classical lung segmentation
(:mod:`~medai.quantify.lungs`), the learned head (:mod:`~medai.quantify.head`),
the opacity thresholds (:mod:`~medai.quantify.opacities`), all configured by
:mod:`~medai.quantify.params`. numpy, scipy and onnxruntime only.
"""
