"""Checkpoint -> ONNX, with the class activation map in the graph and a parity check.

The exported graph takes ``input`` ``(batch, 1, D, H, W)`` float32 (the output
of :func:`medai.preprocess.to_model_input`, batch dimension dynamic) and
returns

* ``logits`` ``(batch, n_classes)`` before temperature scaling, and
* ``cam`` ``(batch, n_classes, d, h, w)``: the class activation map on the last
  feature grid, computed in the graph as the linear head applied to every
  feature voxel (``logits == cam.mean((2, 3, 4))``, see :mod:`medai.training.network`).

Everything serving needs rides in the file's metadata (key ``medai``, JSON):
class names, preprocessing parameters, temperature, decision rule, model spec,
version, training-data description and the checkpoint's sha256. Serving
(:mod:`medai.inference.classifier`) reads it with onnxruntime alone; this module is the
training side and imports torch.

Parity: after writing, onnxruntime and torch run the same random and phantom
inputs; the largest absolute logit difference must be at most
``max_logit_diff`` and the CAM correlation at least ``min_cam_corr``, else
:class:`~medai.errors.ModelError` and no file is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medai
from medai.errors import ModelError
from medai.inference.classifier import METADATA_KEY, ONNX_FORMAT
from medai.labels import INTENDED_USE
from medai.modelcard import file_sha256
from medai.training.network import Classifier3D, load_checkpoint

__all__ = ["METADATA_KEY", "ONNX_FORMAT", "ExportReport", "export_onnx", "parity"]

log = logging.getLogger(__name__)

OPSET = 18  # the torch.export-based exporter's native opset (>= 17 as the issue asks)


class _WithCam(nn.Module):
    """Wraps :class:`Classifier3D` so that ``forward`` returns ``(logits, cam)`` for tracing."""

    def __init__(self, model: Classifier3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_cam(x)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime matched torch."""

    path: Path
    sha256: str
    checkpoint_sha256: str
    max_logit_diff: float
    min_cam_corr: float
    n_parity_inputs: int
    seconds: float


def _metadata(ckpt: Mapping[str, Any], checkpoint_sha256: str, *, model_name: str) -> dict[str, Any]:
    data = ckpt.get("data", {})
    description = data if isinstance(data, str) else json.dumps(data, sort_keys=True)
    return {
        "format": ONNX_FORMAT,
        "name": model_name,
        "medai_version": medai.__version__,
        "intended_use": INTENDED_USE,
        "class_names": list(ckpt["class_names"]),
        "temperature": float(ckpt.get("temperature", 1.0)),
        "decision_rule": ckpt.get("decision_rule"),
        "decision_layer": ckpt.get("decision_layer"),
        "preprocess": ckpt["preprocess"],
        "model_spec": ckpt["model_spec"],
        "training_data": description,
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_epoch": ckpt.get("best_epoch", ckpt.get("epoch")),
        "code": ckpt.get("code", {}),
        "metrics": ckpt.get("metrics", {}),
        "heldout": ckpt.get("heldout"),
    }


def _parity_inputs(ckpt: Mapping[str, Any], *, n_random: int, n_phantoms: int, seed: int) -> np.ndarray:
    """Random inputs in the model's value range plus preprocessed phantoms of each class."""
    from medai.inference.network_input import network_input
    from medai.labels import CLASS_NAMES
    from medai.phantoms.synthetic import generate, sample_spec
    from medai.preprocess import PreprocessParams

    params = PreprocessParams.from_dict(ckpt["preprocess"])
    rng = np.random.default_rng(seed)
    arrays = [rng.random((1, *params.grid_shape), dtype=np.float32) for _ in range(n_random)]
    for i in range(n_phantoms):
        spec = sample_spec(rng, label=CLASS_NAMES[i % len(CLASS_NAMES)], split="heldout", matrix=160)
        arrays.append(network_input(generate(spec, fast=True).volume, params)[0].array)  # lung-restricted if so trained
    return np.stack(arrays)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64) - a.mean()
    b = b.ravel().astype(np.float64) - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return 1.0 if denom == 0.0 else float((a * b).sum() / denom)


def parity(model: Classifier3D, onnx_path: str | Path, inputs: np.ndarray) -> tuple[float, float]:
    """Largest |logit difference| and smallest per-map CAM correlation, onnxruntime vs torch.

    Args:
        model: the torch model in eval mode.
        onnx_path: its ONNX export.
        inputs: float32 ``(N, 1, D, H, W)``; run with batch sizes 1 and N (dynamic batch).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref_logits, ref_cam = (t.numpy() for t in model.forward_with_cam(torch.from_numpy(inputs)))
    logits, cam = session.run(["logits", "cam"], {"input": inputs})
    single = session.run(["logits"], {"input": inputs[:1]})[0]
    diff = max(float(np.abs(logits - ref_logits).max()), float(np.abs(single - ref_logits[:1]).max()))
    corr = min(_corr(cam[i, c], ref_cam[i, c]) for i in range(len(inputs)) for c in range(cam.shape[1]))
    return diff, corr


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    model_name: str | None = None,
    max_logit_diff: float = 1e-4,
    min_cam_corr: float = 0.999,
    n_random: int = 2,
    n_phantoms: int = 3,
    seed: int = 0,
) -> ExportReport:
    """Export a medai checkpoint to ONNX (opset 18, dynamic batch) and check parity.

    Args:
        checkpoint: a ``.pt`` written by ``medai train``.
        out: the ``.onnx`` file to write (replaced atomically, only after parity passes).
        model_name: name stored in the metadata; default the file stem of ``out``.
        max_logit_diff: largest allowed |logit difference| onnxruntime vs torch.
        min_cam_corr: smallest allowed Pearson correlation of each CAM.
        n_random: random inputs in the parity check.
        n_phantoms: synthetic phantoms (cycling through the classes) in the parity check.
        seed: seed of those inputs.

    Raises:
        ModelError: unreadable checkpoint, export failure, or parity out of bounds.

    Example:
        >>> export_onnx("models/medai-ref.pt", "/tmp/medai.onnx").max_logit_diff < 1e-4  # doctest: +SKIP
        True
    """
    start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    model, ckpt = load_checkpoint(checkpoint)
    ckpt_sha = file_sha256(checkpoint)
    meta = _metadata(ckpt, ckpt_sha, model_name=model_name or out.stem)
    spec_shape = tuple(ckpt["model_spec"]["input_shape"])
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_graph(model, tmp, spec_shape, meta)
        inputs = _parity_inputs(ckpt, n_random=n_random, n_phantoms=n_phantoms, seed=seed)
        diff, corr = parity(model, tmp, inputs)
        if diff > max_logit_diff or corr < min_cam_corr:
            raise ModelError(
                f"ONNX export of {str(checkpoint)!r} fails parity with torch: max |logit diff| {diff:.3g} "
                f"(must be <= {max_logit_diff:g}), min CAM correlation {corr:.6f} (must be >= {min_cam_corr:g})"
            )
        tmp.chmod(0o644)  # mkstemp makes 0600; a model is meant to be read by services
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    report = ExportReport(
        path=out,
        sha256=file_sha256(out),
        checkpoint_sha256=ckpt_sha,
        max_logit_diff=diff,
        min_cam_corr=corr,
        n_parity_inputs=len(inputs),
        seconds=time.perf_counter() - start,
    )
    log.info("exported %s -> %s (max logit diff %.2e, min CAM corr %.6f)", checkpoint, out, diff, corr)
    return report


def _write_graph(model: Classifier3D, path: Path, shape: tuple[int, ...], meta: Mapping[str, Any]) -> None:
    import onnx

    example = torch.zeros(1, 1, *shape)
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        torch.onnx.export(
            _WithCam(model).eval(),
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits", "cam"],
            dynamic_shapes={"x": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        proto = onnx.load(str(path))
        proto.producer_name = "medai"
        proto.producer_version = medai.__version__
        proto.doc_string = f"medai chest-CT triage classifier. {INTENDED_USE}"
        del proto.metadata_props[:]
        for key, value in {METADATA_KEY: json.dumps(meta, sort_keys=True)}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    except ModelError:
        raise
    except Exception as exc:  # torch/onnx raise many types; the user needs one clear error
        raise ModelError(f"ONNX export to {str(path)!r} failed: {exc}") from exc
