"""Training (torch + MONAI): network, training data, the training loop, ONNX export, manifests.

:mod:`~medai.training.network` (the 3D CNN and its checkpoints),
:mod:`~medai.training.manifest` (data manifests and patient-level splits),
:mod:`~medai.training.data` (phantoms or manifest cases through the shared
preprocessing, cached by :mod:`~medai.training.cache`),
:mod:`~medai.training.config` and :mod:`~medai.training.loop` (``medai train``,
CUDA/AMP, torchrun DDP), :mod:`~medai.training.export` (checkpoint -> ONNX with
a parity check). May use the serving side and the phantom world; nothing on the
serving side imports it.
"""
