"""The serving engine: :class:`Classifier` runs the exported ONNX model with onnxruntime.

No torch here (a test checks ``sys.modules``): ingestion, preprocessing,
onnxruntime, calibration, saliency and quantification are numpy/scipy. One
call turns a CT :class:`~medai.volume.Volume` into a :class:`Prediction`:

1. lung / opacity quantification and the severity grade (:mod:`medai.quantify.measure`);
2. preprocessing with the parameters stored in the model (:mod:`medai.preprocess`), restricted to the
   lungs the quantification found when the model was trained that way (:mod:`medai.inference.network_input`);
3. the ONNX graph -> logits and the class activation map (2 and 3 run on a second thread as soon as the
   quantification has its lungs, while it measures the opacities: :attr:`Classifier.network_thread`);
4. probabilities from the stored decision layer (logits and measured findings,
   :mod:`medai.inference.decision`) or, for older models, temperature-scaled logits; the stored decision
   rule -> label and ``indeterminate`` (:mod:`medai.inference.calibration`), also set when the QC flags
   say the lungs were not measured reliably;
5. the saliency map, restricted to the lungs (:mod:`medai.inference.saliency`).

The shipped model is ``models/medai-ref.onnx``; :meth:`Classifier.load`
checks its sha256 against the model card ``models/medai-ref.json`` beside it.
Research use only; not for diagnosis.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medai.errors import ModelError
from medai.inference.allocator import keep_freed_memory
from medai.inference.calibration import DecisionRule, softmax
from medai.inference.decision import LOGITS, DecisionLayer, decision_features
from medai.inference.network_input import network_input, network_input_with_lungs
from medai.inference.saliency import Saliency, lungs_on_model_grid, make_saliency
from medai.labels import INTENDED_USE, LESION_NOISE_FLOOR_PERCENT, Severity
from medai.modelcard import verify_model_file
from medai.preprocess import ModelInput, PreprocessParams
from medai.quantify.grid import QuantGrid
from medai.quantify.measure import Quantification, quantify
from medai.volume import Volume

__all__ = [
    "DEFAULT_MODEL",
    "METADATA_KEY",
    "MODEL_ENV",
    "ONNX_FORMAT",
    "QC_FLAG_MEANINGS",
    "Classifier",
    "Prediction",
    "QCFlag",
    "default_providers",
    "explain_qc_flags",
    "read_metadata",
    "served_decision",
    "served_severity",
]

log = logging.getLogger(__name__)

MODEL_ENV = "MEDAI_MODEL"
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "medai-ref.onnx"
METADATA_KEY = "medai"  # the ONNX metadata_props key medai.training.export writes and serving reads
ONNX_FORMAT = "medai-onnx-v1"
# TensorRT only when asked for (``providers=``): onnxruntime-gpu lists it wherever it is installed, and where
# TensorRT's own libraries are missing the session fails over to CUDA after printing the error to stdout (which
# may carry a report); where they are present it builds an engine per model on the first load.
_PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")


class QCFlag(enum.StrEnum):
    """Warnings about a scored series: the prediction exists but deserves a second look."""

    NO_LUNGS = "no_lungs"  # almost no aerated lung found: not a chest CT, or a wrong window/rescale
    SMALL_LUNGS = "small_lungs"  # under 1.5 l: partial coverage, a child, or collapse
    LUNG_CUT_OFF = "lung_cut_off"  # lung reaches the first or last slice: the scan may not cover the chest
    THICK_SLICES = "thick_slices"  # slices thicker than 5 mm: small lesions are averaged away
    # The measured lungs are implausible: they miss most of the aerated lung field (collapse of the lung mask,
    # a field of view or body unlike the training data) or their volume is outside what a chest holds. The
    # label is then indeterminate: the numbers need a person's look.
    LUNG_MASK_INCOMPLETE = "lung_mask_incomplete"
    LUNG_VOLUME_IMPLAUSIBLE = "lung_volume_implausible"
    # One lung measures under half of the other (MIN_LUNG_SIDE_RATIO): a lung the mask left out because it is not
    # aerated (whited out by consolidation, collapsed, behind a large effusion) or one removed by surgery. The
    # volumes and the lesion share are then not the patient's, and the label is indeterminate.
    LUNG_SIDES_UNEQUAL = "lung_sides_unequal"
    # The lungs were read as an expiration scan (hardly any clearly aerated lung: a breath not held, or held out):
    # normal dependent density then reads as opacity and faint ground glass hides in the dense parenchyma (the
    # independent phantom family's expiration normals read up to 3 % of opacity, a COVID-19 of 24 % read 2 %).
    # The measured numbers are unreliable, so the label is indeterminate.
    EXPIRATION = "expiration"


#: What each QC flag means for a reader, in one line (the CLI, the viewer and the case report show it).
QC_FLAG_MEANINGS: Mapping[str, str] = {
    QCFlag.NO_LUNGS: "almost no aerated lung found: not a chest CT, or a wrong window or rescale",
    QCFlag.SMALL_LUNGS: "lungs under 1.5 l: partial coverage, a child, or collapse",
    QCFlag.LUNG_CUT_OFF: "the scan stops inside the lungs: part of them is not measured",
    QCFlag.THICK_SLICES: "slices thicker than 5 mm: small lesions are averaged away",
    QCFlag.LUNG_MASK_INCOMPLETE: "the lung mask misses most of the air-filled lung field: the numbers are not the "
    "patient's",
    QCFlag.LUNG_VOLUME_IMPLAUSIBLE: "over 10 l of lung measured: the mask took in other things",
    QCFlag.LUNG_SIDES_UNEQUAL: "one lung measures under half of the other: a lung whited out, collapsed or removed "
    "may be left out of the numbers",
    QCFlag.EXPIRATION: "an expiration scan: normal dependent density reads as opacity and faint ground glass "
    "hides, so the opacity measured is unreliable both ways",
}


def explain_qc_flags(flags: Sequence[str]) -> tuple[str, ...]:
    """Each flag with its meaning (:data:`QC_FLAG_MEANINGS`), ``"flag: meaning"``; an unknown flag as it is.

    Example:
        >>> explain_qc_flags(["thick_slices", "from_a_newer_medai"])
        ('thick_slices: slices thicker than 5 mm: small lesions are averaged away', 'from_a_newer_medai')
    """
    return tuple(f"{f}: {QC_FLAG_MEANINGS[f]}" if f in QC_FLAG_MEANINGS else str(f) for f in flags)


#: QC flags that make a prediction indeterminate whatever its probabilities.
UNRELIABLE_FLAGS = frozenset(
    {
        QCFlag.NO_LUNGS,
        QCFlag.LUNG_MASK_INCOMPLETE,
        QCFlag.LUNG_VOLUME_IMPLAUSIBLE,
        QCFlag.LUNG_SIDES_UNEQUAL,
        QCFlag.EXPIRATION,
    }
)


def served_decision(
    rule: DecisionRule, probabilities: Sequence[float] | np.ndarray, lesion_percent: float, flags: Sequence[str]
) -> tuple[str, bool]:
    """The served label and ``indeterminate`` flag: the decision rule's, then what the measurements say.

    1. Unreliable measurements (:data:`UNRELIABLE_FLAGS`: lungs not the patient's, or read as an expiration scan) make
       the rule's label indeterminate.
    2. Otherwise a lung whose measured opacity is under the CT-0 line
       (:data:`~medai.labels.LESION_NOISE_FLOOR_PERCENT`, the method's detection limit) is not called sick: the
       label is ``normal``, and indeterminate where the rule would have called a disease (a reader still looks).
       The probabilities are not changed, so every AUC and calibration figure is the rule's alone.

    Example:
        >>> rule = DecisionRule()
        >>> served_decision(rule, [0.3, 0.6, 0.1], 0.8, ())  # covid19 by the rule, but under the line
        ('normal', True)
        >>> served_decision(rule, [0.3, 0.6, 0.1], 2.5, ())
        ('covid19', False)
        >>> served_decision(rule, [0.3, 0.6, 0.1], 0.8, ("lung_sides_unequal",))  # a lung left out: not gated
        ('covid19', True)
    """
    label, indeterminate = rule.decide(probabilities)
    if any(f in UNRELIABLE_FLAGS for f in flags):
        return label, True
    normal = "normal"
    if label != normal and normal in rule.class_names and lesion_percent < LESION_NOISE_FLOOR_PERCENT:
        return normal, True
    return label, bool(indeterminate)


def served_severity(label: str, indeterminate: bool, measured: Severity) -> Severity:
    """The served grade: CT-0 for a determinate ``normal`` decision, else the ``measured`` grade.

    MosMedData's CT-0 means "no signs of pneumonia". A determinate ``normal`` decision says exactly that, so the
    few percent of "opacity" that partial volume, vessels and dependent density leave in a clear lung are reported
    as measured but not graded as disease. An indeterminate label keeps the measured grade.

    Example:
        >>> served_severity("normal", False, Severity.CT_1).value, served_severity("normal", True, Severity.CT_1).value
        ('CT-0', 'CT-1')
    """
    return Severity.CT_0 if label == "normal" and not indeterminate else measured


@dataclass(frozen=True, eq=False)
class Prediction:
    """Everything medai says about one CT series. Research use only; not a diagnosis.

    Attributes:
        probabilities: calibrated probability per class name (sums to 1).
        label: the class the decision rule picks.
        indeterminate: the rule's abstention flag (near the threshold or low confidence).
        saliency: where the model saw evidence for ``saliency.class_name`` (the label,
            or the rule's positive class when the label is ``normal``), lungs only.
        quantification: lung and opacity measurements (masks on a coarse grid).
        qc_flags: warnings (:class:`QCFlag` values).
        model_id: ``name@sha256[:12]`` of the ONNX model.
        series_uid, study_uid: of the scored volume.
        timings: seconds per stage (``preprocess``, ``inference``, ``quantify``, ``decision``, ``saliency``,
            ``total``; ``load`` for :meth:`Classifier.predict_path`).
        model_sha256: the full sha256 of the ONNX model file (result objects such as the DICOM SR cite it).
        evidence: what the probabilities were computed from: ``network`` (the logits), ``findings`` (the
            measured opacities alone: the saliency map is then the network's view, not the reason) or
            ``network+findings``.
    """

    probabilities: Mapping[str, float]
    label: str
    indeterminate: bool
    saliency: Saliency
    quantification: Quantification
    qc_flags: tuple[str, ...]
    model_id: str
    series_uid: str
    study_uid: str
    logits: tuple[float, ...]
    timings: dict[str, float] = field(default_factory=dict)
    model_sha256: str = ""
    evidence: str = "network"

    @property
    def lung_mask(self) -> np.ndarray:
        """uint8 on ``quantification.grid``: 0 none, 1 right lung, 2 left lung."""
        return self.quantification.lung_mask

    @property
    def lesion_mask(self) -> np.ndarray:
        """uint8 on ``quantification.grid``: 0 none, 1 ground glass, 2 consolidation."""
        return self.quantification.lesion_mask

    @property
    def lesion_percent(self) -> float:
        """Opacity volume as a percentage of lung volume, both lungs."""
        return self.quantification.lesion_percent

    @property
    def severity(self) -> Severity:
        """MosMedData grade CT-0..CT-4 (:func:`served_severity`): CT-0 when the decision is a determinate ``normal``,
        else the grade of :attr:`lesion_percent`."""
        return served_severity(self.label, self.indeterminate, self.quantification.severity)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "model_id": self.model_id,
            "model_sha256": self.model_sha256,
            "label": self.label,
            "indeterminate": self.indeterminate,
            "probabilities": dict(self.probabilities),
            "evidence": self.evidence,  # what decided: network, findings or network+findings
            "saliency_class": self.saliency.class_name,
            "quantification": self.quantification.to_dict(),
            "qc_flags": list(self.qc_flags),
            "timings": dict(self.timings),
            "intended_use": INTENDED_USE,
        }


def default_providers(available: Sequence[str]) -> list[str]:
    """The execution providers to ask for, best first, among those onnxruntime has: CUDA, then the CPU.

    Example:
        >>> default_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
        ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    return [p for p in _PREFERRED if p in available] or list(available)


_GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})


@functools.cache
def _preload_gpu_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries that ``pip install onnxruntime-gpu[cuda,cudnn]`` put in site-packages.

    onnxruntime's CUDA provider finds them only on the loader's path or, when torch was imported first, through
    torch; a torch-free server has neither, and onnxruntime would fall back to the CPU with one line in its log.
    ``onnxruntime.preload_dlls`` (onnxruntime-gpu >= 1.21) loads them from the ``nvidia`` packages once per
    process. It prints what it cannot load; that goes to this module's log, never to stdout (which may carry a
    report). Without torch imported only: torch has already loaded its own, compatible copies.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or "torch" in sys.modules:
        return
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            preload()
    except (OSError, RuntimeError) as exc:
        log.warning("onnxruntime could not preload the CUDA libraries (%s); it may run on the CPU", exc)
    lines = [line.strip() for line in said.getvalue().splitlines() if line.strip()]
    if lines:
        log.warning("onnxruntime.preload_dlls: %s", " | ".join(lines))


def read_metadata(session: Any, path: str | Path) -> dict[str, Any]:
    """The ``medai`` metadata of an onnxruntime session's model, checked.

    Raises:
        ModelError: the model carries no (or malformed) medai metadata.
    """
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ModelError(f"{str(path)!r} must be a medai ONNX export with '{METADATA_KEY}' metadata, but it has none")
    try:
        meta = json.loads(props[METADATA_KEY])
    except ValueError as exc:
        raise ModelError(f"{str(path)!r} has unreadable medai metadata: {exc}") from exc
    if meta.get("format") != ONNX_FORMAT:
        raise ModelError(f"{str(path)!r} metadata format must be {ONNX_FORMAT!r}, not {meta.get('format')!r}")
    missing = [k for k in ("class_names", "temperature", "decision_rule", "preprocess") if k not in meta]
    if missing:
        raise ModelError(f"{str(path)!r} metadata lacks {missing}")
    return dict(meta)


@dataclass(frozen=True, eq=False)
class _NetworkPass:
    """A batch's network part: its inputs, the ONNX outputs, and how long each step took (seconds)."""

    inputs: list[ModelInput]
    logits: np.ndarray
    cams: np.ndarray
    preprocess_s: float
    inference_s: float


class _Beside(threading.Thread):
    """``fn(*args)`` on its own thread; :meth:`result` joins it and returns its value or raises its error."""

    def __init__(self, fn: Callable[..., _NetworkPass], args: tuple[Any, ...]) -> None:
        super().__init__(name="medai-network", daemon=True)
        self._fn, self._args = fn, args
        self._value: _NetworkPass | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> _NetworkPass:
        if self.ident is not None:
            self.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class Classifier:
    """A loaded medai model. Create it with :meth:`load`; reuse it for many series.

    Example:
        >>> clf = Classifier.load()  # doctest: +SKIP
        >>> pred = clf.predict(volume)  # doctest: +SKIP
        >>> pred.label, pred.probabilities["covid19"], pred.severity  # doctest: +SKIP
        ('covid19', 0.93, <Severity.CT_2: 'CT-2'>)
    """

    def __init__(
        self, session: Any, meta: Mapping[str, Any], path: Path, sha256: str, *, network_thread: bool = True
    ) -> None:
        self._session = session
        self.network_thread = network_thread
        self.meta = dict(meta)
        self.path = path
        self.sha256 = sha256
        self.class_names: tuple[str, ...] = tuple(meta["class_names"])
        self.temperature = float(meta["temperature"])
        self.rule = DecisionRule.from_dict(meta["decision_rule"])
        self.preprocess = PreprocessParams.from_dict(meta["preprocess"])
        layer = meta.get("decision_layer")
        self.decision_layer = DecisionLayer.from_dict(layer) if isinstance(layer, Mapping) else None
        dl = self.decision_layer
        self.evidence = (
            "network" if dl is None or not dl.needs_findings else "network+findings" if dl.reads_logits else "findings"
        )
        self.model_id = f"{meta.get('name', path.stem)}@{sha256[:12]}"
        self.providers: list[str] = list(session.get_providers())

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        keep_memory: bool = True,
        network_thread: bool | None = None,
    ) -> Classifier:
        """Load an exported model.

        Args:
            path: an ``.onnx`` file from ``medai export``. Default: ``$MEDAI_MODEL``, else the
                shipped ``models/medai-ref.onnx``, whose sha256 must match its model card.
                A given file is checked against a card beside it (same stem, ``.json``) when one exists.
            providers: onnxruntime execution providers, best first. Default: CUDA (with onnxruntime-gpu and a
                GPU), then CPU; TensorRT only when named here. Unavailable ones are skipped with a warning.
            threads: onnxruntime intra-op threads (default: onnxruntime's choice, one per core); when
                given, the quantification head's session (:func:`medai.quantify.head.set_threads`) and the distance
                transform (:func:`medai.preprocess.set_threads`) follow.
            keep_memory: keep freed memory in this process for the next study
                (:func:`medai.inference.allocator.keep_freed_memory`: no page faults on reused arrays; the
                process stays near its peak memory between studies instead of shrinking).
            network_thread: build the network input and run the network on a second, short-lived thread while
                the opacities are measured (:meth:`predict_many`; the same results, about 0.06 s sooner per
                300-slice study on 2 cores, docs/benchmarks.md). Default: on, unless ``threads`` is 1 (a batch
                worker that keeps to one core).

        Raises:
            ModelError: missing or unreadable file, hash mismatch, not a medai export, no usable provider.
        """
        import onnxruntime as ort

        if keep_memory:
            keep_freed_memory()
        shipped = path is None and not os.environ.get(MODEL_ENV)
        resolved = Path(path if path is not None else os.environ.get(MODEL_ENV) or DEFAULT_MODEL)
        if not resolved.is_file():
            raise ModelError(f"model must be an existing .onnx file, not {str(resolved)!r}")
        digest = verify_model_file(resolved, card_required=shipped)
        available = ort.get_available_providers()
        if providers is None:
            wanted = default_providers(available)
        else:
            wanted = [p for p in providers if p in available]
            for p in providers:
                if p not in available:
                    log.warning("execution provider %s is not available here (have %s); skipping it", p, available)
            if not wanted:
                raise ModelError(f"none of the providers {list(providers)} is available; onnxruntime has {available}")
        if any(p in _GPU_PROVIDERS for p in wanted):
            _preload_gpu_libraries(ort)
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, not {threads}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            from medai.preprocess import set_threads as set_distance_threads
            from medai.quantify.head import set_threads

            set_threads(threads)
            set_distance_threads(threads)
        try:
            session = ort.InferenceSession(str(resolved), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"cannot load ONNX model {str(resolved)!r}: {exc}") from exc
        meta = read_metadata(session, resolved)
        if network_thread is None:
            network_thread = threads != 1
        clf = cls(session, meta, resolved, digest, network_thread=network_thread)
        log.info("loaded %s from %s with providers %s", clf.model_id, resolved, clf.providers)
        return clf

    @property
    def scoring_id(self) -> str:
        """Everything that makes a prediction's numbers: this model's id, the quantification head's and the
        version of the quantification's rules (:data:`medai.quantify.measure.QUANTIFY_VERSION`).

        ``medai score`` records it as ``model_id`` and resumes by it, so a new quantification head or new rules
        (with the same classifier) score the series again instead of reusing rows made by the old ones.

        Example:
            >>> Classifier.load().scoring_id  # doctest: +SKIP
            'medai-ref@0fa1c96e0e5f+medai-quant@2c97a683caa2+quantify/20'
        """
        from medai.quantify.head import shipped_quantnet
        from medai.quantify.measure import QUANTIFY_VERSION

        return f"{self.model_id}+{shipped_quantnet().model_id}+{QUANTIFY_VERSION.removeprefix('medai.')}"

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, cam = self._session.run(["logits", "cam"], {"input": batch})
        return np.asarray(logits, np.float32), np.asarray(cam, np.float32)

    @property
    def needs_quantification(self) -> bool:
        """Whether the network input or the decision layer reads the quantification."""
        return self.preprocess.lung_margin_mm > 0 or (
            self.decision_layer is not None and self.decision_layer.needs_findings
        )

    def _probabilities(self, logits: np.ndarray, quant: Quantification | None) -> np.ndarray:
        if self.decision_layer is None:
            return softmax(logits[None], self.temperature)[0]
        if quant is None and self.decision_layer.needs_findings:
            raise ValueError("this model's decision layer needs the quantification, not None")
        features = decision_features(logits, quant) if quant is not None else dict(zip(LOGITS, logits, strict=True))
        return self.decision_layer.probabilities(features)

    def probabilities(self, volumes: Sequence[Volume], *, batch_size: int = 4) -> np.ndarray:
        """Calibrated class probabilities ``(n, n_classes)`` only: no saliency (the quantification runs when
        the model's input or decision layer needs it).

        For evaluations and perturbation tests that need many forward passes.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        out = [np.zeros((0, len(self.class_names)), np.float32)]
        for start in range(0, len(volumes), batch_size):
            chunk = volumes[start : start + batch_size]
            quants = [quantify(v) if self.needs_quantification else None for v in chunk]
            inputs = [
                network_input(v, self.preprocess, quantification=q)[0] for v, q in zip(chunk, quants, strict=True)
            ]
            logits = self._run(np.stack([mi.array for mi in inputs]))[0]
            probs = [self._probabilities(lg, q) for lg, q in zip(logits, quants, strict=True)]
            out.append(np.stack(probs).astype(np.float32))
        return np.concatenate(out)

    def predict(self, volume: Volume) -> Prediction:
        """Score one CT volume: probabilities, label, saliency, quantification.

        Raises:
            InvalidSeriesError: the volume cannot be preprocessed (e.g. oblique beyond tolerance).
        """
        return self.predict_many([volume], batch_size=1)[0]

    def predict_many(self, volumes: Sequence[Volume], *, batch_size: int = 4) -> list[Prediction]:
        """Score several volumes, running the network on batches of ``batch_size``.

        The network's part of a batch (preprocessing, the ONNX run) needs only the lungs, so it runs on a second
        thread while the opacities of the batch's last volume are measured (with :attr:`network_thread`, the
        default unless the model was loaded with ``threads=1``); the result is the same either way. Stage
        timings of a batch's network part are shared equally among its cases; ``total`` is the wall time (less
        than the stages' sum where they overlapped).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        out: list[Prediction] = []
        for start in range(0, len(volumes), batch_size):
            out += self._predict_batch(volumes[start : start + batch_size])
        return out

    def _predict_batch(self, batch: Sequence[Volume]) -> list[Prediction]:
        t0 = time.perf_counter()
        lungs: list[tuple[np.ndarray, tuple[int, int, int]]] = []
        network: list[_Beside] = []

        def found(lung_mask: np.ndarray, grid: QuantGrid) -> None:
            lungs.append((lung_mask, grid.factors))
            if len(lungs) == len(batch):  # the batch's network part can start
                network.append(self._submit(self._network_pass, batch, list(lungs)))

        quants = [quantify(volume, on_lungs=found) for volume in batch]
        tq = time.perf_counter()
        if not network:
            raise RuntimeError("the quantification returned without reporting its lungs")
        net = network[0].result()
        n = len(batch)
        wall = (time.perf_counter() - t0) / n
        shared = {"quantify": (tq - t0) / n, "preprocess": net.preprocess_s / n, "inference": net.inference_s / n}
        return [
            self._finish(volume, mi, quant, logits, cam, dict(shared), wall_s=wall)
            for volume, mi, quant, logits, cam in zip(batch, net.inputs, quants, net.logits, net.cams, strict=True)
        ]

    def _submit(self, fn: Callable[..., _NetworkPass], *args: Any) -> _Beside:
        """Start ``fn`` on a thread of its own (in line without :attr:`network_thread`).

        A short-lived thread rather than a pool: a process whose only thread is the main one may fork to decode
        compressed pixels (:mod:`medai.ingest.pixels`), and an idle pool thread would rule that out.
        """
        beside = _Beside(fn, args)
        if not self.network_thread:
            beside.run()
        else:
            beside.start()
        return beside

    def _network_pass(
        self, chunk: Sequence[Volume], lungs: Sequence[tuple[np.ndarray, tuple[int, int, int]]]
    ) -> _NetworkPass:
        t0 = time.perf_counter()
        inputs = [
            network_input_with_lungs(v, self.preprocess, mask, factors)
            for v, (mask, factors) in zip(chunk, lungs, strict=True)
        ]
        t1 = time.perf_counter()
        logits, cams = self._run(np.stack([mi.array for mi in inputs]))
        return _NetworkPass(inputs, logits, cams, t1 - t0, time.perf_counter() - t1)

    def _finish(
        self,
        volume: Volume,
        mi: ModelInput,
        quant: Quantification,
        logits: np.ndarray,
        cam: np.ndarray,
        timings: dict[str, float],
        *,
        wall_s: float,
    ) -> Prediction:
        t0 = time.perf_counter()
        probs = self._probabilities(logits, quant)
        flags = _qc_flags(volume, quant, mi)
        label, indeterminate = served_decision(self.rule, probs, quant.lesion_percent, flags)
        t1 = time.perf_counter()
        timings.update(decision=t1 - t0)
        explained = label if label != "normal" else self.rule.positive_class
        k = self.class_names.index(explained)
        model_shape: tuple[int, int, int] = mi.array.shape[1:]  # type: ignore[assignment]
        lungs = lungs_on_model_grid(quant.lung_mask, quant.grid.factors, mi.index_affine, model_shape)
        saliency = make_saliency(
            cam, k, explained, lungs=lungs, index_affine=mi.index_affine, source_shape=volume.shape
        )
        t2 = time.perf_counter()
        timings.update(saliency=t2 - t1)
        timings["total"] = wall_s + (t2 - t0)
        return Prediction(
            probabilities={n: float(p) for n, p in zip(self.class_names, probs, strict=True)},
            label=label,
            indeterminate=bool(indeterminate),
            saliency=saliency,
            quantification=quant,
            qc_flags=flags,
            model_id=self.model_id,
            series_uid=volume.series_uid,
            study_uid=volume.study_uid,
            logits=tuple(float(x) for x in logits),
            timings=timings,
            model_sha256=self.sha256,
            evidence=self.evidence,
        )

    def predict_path(self, path: str | Path) -> Prediction:
        """Find, select, load and score the one series to score under ``path`` (folder, zip or file).

        Raises:
            NoSeriesError: no DICOM series under ``path``.
            InvalidSeriesError: every series was rejected (the reason of the first), or the load failed QC.
            MedaiError: ``path`` holds several studies (use ``medai score`` for those).
        """
        from medai.ingest.load import load_study

        t0 = time.perf_counter()
        _, volume = load_study(path)
        t1 = time.perf_counter()
        pred = self.predict(volume)
        pred.timings["load"] = t1 - t0
        pred.timings["total"] += t1 - t0
        return pred


# The measured lungs must hold at least this share of the aerated lung field the quick air mask finds.
MIN_AERATED_COVERAGE = 0.6
# The smaller lung must measure at least this share of the larger. In 244 development phantoms (both families,
# every class, burdens up to 75 %) it measured 0.62 or more; a whole lung consolidated and left out of the mask
# measured 0.33 (docs/ood.md).
MIN_LUNG_SIDE_RATIO = 0.5
# Adult and adolescent lungs at full inspiration hold about 2-8 l; beyond these the mask took in other things.
MAX_LUNG_VOLUME_ML = 10_000.0


def _qc_flags(volume: Volume, quant: Quantification, mi: ModelInput) -> tuple[str, ...]:
    flags: list[str] = []
    if quant.lung_volume_ml < 200.0:
        flags.append(QCFlag.NO_LUNGS)
    elif quant.lung_volume_ml < 1500.0:
        flags.append(QCFlag.SMALL_LUNGS)
    if mi.lung_volume_ml > 500.0 and quant.lung_volume_ml < MIN_AERATED_COVERAGE * mi.lung_volume_ml:
        flags.append(QCFlag.LUNG_MASK_INCOMPLETE)
    if quant.lung_volume_ml > MAX_LUNG_VOLUME_ML:
        flags.append(QCFlag.LUNG_VOLUME_IMPLAUSIBLE)
    sides = (quant.right_lung_volume_ml, quant.left_lung_volume_ml)
    if quant.lung_volume_ml >= 200.0 and min(sides) < MIN_LUNG_SIDE_RATIO * max(sides):
        flags.append(QCFlag.LUNG_SIDES_UNEQUAL)
    if quant.lung_volume_ml >= 200.0 and _lung_cut_off(quant.lung_mask):
        flags.append(QCFlag.LUNG_CUT_OFF)
    if volume.spacing_mm[0] > 5.0 + 1e-6:
        flags.append(QCFlag.THICK_SLICES)
    if quant.expiration:
        flags.append(QCFlag.EXPIRATION)
    return tuple(str(f) for f in flags)


# An end slice holding at least this share of the largest lung cross-section means the scan stops inside the
# lungs; a few voxels there (the trachea's last air, a partial-volume sliver of apex or base) do not.
CUT_OFF_AREA_FRACTION = 0.25


def _lung_cut_off(lung_mask: np.ndarray) -> bool:
    """Whether the lungs are cut by the first or last slice of the scan (``lung_mask`` is ``(z, y, x)``)."""
    area = np.count_nonzero(lung_mask.reshape(lung_mask.shape[0], -1), axis=1)
    if area.size == 0 or area.max() == 0:
        return False
    return bool(max(area[0], area[-1]) >= CUT_OFF_AREA_FRACTION * area.max())
