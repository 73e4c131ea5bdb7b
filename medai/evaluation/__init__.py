"""Evaluation: metrics, subgroups, and ``medai evaluate`` with its self-contained report.

:mod:`~medai.evaluation.metrics` (discrimination and operating points),
:mod:`~medai.evaluation.intervals` (bootstrap and Wilson intervals),
:mod:`~medai.evaluation.reliability` (calibration error and Brier score),
:mod:`~medai.evaluation.subgroups`, :mod:`~medai.evaluation.evaluate` (all of
them for one set of predictions), :mod:`~medai.evaluation.run` (the command) and
:mod:`~medai.evaluation.report` (HTML). Sits above training: it loads checkpoints.
"""
