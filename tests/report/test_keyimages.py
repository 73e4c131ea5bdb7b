"""Key images: montage of the slices with the deciding evidence, overlay only inside the lungs, caption."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medai.inference.classifier import Classifier
from medai.phantoms import synthetic
from medai.report.keyimages import (
    OPACITY_CAPTION,
    _caption,
    key_image_array,
    key_slices,
    shows_opacities,
    write_key_image,
)


@pytest.fixture(scope="module")
def scored(
    small_phantom: Callable[..., synthetic.Phantom], shipped_classifier: Classifier
) -> tuple[synthetic.Phantom, object]:
    phantom = small_phantom("covid19", 0.3, 5)
    return phantom, shipped_classifier.predict(phantom.volume)


def _opacity_colours(rgb: np.ndarray) -> np.ndarray:
    """Pixels drawn in the ground-glass cyan or the consolidation magenta (not grey, not saliency red)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return ((g - r > 60) & (b - r > 60)) | ((r - g > 60) & (b - g > 60))


def _saliency_colours(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] - rgb[..., 2] > 60) & (rgb[..., 1] <= rgb[..., 0])


def test_key_image_png_has_tiles_overlay_and_caption(scored: tuple, tmp_path: Path) -> None:
    from PIL import Image

    phantom, pred = scored
    assert pred.evidence == "findings"  # the shipped model: the measured opacities decide
    path = write_key_image(phantom.volume, pred, tmp_path / "k" / "key.png", n_slices=4, tile_px=200)
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    slices = key_slices(pred, 4)
    assert image.shape[1] >= 2 * 200 and image.shape[0] > ((len(slices) + 1) // 2) * 200
    tiles = image[: ((len(slices) + 1) // 2) * 200]
    assert _opacity_colours(tiles).mean() > 0.002  # the opacities that decided are drawn
    network = key_image_array(phantom.volume, replace(pred, evidence="network"), slices=slices, tile_px=200)
    saliency_share = _saliency_colours(network[: tiles.shape[0]].astype(int)).mean()
    assert _saliency_colours(tiles).mean() < saliency_share - 0.002  # not the network's map (only the yellow text)
    caption = image[((len(slices) + 1) // 2) * 200 :]
    assert (caption > 200).any()  # text
    assert OPACITY_CAPTION in _caption(pred, opacities_shown=shows_opacities(pred))
    assert not list(path.parent.glob(".*.tmp"))


def test_key_slices_are_where_the_deciding_evidence_is(scored: tuple) -> None:
    phantom, pred = scored
    slices = key_slices(pred, 4)
    assert 1 <= len(slices) <= 4 and slices == sorted(slices)
    truth = (phantom.lesion_mask > 0).sum(axis=(1, 2))
    assert all(truth[z] > 0 for z in slices)  # every key slice shows true disease
    assert np.mean([truth[z] for z in slices]) > np.median(truth[truth > 0])  # more of it than a typical slice
    network = replace(pred, evidence="network")  # a model whose network decides: its saliency picks the slices
    assert key_slices(network, 4) == pred.saliency.top_slices(4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        key_slices(pred, 0)


def test_overlay_stays_inside_the_lungs(scored: tuple) -> None:
    phantom, pred = scored
    for prediction, colours in ((pred, _opacity_colours), (replace(pred, evidence="network"), _saliency_colours)):
        image = key_image_array(phantom.volume, prediction, n_slices=1, tile_px=112, alpha=1.0).astype(int)
        (z,) = key_slices(prediction, 1)
        tile = image[:112, :112]
        coloured = colours(tile)
        lungs = phantom.lung_mask[z] > 0  # ground truth on the 112 px source grid (identity direction)
        # the overlay is cut by the estimated lung mask, which may differ from the truth by a pixel at the pleura
        # (where COVID-19 lesions, and so the strongest evidence, sit)
        near_lungs = ndimage.binary_dilation(lungs)
        body = slice(16, -16)  # the slice label (top) and the orientation marker (bottom) are yellow text
        assert coloured[body].sum() > 0
        assert (coloured[body] & ~near_lungs[body]).sum() <= 0.1 * coloured[body].sum()


def test_a_findings_decision_without_opacities_shows_the_networks_view(
    small_phantom: Callable[..., synthetic.Phantom], shipped_classifier: Classifier
) -> None:
    phantom = small_phantom("normal", 0.0, 6)
    pred = shipped_classifier.predict(phantom.volume)
    quant = replace(pred.quantification, lesion_mask=np.zeros_like(pred.quantification.lesion_mask))
    clear = replace(pred, quantification=quant)
    assert key_slices(clear, 2) == clear.saliency.top_slices(2)
    assert not shows_opacities(clear)
    caption = _caption(clear, opacities_shown=False)
    assert "the network's view" in caption[2] and OPACITY_CAPTION not in caption


def test_wrong_volume_is_refused(scored: tuple, tmp_path: Path) -> None:
    phantom, pred = scored
    other = phantom.volume.with_array(phantom.volume.hu)
    small = type(other)(other.hu[:10], other.spacing_mm)
    with pytest.raises(ValueError, match="prediction must belong to the volume"):
        key_image_array(small, pred)
    with pytest.raises(ValueError, match=r"must end with \.png"):
        write_key_image(phantom.volume, pred, tmp_path / "k.jpg")
