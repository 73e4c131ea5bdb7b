"""The phantom world: synthetic chest CT with exact ground truth, for tests, training, demos and benchmarks.

:mod:`~medai.phantoms.anatomy` (the patient), :mod:`~medai.phantoms.render`
(voxels), :mod:`~medai.phantoms.pathology` (COVID-19 and other pneumonia),
:mod:`~medai.phantoms.synthetic` (acquisition and the whole phantom),
:mod:`~medai.phantoms.ctwriter` and :mod:`~medai.phantoms.files` (DICOM and
NIfTI on disk, ``medai synth``). Uses only the serving side's nouns.
"""
