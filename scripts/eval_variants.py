"""Reduced-precision variants of the shipped classifier (issue 4): FP16 and INT8, against FP32.

Builds, from ``models/medai-ref.onnx``:

* **fp16**: weights and activations in float16, inputs and outputs kept float32
  (``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``);
* **int8**: static QDQ quantisation, per-channel int8 weights, uint8 activations calibrated
  (min-max) on train-split phantoms (``onnxruntime.quantization.quantize_static``).

Each variant is measured against the FP32 model in the same run on held-out phantoms
(``sample_spec(split="heldout")``, other seeds): the export parity rule (max |logit
difference| <= 1e-4 and CAM correlation >= 0.999), covid19-vs-rest and macro AUC, and the
onnxruntime CPU latency (batch 1, median of 20). A variant would ship only if it kept the
parity rule and the accuracy targets. Nothing is written to ``models/``; the variants go to
``--out-dir``.

Usage::

    python scripts/eval_variants.py                 # 60 held-out, 24 calibration phantoms
    python scripts/eval_variants.py --heldout 150 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from medai.evaluation.metrics import macro_auc, roc_auc
from medai.inference.calibration import softmax
from medai.inference.classifier import Classifier
from medai.labels import CLASS_NAMES
from medai.phantoms import synthetic
from medai.training.data import synthetic_inputs

# The export parity rule (medai.training.export.export_onnx's defaults; not imported: that module needs torch).
PARITY_MAX_LOGIT_DIFF = 1e-4
PARITY_MIN_CAM_CORR = 0.999


def phantom_inputs(n: int, *, seed: int, split: str, clf: Classifier) -> tuple[np.ndarray, np.ndarray]:
    """``n`` balanced phantoms of ``split``, preprocessed for ``clf``: inputs ``(n, 1, D, H, W)`` and labels."""
    rng = np.random.default_rng(seed)
    specs = [synthetic.sample_spec(rng, label=CLASS_NAMES[i % 3], split=split) for i in range(n)]
    arrays = synthetic_inputs(specs, params=clf.preprocess, cache_dir="", workers=2)
    labels = np.array([clf.class_names.index(s.label) for s in specs], dtype=np.int64)
    return np.stack(arrays), labels


def make_fp16(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def make_int8(src: Path, dst: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{"input": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    prepared = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(dst),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    prepared.unlink()
    return dst


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    name = session.get_inputs()[0].name
    logits, cams = [], []
    for i in range(len(inputs)):
        out = session.run(None, {name: inputs[i : i + 1]})
        logits.append(out[0][0])
        cams.append(out[1][0])
    return np.stack(logits).astype(np.float64), np.stack(cams).astype(np.float64)


def _latency(session: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest per-case Pearson correlation between two stacks of maps."""
    out = []
    for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True):
        x, y = x - x.mean(), y - y.mean()
        out.append(float((x * y).sum() / max(np.sqrt((x * x).sum() * (y * y).sum()), 1e-12)))
    return min(out)


def evaluate(
    clf: Classifier, paths: dict[str, Path], inputs: np.ndarray, labels: np.ndarray, *, threads: int, runs: int
) -> dict[str, dict[str, Any]]:
    """Per variant: parity against FP32, AUCs and latency; the FP32 row is the reference."""
    k = clf.class_names.index("covid19")
    results: dict[str, dict[str, Any]] = {}
    ref_logits = ref_cams = None
    for name, path in paths.items():
        session = _session(path, threads)
        logits, cams = _run(session, inputs)
        probs = softmax(logits, clf.temperature)
        row: dict[str, Any] = {
            "file_kb": round(path.stat().st_size / 1024),
            "covid19_auc": roc_auc(labels == k, probs[:, k]),
            "macro_auc": macro_auc(labels, probs),
            "accuracy": float((probs.argmax(1) == labels).mean()),
            "latency_ms": 1000 * _latency(session, inputs[:1], runs),
        }
        if ref_logits is None:
            ref_logits, ref_cams = logits, cams
        else:
            assert ref_cams is not None
            row["max_logit_diff"] = float(np.abs(logits - ref_logits).max())
            row["min_cam_corr"] = _corr(cams, ref_cams)
            row["label_agreement"] = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
            row["parity"] = (
                row["max_logit_diff"] <= PARITY_MAX_LOGIT_DIFF and row["min_cam_corr"] >= PARITY_MIN_CAM_CORR
            )
        results[name] = row
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="FP32 ONNX model (default: the shipped one)")
    parser.add_argument("--heldout", type=int, default=60, help="held-out phantoms (default: %(default)s)")
    parser.add_argument("--calibration", type=int, default=24, help="INT8 calibration phantoms (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant (default: %(default)s)")
    parser.add_argument("--out-dir", default=".bench/variants", help="where the variants go (default: %(default)s)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    clf = Classifier.load(args.model)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    calibration, _ = phantom_inputs(args.calibration, seed=880_000, split="train", clf=clf)
    inputs, labels = phantom_inputs(args.heldout, seed=990_000, split="heldout", clf=clf)
    paths = {
        "fp32": clf.path,
        "fp16": make_fp16(clf.path, out / "medai-ref.fp16.onnx"),
        "int8": make_int8(clf.path, out / "medai-ref.int8.onnx", calibration),
    }
    results = evaluate(clf, paths, inputs, labels, threads=args.threads, runs=args.runs)
    print(f"model {clf.model_id}; {args.heldout} held-out phantoms; {args.threads} onnxruntime thread(s)")
    print(
        f"{'variant':8s} {'KB':>6s} {'covid AUC':>9s} {'macro AUC':>9s} {'acc':>6s} {'ms':>7s} "
        f"{'max dlogit':>10s} {'min CAM r':>9s} {'agree':>6s} parity"
    )
    for name, r in results.items():
        extra = (
            f"{r['max_logit_diff']:>10.2e} {r['min_cam_corr']:>9.4f} {r['label_agreement']:>6.3f} "
            f"{'kept' if r['parity'] else 'FAILS'}"
            if "parity" in r
            else f"{'(reference)':>10s}"
        )
        print(
            f"{name:8s} {r['file_kb']:>6d} {r['covid19_auc']:>9.3f} {r['macro_auc']:>9.3f} {r['accuracy']:>6.3f} "
            f"{r['latency_ms']:>7.2f} {extra}"
        )
    print(f"time {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
