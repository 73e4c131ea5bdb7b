"""Tests for medai.preprocess and medai.training.cache."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from medai.errors import InvalidSeriesError, QCReason
from medai.preprocess import (
    ModelInput,
    Normalization,
    PreprocessParams,
    depth_mm,
    fast_lung_mask,
    to_model_input,
    within_mm,
)
from medai.volume import Volume

PARAMS = PreprocessParams(grid_shape=(32, 32, 48))


def chest(shape=(60, 128, 128), spacing=(5.0, 2.5, 2.5), seed=0) -> tuple[Volume, np.ndarray]:
    """Toy chest: body ellipse, two lungs (one with a dense patch), noise; returns volume and lung mask."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx]
    hu = np.full(shape, -1024, np.int16)
    hu[((y - ny / 2) / (0.36 * ny)) ** 2 + ((x - nx / 2) / (0.45 * nx)) ** 2 < 1] = 40
    inz = (z > nz * 0.15) & (z < nz * 0.85)
    right = (((y - ny * 0.5) / (0.22 * ny)) ** 2 + ((x - nx * 0.33) / (0.12 * nx)) ** 2 < 1) & inz
    left = (((y - ny * 0.5) / (0.22 * ny)) ** 2 + ((x - nx * 0.67) / (0.12 * nx)) ** 2 < 1) & inz
    lungs = right | left
    hu[lungs] = -850
    hu[right & (y > ny * 0.55) & (z < nz * 0.4)] = -400  # posterior basal patch: breaks every symmetry
    hu = (hu + rng.normal(0, 10, shape)).astype(np.int16)
    return Volume(hu, spacing_mm=spacing, origin_mm=(-160.0, -160.0, -150.0)), lungs


def test_output_shape_range_and_dtype():
    vol, _ = chest()
    mi = to_model_input(vol, PARAMS)
    assert isinstance(mi, ModelInput)
    assert mi.array.shape == (1, 32, 32, 48)
    assert mi.array.dtype == np.float32
    assert mi.array.min() >= 0.0 and mi.array.max() <= 1.0
    assert mi.array.max() > 0.6 and mi.array.min() < 0.15  # soft tissue and air both present
    assert mi.lung_volume_ml > 500


def test_zscore_normalisation():
    vol, _ = chest()
    mi = to_model_input(vol, PreprocessParams(grid_shape=(32, 32, 48), normalization=Normalization.ZSCORE))
    assert abs(float(mi.array.mean())) < 1e-4
    assert abs(float(mi.array.std()) - 1.0) < 1e-3


@pytest.mark.parametrize(
    ("transform", "direction"),
    [
        (lambda a: a[::-1], np.diag([1.0, 1.0, -1.0])),  # slices stored superior to inferior
        (lambda a: a[:, ::-1, ::-1], np.diag([-1.0, -1.0, 1.0])),  # rows/columns reversed (RAS-like storage)
        (lambda a: a.transpose(0, 2, 1), np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])),
    ],
)
def test_reoriented_storage_gives_the_same_input(transform, direction):
    vol, _ = chest()
    ref = to_model_input(vol, PARAMS)
    stored = transform(vol.hu)
    spacing = vol.spacing_mm if stored.shape == vol.shape else (5.0, 2.5, 2.5)
    other = to_model_input(Volume(np.ascontiguousarray(stored), spacing, direction=direction), PARAMS)
    np.testing.assert_allclose(other.array, ref.array, atol=1e-6)


def test_oblique_volume_is_refused_and_small_tilt_accepted():
    vol, _ = chest()
    a = np.radians(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    with pytest.raises(InvalidSeriesError, match="oblique"):
        to_model_input(Volume(vol.hu, vol.spacing_mm, direction=rot), PARAMS)
    a = np.radians(2)
    small = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    assert to_model_input(Volume(vol.hu, vol.spacing_mm, direction=small), PARAMS).array.shape == (1, 32, 32, 48)


def test_crop_contains_the_lungs_and_maps_back_to_source():
    vol, lungs = chest()
    mi = to_model_input(vol, PARAMS)
    lo, hi = mi.crop_box_source
    idx = np.argwhere(lungs)
    assert np.all(idx.min(axis=0) >= lo) and np.all(idx.max(axis=0) <= hi)
    # the crop is lung-centred: not much larger than the lungs along the limiting axis
    assert np.min((hi - lo) / (idx.max(axis=0) - idx.min(axis=0) + 1)) < 1.5
    # the model voxel of the patch maps to a source voxel of the patch
    centre_model = np.array(np.unravel_index(np.argmax(mi.array[0]), mi.array.shape[1:]), dtype=float)
    src = np.round(mi.to_source_index(centre_model)).astype(int)
    assert vol.hu[tuple(np.clip(src, 0, np.array(vol.shape) - 1))] > -600
    assert mi.scale == pytest.approx((mi.spacing_mm[0] / 5.0, mi.spacing_mm[1] / 2.5, mi.spacing_mm[2] / 2.5))


def test_fast_lung_mask_drops_outside_air():
    vol, lungs = chest()
    mask = fast_lung_mask(vol.hu, vol.spacing_mm)
    assert mask.shape == vol.shape
    dice = 2 * (mask & lungs).sum() / (mask.sum() + lungs.sum())
    assert dice > 0.9
    assert not mask[:, 0, :].any() and not mask[:, :, 0].any()
    assert not fast_lung_mask(np.full((10, 20, 20), 40, np.int16), (5.0, 5.0, 5.0)).any()


def test_no_lungs_falls_back_to_body():
    hu = np.full((30, 64, 64), -1024, np.int16)
    hu[:, 10:54, 10:54] = 40
    mi = to_model_input(Volume(hu, (5.0, 5.0, 5.0)), PARAMS)
    assert mi.lung_volume_ml == 0.0
    assert mi.array.shape == (1, 32, 32, 48)


def test_params_round_trip_and_validation():
    params = PreprocessParams(grid_shape=(16, 24, 24), window_hu=(-900, 300), normalization="zscore")
    assert PreprocessParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="must be among"):
        PreprocessParams.from_dict({**params.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="window_hu must be"):
        PreprocessParams(window_hu=(100, -100))
    with pytest.raises(ValueError, match="grid_shape must be"):
        PreprocessParams(grid_shape=(4, 4, 4))


def test_speed_on_a_clinical_size_volume():
    hu = np.full((300, 512, 512), -1024, np.int16)
    hu[:, 80:440, 40:472] = 40
    hu[30:270, 140:380, 90:230] = -850
    hu[30:270, 140:380, 282:422] = -850
    vol = Volume(hu, (1.0, 0.7, 0.7))
    params = PreprocessParams()
    to_model_input(vol, params)
    t0 = time.perf_counter()
    mi = to_model_input(vol, params)
    elapsed = time.perf_counter() - t0
    assert mi.array.shape == (1, *params.grid_shape)
    assert elapsed < 1.0  # goal 0.3 s on one idle core; generous for a shared CI machine


def test_lungs_clipped_by_a_small_field_of_view_are_still_found():
    vol, lungs = chest()
    clipped = vol.hu[:, 24:104, 36:92]  # wide patient, small FOV: both lungs touch the lateral sides
    assert lungs[:, 24:104, 36][:, :].any() and lungs[:, 24:104, 91].any()
    mask = fast_lung_mask(clipped, vol.spacing_mm)
    assert mask[:, :, 0].any() and mask[:, :, -1].any()  # both lungs kept
    assert to_model_input(Volume(clipped, vol.spacing_mm), PARAMS).lung_volume_ml > 500


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (lambda hu, lungs: lungs.astype(np.uint8) * 2, "values 0..2"),  # a label map
        (lambda hu, lungs: (hu + 1024).astype(np.uint16), "values 0.."),  # stored values, rescale intercept lost
        (lambda hu, lungs: np.full_like(hu, -1000), "values -1000..-1000"),  # blank
    ],
)
def test_values_that_are_not_hounsfield_units_are_refused(make, found) -> None:
    vol, lungs = chest()
    params = PreprocessParams(grid_shape=(16, 24, 24))
    to_model_input(vol, params)  # the CT itself passes
    bad = Volume(make(vol.hu, lungs), vol.spacing_mm, series_uid="1.2.840.99")
    with pytest.raises(InvalidSeriesError, match=r"series 1\.2\.840\.99: values .* Hounsfield") as exc:
        to_model_input(bad, params)
    assert exc.value.reason is QCReason.NOT_HOUNSFIELD and found in str(exc.value)


@pytest.mark.parametrize("spacing", [None, (2.5, 0.7, 0.7), (3.48, 2.6748, 2.6748), (1.0, 1.3, 0.9)])
def test_depth_is_the_exact_euclidean_distance_transform(spacing) -> None:
    """depth_mm (the served pipeline's distance transform) against scipy's, on blobby masks that touch the edges
    and hold holes, with and without anisotropic spacing; and the thresholds the pipeline takes agree voxel for
    voxel."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        mask = ndimage.uniform_filter(rng.random((23, 31, 37)), 5) > 0.5
        mask[:, :, -1] |= True  # lungs cut by the field of view: the array edge is not outside
        want = ndimage.distance_transform_edt(mask, sampling=spacing)
        got = depth_mm(mask, spacing)
        assert got.shape == mask.shape and not got[~mask].any()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
        for threshold in (3.0, 10.0, 30.0):
            assert np.array_equal(got <= threshold, want <= threshold)


def test_depth_does_not_depend_on_its_threads() -> None:
    from medai.preprocess import set_threads

    mask = ndimage.uniform_filter(np.random.default_rng(3).random((60, 90, 110)), 7) > 0.5
    try:
        set_threads(1)
        one = depth_mm(mask, (2.5, 1.4, 1.4))
        set_threads(2)
        two = depth_mm(mask, (2.5, 1.4, 1.4))
    finally:
        set_threads(None)
    assert np.array_equal(one, two)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        set_threads(0)


@pytest.mark.parametrize(
    ("radius", "spacing"),
    [
        (2.37, None),
        (2.0, None),
        (3.0, None),
        (10.0, (3.48, 2.6748, 2.6748)),
        (10.0, (2.5, 2.5, 2.5)),
        (7.5, (5.0, 0.8, 1.1)),
    ],
)
def test_within_is_the_distance_transform_thresholded(radius, spacing) -> None:
    """within_mm (a dilation by an ellipsoid) marks exactly the voxels the exact distance transform puts within
    the radius of the mask, ties on the radius included (2.0 and 10.0 on 2.5 mm fall on voxel centres)."""
    rng = np.random.default_rng(11)
    for density in (0.02, 0.5, 0.97):
        mask = ndimage.uniform_filter(rng.random((19, 27, 33)), 3) > 1 - density
        got = within_mm(mask, radius, spacing)
        want = depth_mm(~mask, spacing) <= radius
        assert np.array_equal(got, want), (density, int((got != want).sum()))
    assert not within_mm(np.zeros((4, 5, 6), bool), radius, spacing).any()
