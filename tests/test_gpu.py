"""What needs an NVIDIA GPU: AMP training on CUDA and the shipped model served by onnxruntime's CUDA provider.

Marked ``gpu``, so ``make test`` (no GPU in CI) deselects them. On a GPU machine with torch for CUDA and
``onnxruntime-gpu``: ``pytest -m gpu tests/test_gpu.py`` (``scripts/gpu_check.sh`` runs them).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _cuda_torch() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")


def _cuda_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no CUDA provider (have {ort.get_available_providers()}); install onnxruntime-gpu")


def test_training_on_cuda_with_amp_learns_and_saves_a_cpu_loadable_checkpoint(tmp_path):
    _cuda_torch()
    import torch

    from medai.training.loop import train
    from medai.training.network import load_checkpoint
    from tests.training.test_loop import tiny_config, toy_data  # the CPU tests' own setup

    cfg = tiny_config(tmp_path, epochs=6, augment=False, device="cuda")
    assert cfg.amp, "the CUDA run must exercise mixed precision"
    result = train(cfg, data=toy_data())
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.metrics["val_auc"] > 0.9
    assert next(result.model.parameters()).device.type == "cuda"
    model, _ = load_checkpoint(tmp_path / "model.pt", device=torch.device("cpu"))
    assert next(model.parameters()).device.type == "cpu"


def test_classifier_picks_cuda_and_agrees_with_the_cpu(small_phantom):
    _cuda_onnxruntime()
    from medai.inference.classifier import Classifier

    gpu = Classifier.load()
    assert gpu.providers[0] == "CUDAExecutionProvider", gpu.providers
    cpu = Classifier.load(providers=["CPUExecutionProvider"])
    for label, severity, seed in (("normal", 0.0, 11), ("covid19", 0.5, 12), ("other_pneumonia", 0.6, 13)):
        volume = small_phantom(label, severity, seed).volume
        on_gpu, on_cpu = gpu.predict(volume), cpu.predict(volume)
        assert on_gpu.label == on_cpu.label
        for name, p in on_cpu.probabilities.items():
            assert on_gpu.probabilities[name] == pytest.approx(p, abs=0.01), (label, name)
        a, b = on_gpu.saliency.map.ravel(), on_cpu.saliency.map.ravel()
        assert float(np.corrcoef(a, b)[0, 1]) > 0.99, label
        assert on_gpu.lesion_percent == pytest.approx(on_cpu.lesion_percent, abs=0.05)
