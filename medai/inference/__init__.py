"""Inference: the torch-free serving engine (onnxruntime) that turns a Volume into a Prediction.

:mod:`~medai.inference.classifier` (``Classifier``, ``Prediction``) runs the
exported ONNX model, applies the calibration and decision rule of
:mod:`~medai.inference.calibration`, quantifies the lungs (:mod:`medai.quantify`)
and builds the saliency map (:mod:`~medai.inference.saliency`).
"""
