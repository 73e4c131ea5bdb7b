"""medai.inference.saliency: CAM contrast, upsampling, lung restriction, resampling to the source grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medai.inference.saliency import Saliency, cam_contrast, lungs_on_model_grid, make_saliency


def _affine(scale: tuple[float, float, float], offset: tuple[float, float, float]) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.diag(scale)
    a[:3, 3] = offset
    return a


def test_contrast_keeps_the_sign_and_ignores_shifts_common_to_all_classes() -> None:
    rng = np.random.default_rng(0)
    cam = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)
    shifted = cam + rng.normal(size=(1, 2, 3, 4)).astype(np.float32)  # same shift for every class: softmax-neutral
    np.testing.assert_allclose(cam_contrast(cam, 1), cam_contrast(shifted, 1), atol=1e-5)
    logits = cam.mean(axis=(1, 2, 3))
    assert cam_contrast(cam, 2).mean() == pytest.approx(logits[2] - logits.mean(), abs=1e-5)
    with pytest.raises(ValueError, match="class_index must be"):
        cam_contrast(cam, 3)
    with pytest.raises(ValueError, match="cam must have shape"):
        cam_contrast(cam[0], 0)


def test_map_is_zero_outside_the_lungs_scaled_to_one_and_not_flipped() -> None:
    cam = np.zeros((2, 2, 2, 2), np.float32)
    cam[1, 0] = 4.0  # evidence for class 1 in the first half along z
    cam[1, 1] = -2.0  # against it in the second half
    lungs = np.zeros((8, 8, 8), bool)
    lungs[:, 2:6, 2:6] = True
    sal = make_saliency(cam, 1, "b", lungs=lungs, index_affine=np.eye(4), source_shape=(8, 8, 8))
    assert sal.map.shape == (8, 8, 8)
    assert float(sal.map[~lungs].max(initial=0.0)) == 0.0 == float(sal.map[~lungs].min(initial=0.0))
    assert float(np.abs(sal.map).max()) == pytest.approx(1.0)
    assert sal.map[1, 4, 4] > 0 > sal.map[6, 4, 4]  # positive evidence stays positive
    assert sal.map[0, 4, 4] == pytest.approx(1.0)


def test_flat_cam_gives_a_zero_map() -> None:
    sal = make_saliency(
        np.ones((3, 2, 2, 2), np.float32),
        0,
        "a",
        lungs=np.ones((4, 4, 4), bool),
        index_affine=np.eye(4),
        source_shape=(4, 4, 4),
    )
    assert not sal.map.any()


def test_source_resampling_follows_the_index_affine() -> None:
    # model voxel k sits at source index 2k + 0.5 along every axis (model grid 2x coarser)
    affine = _affine((2.0, 2.0, 2.0), (0.5, 0.5, 0.5))
    grid = np.zeros((5, 6, 7), np.float32)
    grid[2, 3, 4] = 1.0
    sal = Saliency(grid, "c", affine, (10, 12, 14))
    full = sal.to_source()
    assert full.shape == (10, 12, 14)
    peak = np.unravel_index(np.argmax(full), full.shape)
    assert all(abs(int(p) - (2 * k + 0.5)) <= 0.5 for p, k in zip(peak, (2, 3, 4), strict=True))
    for z in (0, 4, 5, 9):
        np.testing.assert_allclose(sal.source_slice(z), full[z], atol=1e-6)
    with pytest.raises(ValueError, match="z must be a slice index"):
        sal.source_slice(10)


def test_top_slices_finds_the_most_salient_planes_on_flipped_grids() -> None:
    # model z runs opposite to source z: model plane k -> source slice 9 - k
    affine = _affine((-1.0, 1.0, 1.0), (9.0, 0.0, 0.0))
    grid = np.zeros((10, 4, 4), np.float32)
    grid[2] = 1.0
    grid[7] = 0.5
    grid[5] = -3.0  # negative evidence never ranks
    sal = Saliency(grid, "c", affine, (10, 4, 4))
    assert sal.top_slices(2) == [2, 7]
    assert sal.top_slices(1) == [7]
    with pytest.raises(ValueError, match="k must be"):
        sal.top_slices(0)


def test_lungs_on_model_grid_samples_the_coarse_mask() -> None:
    coarse = np.zeros((10, 10, 10), np.uint8)
    coarse[2:8, 2:8, 2:8] = 1
    # source is the coarse grid with factors 2; model grid = source grid (identity)
    model = lungs_on_model_grid(coarse, (2, 2, 2), np.eye(4), (20, 20, 20))
    expected = ndimage.zoom(coarse, 2, order=0).astype(bool)
    assert (model == expected).mean() > 0.97
