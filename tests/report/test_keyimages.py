"""Key images: montage of salient slices, overlay only inside the lungs, caption."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medai.inference.classifier import Classifier
from medai.phantoms import synthetic
from medai.report.keyimages import key_image_array, write_key_image


@pytest.fixture(scope="module")
def scored(
    small_phantom: Callable[..., synthetic.Phantom], shipped_classifier: Classifier
) -> tuple[synthetic.Phantom, object]:
    phantom = small_phantom("covid19", 0.3, 5)
    return phantom, shipped_classifier.predict(phantom.volume)


def test_key_image_png_has_tiles_overlay_and_caption(scored: tuple, tmp_path: Path) -> None:
    from PIL import Image

    phantom, pred = scored
    path = write_key_image(phantom.volume, pred, tmp_path / "k" / "key.png", n_slices=4, tile_px=200)
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    slices = pred.saliency.top_slices(4)
    assert image.shape[1] >= 2 * 200 and image.shape[0] > ((len(slices) + 1) // 2) * 200
    tiles = image[: ((len(slices) + 1) // 2) * 200]
    coloured = (tiles[..., 0] - tiles[..., 2]) > 60
    assert coloured.mean() > 0.002  # a saliency overlay is drawn (focused: the lesions, not the whole lung)
    caption = image[((len(slices) + 1) // 2) * 200 :]
    assert (caption > 200).any()  # text
    assert not list(path.parent.glob(".*.tmp"))


def test_overlay_stays_inside_the_lungs(scored: tuple) -> None:
    phantom, pred = scored
    image = key_image_array(phantom.volume, pred, n_slices=1, tile_px=112, alpha=1.0).astype(int)
    (z,) = pred.saliency.top_slices(1)
    tile = image[:112, :112]
    coloured = (tile[..., 0] - tile[..., 2]) > 60
    lungs = phantom.lung_mask[z] > 0  # ground truth on the 112 px source grid (identity direction)
    # the overlay is cut by the estimated lung mask, which may differ from the truth by a pixel at the pleura
    # (where COVID-19 lesions, and so the strongest evidence, sit)
    near_lungs = ndimage.binary_dilation(lungs)
    body = slice(16, -16)  # the slice label (top) and the orientation marker (bottom) are yellow text
    assert coloured[body].sum() > 0
    assert (coloured[body] & ~near_lungs[body]).sum() <= 0.1 * coloured[body].sum()


def test_wrong_volume_is_refused(scored: tuple, tmp_path: Path) -> None:
    phantom, pred = scored
    other = phantom.volume.with_array(phantom.volume.hu)
    small = type(other)(other.hu[:10], other.spacing_mm)
    with pytest.raises(ValueError, match="prediction must belong to the volume"):
        key_image_array(small, pred)
    with pytest.raises(ValueError, match=r"must end with \.png"):
        write_key_image(phantom.volume, pred, tmp_path / "k.jpg")
