"""Multiplanar rendering: radiological orientation whatever the array order, aspect from spacing, window, overlays."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from medai.inference.classifier import Classifier
from medai.phantoms import synthetic
from medai.report.rendering import (
    CONSOLIDATION_RGB,
    GGO_RGB,
    MPR,
    RIGHT_LUNG_RGB,
    WINDOW_PRESETS,
    Layers,
    Overlays,
    Plane,
    Window,
    encode_png,
    saliency_colorbar,
)
from medai.volume import Volume

PLAIN = Layers(window=Window(0.0, 2.0), saliency_opacity=0.0, crosshair=False, size_px=64)


def marked_volume(direction: np.ndarray | None = None) -> Volume:
    """A 10x20x30 volume (1 mm) with one bright voxel at the patient's right, anterior, superior corner."""
    hu = np.full((10, 20, 30), -1000, np.int16)
    hu[9, 0, 0] = 1000  # identity direction: z up = superior, y = posterior, x = patient left
    if direction is None:
        return Volume(hu, (1.0, 1.0, 1.0))
    # the same patient stored with x running to the patient's right and z running down
    return Volume(hu[::-1, :, ::-1].copy(), (1.0, 1.0, 1.0), direction=direction)


def bright_corner(rgb: np.ndarray) -> tuple[str, str]:
    """Which half (top/bottom, left/right) of the image holds the bright pixels."""
    rows, cols = np.nonzero(rgb[..., 0] > 200)
    h, w = rgb.shape[:2]
    return ("top" if rows.mean() < h / 2 else "bottom"), ("left" if cols.mean() < w / 2 else "right")


@pytest.mark.parametrize("direction", [None, np.diag([-1.0, 1.0, -1.0])])
def test_views_follow_the_radiological_convention_whatever_the_array_order(direction: np.ndarray | None) -> None:
    mpr = MPR(marked_volume(direction))
    assert mpr.shape == (10, 20, 30)  # axial, coronal, sagittal slices
    # axial slice 1 is the most superior; the patient's right is on the left, anterior up
    assert bright_corner(mpr.render(Plane.AXIAL, 0, PLAIN)) == ("top", "left")
    # coronal slice 1 is the most anterior; superior up, right on the left
    assert bright_corner(mpr.render(Plane.CORONAL, 0, PLAIN)) == ("top", "left")
    # sagittal slice 1 is the rightmost; superior up, anterior on the left
    assert bright_corner(mpr.render(Plane.SAGITTAL, 0, PLAIN)) == ("top", "left")
    assert mpr.to_display((9, 0, 0) if direction is None else (0, 0, 29)) == (0, 0, 0)


def test_aspect_ratio_comes_from_the_voxel_spacing() -> None:
    mpr = MPR(Volume(np.zeros((40, 200, 100), np.int16), (5.0, 0.5, 1.0)))
    # axial: 200 x 0.5 mm rows = 100 mm, 100 x 1 mm columns = 100 mm -> square
    assert mpr.render(Plane.AXIAL, 0, PLAIN).shape[:2] == (64, 64)
    # coronal: 40 x 5 mm = 200 mm high, 100 mm wide
    assert mpr.render(Plane.CORONAL, 0, PLAIN).shape[:2] == (64, 32)
    # sagittal: 200 mm high, 100 mm (anterior-posterior) wide
    assert mpr.image_size(Plane.SAGITTAL, 512) == (256, 512)


def test_window_maps_hounsfield_units_through_a_lookup_table() -> None:
    hu = np.array([-32768, -1350, -600, 150, 32767], np.int16)
    lung = WINDOW_PRESETS["lung"]
    assert lung.grey(hu).tolist() == [0, 0, 128, 255, 255]
    assert lung.grey(hu.astype(np.float32)).tolist() == lung.grey(hu).tolist()
    assert str(WINDOW_PRESETS["mediastinum"]) == "W400/L40"
    with pytest.raises(ValueError, match="window width must be >= 1 HU"):
        Window(0.0, 0.0)


def test_presets_and_custom_windows_change_the_image() -> None:
    hu = np.linspace(-1200, 1200, 40 * 40 * 4).astype(np.int16).reshape(4, 40, 40)
    mpr = MPR(Volume(hu, (1.0, 1.0, 1.0)))
    images = {name: mpr.render(Plane.AXIAL, 2, Layers(window=w, crosshair=False)) for name, w in WINDOW_PRESETS.items()}
    images["custom"] = mpr.render(Plane.AXIAL, 2, Layers(window=Window(-100.0, 50.0), crosshair=False))
    digests = {name: hash(image.tobytes()) for name, image in images.items()}
    assert len(set(digests.values())) == 4


def overlay_volume() -> tuple[Volume, Overlays]:
    """A 8x32x32 volume; overlays on a (2, 4, 4)-block grid: right lung left half, ground glass, saliency."""
    volume = Volume(np.full((8, 32, 32), -850, np.int16), (2.0, 1.0, 1.0))
    lungs = np.zeros((4, 8, 8), np.uint8)
    lungs[:, 2:6, 1:4] = 1  # array x < 16 is the patient's right (identity direction)
    lungs[:, 2:6, 4:7] = 2
    lesions = np.zeros_like(lungs)
    lesions[:, 3, 2] = 1
    lesions[:, 4, 5] = 2
    saliency = np.zeros(lungs.shape, np.float32)
    saliency[:, 4, 2] = 1.0
    return volume, Overlays((2, 4, 4), saliency, lungs, lesions, "covid19")


def test_overlays_toggle_and_draw_in_their_colours() -> None:
    volume, overlays = overlay_volume()
    mpr = MPR(volume, overlays)
    off = mpr.render(Plane.AXIAL, 3, Layers(saliency_opacity=0.0, crosshair=False, size_px=128))
    assert np.array_equal(off, MPR(volume).render(Plane.AXIAL, 3, Layers(crosshair=False, size_px=128)))
    contour = mpr.render(Plane.AXIAL, 3, Layers(saliency_opacity=0.0, lung_contour=True, crosshair=False, size_px=128))
    colours = {tuple(c) for c in contour.reshape(-1, 3)}
    assert RIGHT_LUNG_RGB in colours
    changed = np.any(contour != off, axis=2)
    assert 0 < changed.mean() < 0.2  # a contour, not a fill
    assert changed[:, :64].sum() > 0 and changed[:, 64:].sum() > 0  # both lungs
    lesions = mpr.render(Plane.AXIAL, 3, Layers(saliency_opacity=0.0, lesion_opacity=1.0, crosshair=False, size_px=128))
    colours = {tuple(c) for c in lesions.reshape(-1, 3)}
    assert GGO_RGB in colours and CONSOLIDATION_RGB in colours
    heat = mpr.render(Plane.AXIAL, 3, Layers(saliency_opacity=1.0, crosshair=False, size_px=128))
    red = (heat[..., 0].astype(int) - heat[..., 2].astype(int)) > 100
    rows, cols = np.nonzero(red)
    assert red.any() and 64 < rows.mean() < 96 and cols.mean() < 64  # right lung, posterior half
    assert mpr.start_cursor() == mpr.to_display(overlays.most_salient() or (0, 0, 0))


def test_a_findings_decision_opens_on_the_densest_opacity_not_the_saliency_peak() -> None:
    _, overlays = overlay_volume()
    lesions = np.zeros_like(overlays.lesions)
    lesions[1:4, 5:8, 5:8] = 1  # a 3x3x3 block far from the saliency peak, and a lone voxel
    lesions[0, 1, 1] = 2
    by_network = replace(overlays, lesions=lesions)
    by_findings = replace(overlays, lesions=lesions, evidence="findings")
    assert by_network.opening_point() == by_network.most_salient()
    assert by_findings.decided_by_findings and not by_network.decided_by_findings
    assert by_findings.opening_point() == (2 * 2, 6 * 4 + 1, 6 * 4 + 1)  # the block's centre, in source indices
    assert replace(by_findings, lesions=np.zeros_like(lesions)).opening_point() == overlays.most_salient()


def test_crosshair_marks_the_other_views_and_leaves_the_point_free() -> None:
    volume, _ = overlay_volume()
    mpr = MPR(volume)
    plain = mpr.render(Plane.AXIAL, 3, Layers(crosshair=False, size_px=128))
    cross = mpr.render(Plane.AXIAL, 3, Layers(size_px=128), cursor=(3, 8, 24))
    changed = np.any(cross != plain, axis=2)
    row, col = round((8.5 / 32) * 128 - 0.5), round((24.5 / 32) * 128 - 0.5)
    assert changed[row, :10].all() and changed[-10:, col].all()
    assert not changed[row, col]  # the gap around the point


def test_render_refuses_slices_outside_the_view() -> None:
    mpr = MPR(Volume(np.zeros((4, 8, 8), np.int16), (1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match=r"axial slice must be in \[0, 3\], not 4"):
        mpr.render(Plane.AXIAL, 4)
    with pytest.raises(ValueError, match="overlay lungs must have the grid shape"):
        MPR(mpr.volume, Overlays((2, 2, 2), lungs=np.zeros((1, 1, 1), np.uint8)))


def test_png_and_colour_bar() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgb)))), rgb)
    bar = saliency_colorbar(100, 10)
    assert bar.shape == (10, 100, 3) and bar[0, 0].tolist() == [217, 0, 0] and bar[0, -1].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="uint8"):
        encode_png(rgb.astype(np.float32))


def test_overlays_of_a_prediction_sit_on_the_quantification_grid(
    shipped_classifier: Classifier, small_phantom: Callable[..., synthetic.Phantom]
) -> None:
    phantom = small_phantom("covid19", 0.3, 3)
    prediction = shipped_classifier.predict(phantom.volume)
    overlays = Overlays.from_prediction(prediction)
    assert overlays.saliency is not None and overlays.lungs is not None
    assert overlays.saliency.shape == prediction.quantification.grid.shape == overlays.lungs.shape
    assert float(overlays.saliency.min()) >= 0.0 and float(overlays.saliency.max()) <= 1.0
    assert not overlays.saliency[overlays.lungs == 0].any()
    mpr = MPR(phantom.volume, overlays)
    cursor = mpr.start_cursor()
    for plane in Plane:
        rgb = mpr.render(plane, cursor[plane.normal_axis], Layers(lung_contour=True), cursor=cursor)
        assert rgb.dtype == np.uint8 and rgb.shape[2] == 3 and max(rgb.shape[:2]) == 512
