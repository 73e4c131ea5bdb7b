"""Key images: a PNG montage of the axial slices that show why a scored series got its label.

Each tile is one source slice in a lung window (grey) with the evidence that decided as a colour overlay.
When the network decided, that is the positive saliency of
:attr:`medai.inference.classifier.Prediction.saliency` inside the lungs only (dark red to yellow: more
evidence for the explained class), on the most salient slices. When the measured findings decided
(``Prediction.evidence == "findings"``, the shipped model), it is the measured opacities (ground glass cyan,
consolidation magenta, the viewer's colours) on the slices with the most opacity; a series without any
opacity falls back to the network's saliency, captioned as the network's view. Slices are shown in the
radiological convention (patient's right on the image's left, anterior up). A caption gives the label, the
calibrated probabilities, the lesion percentage and severity, the model id and
"Research use only — not for diagnosis".

Used by ``medai score --saliency-dir`` and by the demo; Pillow and numpy only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medai.ingest.nifti import is_nifti_name
from medai.report.rendering import (
    WINDOW_PRESETS,
    draw_opacities,
    font,
    heat_rgb,
    saliency_caption,
    saliency_weight,
)
from medai.volume import Volume

if TYPE_CHECKING:
    from medai.inference.classifier import Prediction

__all__ = [
    "LUNG_WINDOW_HU",
    "OPACITY_CAPTION",
    "RESEARCH_NOTICE",
    "key_image_array",
    "key_slices",
    "shows_opacities",
    "write_key_image",
    "write_saliency_nifti",
]

log = logging.getLogger(__name__)

#: Lung window (level, width) in HU.
LUNG_WINDOW_HU = (WINDOW_PRESETS["lung"].level_hu, WINDOW_PRESETS["lung"].width_hu)
#: Printed on every key image.
RESEARCH_NOTICE = "Research use only — not for diagnosis"
#: The overlay caption of key images that show the measured opacities.
OPACITY_CAPTION = "overlay: the measured opacities that decided the label (ground glass cyan, consolidation magenta)"
_CAPTION_PX = 82  # four caption lines of 19 px
_LABEL_PX = 16


def _coarse_slice(mask: np.ndarray, prediction: Prediction, z: int, shape: tuple[int, int]) -> np.ndarray:
    """Source slice ``z`` of a coarse-grid mask, nearest-neighbour on the ``(y, x)`` source grid."""
    fz, fy, fx = prediction.quantification.grid.factors
    k = min(z // fz, mask.shape[0] - 1)
    plane = np.repeat(np.repeat(mask[k], fy, axis=0), fx, axis=1)[: shape[0], : shape[1]]
    pad = ((0, shape[0] - plane.shape[0]), (0, shape[1] - plane.shape[1]))
    return np.pad(plane, pad, mode="edge") if any(p for _, p in pad) else plane


def _lung_slice(prediction: Prediction, z: int, shape: tuple[int, int]) -> np.ndarray:
    """The coarse lung mask of source slice ``z``, nearest-neighbour on the ``(y, x)`` source grid (bool)."""
    return _coarse_slice(prediction.quantification.lung_mask > 0, prediction, z, shape)


def _shown_opacities(prediction: Prediction) -> np.ndarray | None:
    """The coarse opacity mask inside the lungs (0 none, 1 ground glass, 2 consolidation) when key images show
    it (the findings decided and there is some opacity), else None."""
    if prediction.evidence != "findings":
        return None
    quant = prediction.quantification
    opacities = np.where(quant.lung_mask > 0, quant.lesion_mask, 0).astype(np.uint8)
    return opacities if opacities.any() else None


def shows_opacities(prediction: Prediction) -> bool:
    """Whether key images show the measured opacities: the findings decided and there are some to show."""
    return _shown_opacities(prediction) is not None


def key_slices(prediction: Prediction, n: int) -> list[int]:
    """Source slice indices (ascending) of up to ``n`` key slices: where the evidence that decided is.

    With :func:`shows_opacities`, the coarse slices with the most opacity (neighbours of a chosen slice are
    skipped while others remain, so the slices spread over the disease), each at its middle source slice;
    otherwise :meth:`medai.inference.saliency.SaliencyMap.top_slices`.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    return _key_slices(prediction, n, _shown_opacities(prediction))


def _key_slices(prediction: Prediction, n: int, opacities: np.ndarray | None) -> list[int]:
    """:func:`key_slices` given :func:`_shown_opacities` (computed once by callers that draw it too)."""
    if opacities is None:
        return prediction.saliency.top_slices(n)
    fz = prediction.quantification.grid.factors[0]
    area = (opacities > 0).sum(axis=(1, 2))
    ranked = [int(k) for k in np.argsort(-area, kind="stable") if area[k] > 0]
    spread = [k for i, k in enumerate(ranked) if all(abs(k - j) > 1 for j in ranked[:i])]
    chosen = (spread + [k for k in ranked if k not in spread])[:n]
    last = prediction.saliency.source_shape[0] - 1
    return sorted({min(k * fz + fz // 2, last) for k in chosen})


def _radiological(image: np.ndarray, volume: Volume) -> np.ndarray:
    """Flip a (y, x, ...) slice so that the patient's right is on the left and anterior is up."""
    direction = np.asarray(volume.direction)
    if direction[0, 0] < 0:  # array x runs towards the patient's right (LPS -x)
        image = image[:, ::-1]
    if direction[1, 1] < 0:  # array y runs anterior (LPS -y)
        image = image[::-1]
    return image


def _tile(volume: Volume, prediction: Prediction, z: int, *, alpha: float, opacities: np.ndarray | None) -> np.ndarray:
    hu = np.asarray(volume.hu[z])
    if opacities is not None:  # the measured opacities decided: draw them, as the viewer does
        rgb = np.repeat(WINDOW_PRESETS["lung"].grey(hu)[..., None], 3, axis=2)
        draw_opacities(rgb, _coarse_slice(opacities, prediction, z, hu.shape), alpha)
        return _radiological(rgb, volume)
    grey = WINDOW_PRESETS["lung"].grey(hu).astype(np.float32) / 255.0
    peak = prediction.saliency.positive_peak  # the evidence as a share of its own peak, as in the viewer
    heat = np.clip(prediction.saliency.source_slice(z) / peak, 0.0, 1.0) if peak > 0.0 else np.zeros(hu.shape)
    heat *= _lung_slice(prediction, z, hu.shape)
    # weak evidence stays grey; from a quarter of the peak the overlay fades in up to alpha
    weight = saliency_weight(heat, alpha)[..., None]
    rgb = (1.0 - weight) * grey[..., None] + weight * heat_rgb(heat)
    return _radiological((rgb * 255.0 + 0.5).astype(np.uint8), volume)


def _caption(prediction: Prediction, *, opacities_shown: bool) -> list[str]:
    probs = "  ".join(f"{name} {p:.2f}" for name, p in prediction.probabilities.items())
    verdict = prediction.label + (" (indeterminate)" if prediction.indeterminate else "")
    quant = prediction.quantification
    return [
        f"{verdict}    p: {probs}",
        f"lesions {quant.lesion_percent:.1f}% of lung ({prediction.severity.value}); model {prediction.model_id}",
        OPACITY_CAPTION if opacities_shown else saliency_caption(prediction.saliency.class_name, prediction.evidence),
        RESEARCH_NOTICE,
    ]


def key_image_array(
    volume: Volume,
    prediction: Prediction,
    *,
    n_slices: int = 4,
    tile_px: int = 320,
    alpha: float = 0.55,
    slices: Sequence[int] | None = None,
) -> np.ndarray:
    """The key-image montage as an RGB uint8 array ``(height, width, 3)``.

    Args:
        volume: the scored volume (``prediction`` must come from it).
        prediction: from :meth:`medai.inference.classifier.Classifier.predict`.
        n_slices: key slices to show (:func:`key_slices`; fewer when the evidence has fewer distinct peaks).
        tile_px: size of each square tile in pixels.
        alpha: largest opacity of the overlay.
        slices: the source slices to show (array indices along ``z``) instead of the ``n_slices`` key slices.

    Raises:
        ValueError: ``prediction`` does not belong to ``volume`` (other shape) or bad options.

    Example:
        >>> key_image_array(volume, prediction).shape  # doctest: +SKIP
        (722, 640, 3)
    """
    from PIL import Image, ImageDraw

    if n_slices < 1 or tile_px < 32 or not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"n_slices must be >= 1, tile_px >= 32 and alpha in [0, 1], not {n_slices}, {tile_px}, {alpha}"
        )
    if tuple(prediction.saliency.source_shape) != tuple(volume.shape):
        raise ValueError(
            f"prediction must belong to the volume: saliency shape {prediction.saliency.source_shape} "
            f"must be {volume.shape}"
        )
    opacities = _shown_opacities(prediction)
    if slices is None:
        slices = _key_slices(prediction, n_slices, opacities)
    elif not slices or not all(0 <= z < volume.shape[0] for z in slices):
        raise ValueError(f"slices must be indices in [0, {volume.shape[0]}), not {list(slices)}")
    columns = min(len(slices), 2 if len(slices) <= 4 else 3)
    rows = math.ceil(len(slices) / columns)
    width = max(columns * tile_px, 560)
    canvas = Image.new("RGB", (width, rows * tile_px + _CAPTION_PX), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    small, _ = font(12)
    ny, nx = volume.shape[1:]
    sy, sx = volume.spacing_mm[1:]
    scale = tile_px / max(ny * sy, nx * sx)  # keep physical aspect ratio
    size = (max(1, round(nx * sx * scale)), max(1, round(ny * sy * scale)))
    for i, z in enumerate(slices):
        tile = Image.fromarray(np.ascontiguousarray(_tile(volume, prediction, z, alpha=alpha, opacities=opacities)))
        tile = tile.resize(size, Image.Resampling.BILINEAR)
        left = (i % columns) * tile_px + (tile_px - size[0]) // 2
        top = (i // columns) * tile_px + (tile_px - size[1]) // 2
        canvas.paste(tile, (left, top))
        draw.text(
            ((i % columns) * tile_px + 4, (i // columns) * tile_px + 2),
            f"slice {z + 1}/{volume.shape[0]}",
            fill=(255, 255, 0),
            font=small,
        )
        draw.text(
            ((i % columns) * tile_px + 4, (i // columns) * tile_px + tile_px - _LABEL_PX),
            "R",
            fill=(255, 255, 0),
            font=small,
        )
    caption_font, typographic = font(13)
    y = rows * tile_px + 4
    for line in _caption(prediction, opacities_shown=opacities is not None):
        draw.text((6, y), line if typographic else line.replace("—", "-"), fill=(255, 255, 255), font=caption_font)
        y += 19
    return np.asarray(canvas)


def write_key_image(volume: Volume, prediction: Prediction, path: str | Path, **options: Any) -> Path:
    """Write the key-image montage of a scored series as a PNG (folders created).

    Args:
        volume: the scored volume.
        prediction: its :class:`~medai.inference.classifier.Prediction`.
        path: the ``.png`` file to write (replaced atomically when it exists).
        **options: ``n_slices``, ``tile_px``, ``alpha`` of :func:`key_image_array`.

    Returns:
        ``path``.

    Example:
        >>> clf = Classifier.load()  # doctest: +SKIP
        >>> pred = clf.predict(volume)  # doctest: +SKIP
        >>> write_key_image(volume, pred, "key.png")  # doctest: +SKIP
        PosixPath('key.png')
    """
    import os

    from PIL import Image, PngImagePlugin

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"key image path must end with .png, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "medai")
    info.add_text("Description", f"{prediction.model_id}; {RESEARCH_NOTICE}")
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(key_image_array(volume, prediction, **options)).save(temp, format="PNG", pnginfo=info)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def write_saliency_nifti(volume: Volume, prediction: Prediction, path: str | Path) -> Path:
    """Write the saliency map on the full source grid as float32 NIfTI (same geometry as the CT).

    Example:
        >>> write_saliency_nifti(volume, pred, "saliency.nii.gz")  # doctest: +SKIP
        PosixPath('saliency.nii.gz')
    """
    from medai.ingest.nifti import write_nifti
    from medai.ingest.outputs import SALIENCY_DESCRIPTION

    path = Path(path)
    if not is_nifti_name(path):
        raise ValueError(f"saliency NIfTI path must end with .nii or .nii.gz, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    description = f"{SALIENCY_DESCRIPTION} {prediction.model_id}"
    write_nifti(volume.with_array(prediction.saliency.to_source()), path, description=description)
    return path
