"""The learned quantification head: per-voxel lung, ground-glass and consolidation fractions (onnxruntime).

A small 3D CNN (``scripts/train_quantnet.py``, trained on synthetic phantoms only) reads the block-mean
HU grid of :mod:`medai.quantify.measure` (~3 mm voxels, patient-canonical orientation: z inferior -> superior,
y anterior -> posterior, x right -> left) and returns for every coarse voxel three fractions:

* ``lung``: the share of the voxel that is lung (partial volume at the pleura and the mediastinum);
* ``lesion``: the share of that lung which is opacity (ground glass or consolidation);
* ``consolidation``: the share of that opacity which is consolidation.

The HU window lives inside the ONNX graph, so training and serving cannot disagree. The network works at
~6 mm and emits its 3 mm output as 24 channels at 6 mm (8 sub-voxels x 3 quantities), rearranged here
in numpy: onnxruntime's Resize and channel softmax would cost more than the convolutions.

The shipped ``models/medai-quant.onnx`` must match the sha256 of its card ``models/medai-quant.json``.
Serving is torch-free: numpy and onnxruntime only. Research use only, not for clinical use.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medai.errors import ModelError
from medai.modelcard import verify_model_file
from medai.quantify.lungs import split_sides

if TYPE_CHECKING:
    from medai.quantify.params import QuantifyParams

__all__ = [
    "BODY_MARGIN",
    "DEFAULT_QUANT_MODEL",
    "QUANT_FORMAT",
    "QUANT_MODEL_ENV",
    "CanonicalAxes",
    "QuantFractions",
    "QuantNet",
    "body_box",
    "default_quant_model",
    "embed",
    "learned_lungs",
    "lung_sides",
    "set_threads",
    "shipped_quantnet",
]

log = logging.getLogger(__name__)

DEFAULT_QUANT_MODEL = Path(__file__).resolve().parents[2] / "models" / "medai-quant.onnx"
QUANT_FORMAT = "medai-quant/1"
QUANT_MODEL_ENV = "MEDAI_QUANT_MODEL"  # another head to serve instead of the shipped one (checked against its card)
_METADATA_KEY = "medai"


@dataclass(frozen=True, eq=False)
class QuantFractions:
    """Per-voxel fractions on the coarse grid, float32 ``(z, y, x)`` in [0, 1].

    Attributes:
        lung: share of the voxel that is lung.
        lesion: share of the voxel's lung that is opacity.
        consolidation: share of the voxel's opacity that is consolidation.
    """

    lung: np.ndarray
    lesion: np.ndarray
    consolidation: np.ndarray


class QuantNet:
    """A loaded quantification head. Create it with :meth:`load` (or :func:`shipped_quantnet`); reuse it.

    Example:
        >>> net = QuantNet.load()  # doctest: +SKIP
        >>> f = net.fractions(np.full((16, 64, 64), -850.0, np.float32))  # doctest: +SKIP
        >>> f.lung.shape  # doctest: +SKIP
        (16, 64, 64)
    """

    def __init__(self, session: Any, meta: dict[str, Any], path: Path, sha256: str) -> None:
        self._session = session
        self.meta = meta
        self.path = path
        self.sha256 = sha256
        self.multiple = int(meta.get("multiple", 8))
        self.model_id = f"{meta.get('name', path.stem)}@{sha256[:12]}"

    @classmethod
    def load(cls, path: str | Path | None = None, *, threads: int | None = None) -> QuantNet:
        """Load a quantification head and check its sha256 against the card beside it.

        Args:
            path: an ``.onnx`` file from ``scripts/train_quantnet.py``. Default: ``$MEDAI_QUANT_MODEL``, else
                the shipped ``models/medai-quant.onnx``, whose card ``medai-quant.json`` must exist and match.
                A given file is checked against a card beside it (same stem, ``.json``) when one exists.
            threads: onnxruntime intra-op threads (default: the cores, at most 4).

        Raises:
            ModelError: missing or unreadable file or card, hash mismatch, not a medai quantification head.
        """
        import onnxruntime as ort

        shipped = path is None and not os.environ.get(QUANT_MODEL_ENV)
        resolved = Path(path) if path is not None else default_quant_model()
        if not resolved.is_file():
            raise ModelError(f"quantification model must be an existing .onnx file, not {str(resolved)!r}")
        digest = verify_model_file(resolved, card_required=shipped)
        options = ort.SessionOptions()
        n_threads = threads if threads is not None else min(4, os.cpu_count() or 1)
        if n_threads < 1:
            raise ValueError(f"threads must be >= 1, not {n_threads}")
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(resolved), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"cannot load ONNX model {str(resolved)!r}: {exc}") from exc
        props = session.get_modelmeta().custom_metadata_map
        try:
            meta = json.loads(props[_METADATA_KEY])
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{str(resolved)!r} must carry medai metadata; reading it failed: {exc}") from exc
        if meta.get("format") != QUANT_FORMAT:
            raise ModelError(f"{str(resolved)!r} metadata format must be {QUANT_FORMAT!r}, not {meta.get('format')!r}")
        net = cls(session, meta, resolved, digest)
        log.info("loaded %s from %s (%d threads)", net.model_id, resolved, n_threads)
        return net

    def fractions(self, coarse_hu: np.ndarray) -> QuantFractions:
        """Lung, lesion and consolidation fractions of a canonical-orientation block-mean HU grid.

        Args:
            coarse_hu: ``(z, y, x)`` HU on the quantification grid (any size; padded here by repeating
                the edge to a multiple of the network's stride).

        Raises:
            ValueError: ``coarse_hu`` is not 3D.
        """
        full = self._run(coarse_hu, 3)
        return QuantFractions(full[0], full[1], full[2])

    def lung_fraction(self, coarse_hu: np.ndarray) -> np.ndarray:
        """Only :attr:`QuantFractions.lung` of :meth:`fractions` (a third of the unpacking work).

        Raises:
            ValueError: ``coarse_hu`` is not 3D.
        """
        return self._run(coarse_hu, 1)[0]

    def _run(self, coarse_hu: np.ndarray, n_outputs: int) -> np.ndarray:
        """The first ``n_outputs`` fraction maps, ``(n_outputs, z, y, x)``."""
        if coarse_hu.ndim != 3:
            raise ValueError(f"coarse_hu must be 3D (z, y, x), not {coarse_hu.ndim}D")
        m = self.multiple
        shape = coarse_hu.shape
        pad = [(0, (-n) % m) for n in shape]
        hu = np.asarray(coarse_hu, dtype=np.float32)
        if any(after for _, after in pad):
            hu = np.pad(hu, pad, mode="edge")
        out = self._session.run(None, {"hu": hu[None, None]})[0][0]  # (24, d, h, w): k * 8 + dz * 4 + dy * 2 + dx
        _, d, h, w = out.shape
        k = n_outputs
        full = out[: 8 * k].reshape(k, 2, 2, 2, d, h, w).transpose(0, 4, 1, 5, 2, 6, 3).reshape(k, 2 * d, 2 * h, 2 * w)
        return full[:, : shape[0], : shape[1], : shape[2]]


def default_quant_model() -> Path:
    """``$MEDAI_QUANT_MODEL`` when set, else the shipped ``models/medai-quant.onnx``.

    Example:
        >>> default_quant_model().suffix
        '.onnx'
    """
    return Path(os.environ.get(QUANT_MODEL_ENV) or DEFAULT_QUANT_MODEL)


def shipped_quantnet() -> QuantNet:
    """The default quantification head (:func:`default_quant_model`), loaded once per process and path.

    Raises:
        ModelError: the model is missing, corrupt (sha256 differs from its card) or unreadable.
    """
    return _load_cached(default_quant_model())


_threads: int | None = None


def set_threads(threads: int | None) -> None:
    """onnxruntime threads of the process's shared head (:func:`shipped_quantnet`); None: its default.

    A batch worker that runs one thread per process sets this to 1, as it does for the classifier, so that
    N workers on N cores do not run 2N threads. The head is reloaded at its next use when this changes.

    Example:
        >>> set_threads(1); set_threads(None)
    """
    global _threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    if threads != _threads:
        _threads = threads
        _load_cached.cache_clear()


@functools.lru_cache(maxsize=2)
def _load_cached(path: Path) -> QuantNet:  # keyed by the default path: a changed $MEDAI_QUANT_MODEL reloads
    return QuantNet.load(threads=_threads)


def _canonical_axes(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """(axis permutation, axes to flip after it) taking the array to z inferior->superior, y A->P, x R->L."""
    d = np.asarray(direction, dtype=np.float64)  # columns: patient (L, P, S) directions of array x, y, z
    if abs(d[0, 0]) >= abs(d[1, 0]):  # array x runs right-left
        perm, signs = (0, 1, 2), (d[2, 2], d[1, 1], d[0, 0])
    else:  # array x runs front-back: swap y and x
        perm, signs = (0, 2, 1), (d[2, 2], d[1, 0], d[0, 1])
    return perm, tuple(axis for axis in range(3) if signs[axis] < 0)


class CanonicalAxes:
    """Array axes of a volume <-> the head's canonical orientation (z I->S, y A->P, x R->L).

    Example:
        >>> axes = CanonicalAxes(np.diag([-1.0, 1.0, 1.0]))  # array x runs to the patient's right
        >>> a = np.arange(6).reshape(1, 2, 3)
        >>> bool((axes.back(axes.to(a)) == a).all())
        True
    """

    def __init__(self, direction: np.ndarray) -> None:
        self.perm, self.flips = _canonical_axes(direction)

    def to(self, a: np.ndarray) -> np.ndarray:
        return np.flip(a.transpose(self.perm), axis=self.flips) if self.flips else a.transpose(self.perm)

    def back(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((np.flip(a, axis=self.flips) if self.flips else a).transpose(self.perm))


def lung_sides(lung: np.ndarray, spacing: tuple[float, ...], *, params: QuantifyParams) -> tuple[np.ndarray, float]:
    """Right/left mask (canonical orientation) of lung fractions >= 0.5, and the midline used."""
    hard = lung >= 0.5
    extent = np.flatnonzero(hard.any(axis=(0, 1)))
    midline = 0.5 * float(extent[0] + extent[-1]) if extent.size else 0.0
    sides = split_sides(hard, spacing, midline=midline, lr_dim=2, right_low=True, params=params)  # type: ignore[arg-type]
    return sides, midline


def learned_lungs(
    direction: np.ndarray, coarse: np.ndarray, spacing_mm: tuple[float, float, float], *, params: QuantifyParams
) -> np.ndarray:
    """The shared head's lung mask (0 / 1 right / 2 left) of a block-mean grid, in the grid's own orientation.

    Args:
        direction: the volume's direction matrix (:attr:`medai.volume.Volume.direction`).
        coarse: the block-mean HU grid of :func:`medai.quantify.measure.quantify`.
        spacing_mm: its voxel size (z, y, x).
        params: for the right/left split.
    """
    axes = CanonicalAxes(direction)
    canonical = axes.to(coarse)
    # The head only needs the body and a margin (it pads by repeating the edge): the air around the patient
    # is a third to a half of a typical field of view.
    box = body_box(canonical)
    lung = embed(shipped_quantnet().lung_fraction(np.ascontiguousarray(canonical[box])), canonical.shape, box)
    sides, _ = lung_sides(lung, tuple(spacing_mm[p] for p in axes.perm), params=params)
    return axes.back(sides)


def embed(values: np.ndarray, shape: tuple[int, ...], box: tuple[slice, slice, slice]) -> np.ndarray:
    """``values`` placed at ``box`` in zeros of ``shape``."""
    out = np.zeros(shape, dtype=values.dtype)
    out[box] = values
    return out


# Voxels of air kept around the body for the learned head (~24 mm; it pads by repeating the edge).
BODY_MARGIN = 8


def body_box(coarse: np.ndarray, *, margin: int = BODY_MARGIN) -> tuple[slice, slice, slice]:
    """In-plane bounding box (all slices) of what is denser than air, plus ``margin`` voxels.

    Rows and columns count as body when at least 2 % of the densest one's voxels are above -500 HU, so
    noise and a thin table edge do not stretch the box.
    """
    dense = coarse > -500.0
    box: list[slice] = [slice(0, coarse.shape[0])]
    for axis in (1, 2):
        profile = dense.sum(axis=tuple(a for a in range(3) if a != axis))
        keep = np.flatnonzero(profile >= 0.02 * max(int(profile.max()), 1))
        if keep.size == 0:
            return (slice(None),) * 3  # type: ignore[return-value]
        box.append(slice(max(0, int(keep[0]) - margin), min(coarse.shape[axis], int(keep[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]
