"""Tests of medai.quantify.measure: unit behaviour on hand-made volumes, accuracy on held-out phantoms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from scipy import ndimage

from medai.errors import InvalidSeriesError
from medai.labels import CLASS_NAMES, LESION_NOISE_FLOOR_PERCENT, Severity, severity_from_percent
from medai.quantify.grid import QuantGrid, block_mean, coarse_grid, upsample_mask
from medai.quantify.head import DEFAULT_QUANT_MODEL
from medai.quantify.measure import Quantification, Side, Zone, quantify
from medai.quantify.params import QuantifyParams, QuantMethod
from medai.volume import Volume

if TYPE_CHECKING:
    from medai.phantoms.independent import IndependentPhantom

CLASSICAL = QuantifyParams(method=QuantMethod.CLASSICAL)
LEARNED = QuantifyParams(method=QuantMethod.LEARNED)
_NO_HEAD = pytest.mark.skipif(not DEFAULT_QUANT_MODEL.is_file(), reason="models/medai-quant.onnx is not shipped")
BOTH_METHODS = [CLASSICAL, pytest.param(LEARNED, marks=_NO_HEAD), pytest.param(QuantifyParams(), marks=_NO_HEAD)]

# --- severity mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "expected"),
    [
        (0.0, Severity.CT_0),
        (LESION_NOISE_FLOOR_PERCENT / 10, Severity.CT_0),
        (LESION_NOISE_FLOOR_PERCENT, Severity.CT_1),
        (0.99, Severity.CT_0),
        (1.0, Severity.CT_1),
        (24.99, Severity.CT_1),
        (25.0, Severity.CT_2),
        (49.99, Severity.CT_2),
        (50.0, Severity.CT_3),
        (74.99, Severity.CT_3),
        (75.0, Severity.CT_4),
        (100.0, Severity.CT_4),
    ],
)
def test_severity_from_percent_edges(percent: float, expected: Severity) -> None:
    assert severity_from_percent(percent) is expected


@pytest.mark.parametrize("bad", [-0.1, 100.5, float("nan")])
def test_severity_from_percent_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="lesion_percent must be a number in"):
        severity_from_percent(bad)


def test_severity_grade_and_text() -> None:
    assert [s.grade for s in Severity] == [0, 1, 2, 3, 4]
    assert str(Severity.CT_3) == "CT-3"


# --- grid ----------------------------------------------------------------------------------------


def test_block_mean_matches_reshape_mean_and_drops_tails() -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3000, size=(9, 17, 18)).astype(np.int16)
    got = block_mean(hu, (2, 4, 3))
    ref = hu[:8, :16, :18].astype(np.float64).reshape(4, 2, 4, 4, 6, 3).mean(axis=(1, 3, 5))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-3)
    np.testing.assert_allclose(block_mean(hu.astype(np.float32), (2, 4, 3)), ref, atol=1e-2)


def test_block_mean_in_slabs_with_a_partial_last_one() -> None:
    """A series big enough for several cache-sized passes (the last one short) gives the one-pass result."""
    hu = np.random.default_rng(1).integers(-1024, 3000, size=(41, 512, 516)).astype(np.int16)
    ref = hu.astype(np.float64).reshape(41, 1, 128, 4, 129, 4).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(block_mean(hu, (1, 4, 4)), ref, atol=1e-3)


def test_coarse_grid_factors_follow_spacing() -> None:
    assert coarse_grid((1.25, 0.7, 0.7), (300, 512, 512)).factors == (2, 4, 4)
    assert coarse_grid((5.0, 0.6, 0.6), (60, 512, 512)).factors == (1, 4, 4)
    assert coarse_grid((0.625, 1.4, 1.4), (400, 256, 256)).factors == (4, 2, 2)


def test_upsample_mask_repeats_and_fills_tails() -> None:
    grid = QuantGrid((2, 4, 3), (9, 17, 18), (2.0, 2.0, 1.5))
    mask = np.arange(np.prod(grid.shape), dtype=np.uint8).reshape(grid.shape)
    full = grid.upsample(mask)
    assert full.shape == (9, 17, 18)
    assert full[0, 0, 0] == mask[0, 0, 0] and full[1, 3, 2] == mask[0, 0, 0]
    assert full[8, 16, 17] == mask[-1, -1, -1]
    centre = grid.to_source_index(np.array([1, 2, 3]))
    assert full[tuple(int(c) for c in centre)] == mask[1, 2, 3]
    with pytest.raises(ValueError, match="shape must be the source shape"):
        upsample_mask(mask, (2, 4, 3), (20, 17, 18))


# --- a hand-made chest -----------------------------------------------------------------------------


def _toy_chest(*, flip_x: bool = False) -> tuple[Volume, np.ndarray, np.ndarray]:
    """Body, two lungs, a trachea joining them, a pleural consolidation (right) and GGO (left).

    Returns the volume (right lung at low x unless ``flip_x``) and the true lung (0/1/2) and
    lesion masks. Voxels 2.5 mm, z index increasing superiorly.
    """
    rng = np.random.default_rng(5)
    nz, ny, nx = 48, 96, 112
    z, y, x = np.mgrid[:nz, :ny, :nx].astype(np.float32)
    hu = np.full((nz, ny, nx), -1000.0, np.float32)
    body = ((y - 48) / 40) ** 2 + ((x - 56) / 52) ** 2 < 1
    hu[body] = 40.0
    lungs = np.zeros((nz, ny, nx), np.uint8)
    for label, cx in ((1, 33.0), (2, 79.0)):
        inside = ((y - 48) / 27) ** 2 + ((x - cx) / 16) ** 2 + ((z - 22) / 20) ** 2 < 1
        lungs[inside] = label
    hu[lungs > 0] = -850.0
    trachea = ((y - 40) ** 2 + (x - 56) ** 2 < 9) & (z >= 30)
    for cx in (40.0, 72.0):  # main bronchi towards each lung
        t = np.clip((x - 56) / (cx - 56), 0, 1)
        trachea |= (((y - 40) ** 2 + (z - (30 - 2 * t)) ** 2) < 5) & (t > 0) & (t < 1)
    hu[trachea & (lungs == 0)] = -1000.0
    lesion = np.zeros_like(lungs)
    # 25 mm wide at the pleura: within what the closing (20 mm ball) restores
    pleural = (((y - 48) / 5) ** 2 + ((x - 17) / 7) ** 2 + ((z - 20) / 4) ** 2 < 1) & (lungs == 1)
    hu[pleural] = 30.0
    lesion[pleural] = 2
    ggo = (((y - 50) / 7) ** 2 + ((x - 80) / 6) ** 2 + ((z - 24) / 5) ** 2 < 1) & (lungs == 2)
    hu[ggo] = -550.0
    lesion[ggo] = 1
    hu += rng.normal(0, 10, hu.shape).astype(np.float32)
    direction = np.eye(3)
    if flip_x:
        hu, lungs, lesion = hu[..., ::-1], lungs[..., ::-1], lesion[..., ::-1]
        direction = np.diag([-1.0, 1.0, 1.0])  # array x runs to the patient's right
    vol = Volume(np.ascontiguousarray(hu).astype(np.int16), spacing_mm=(2.5, 2.5, 2.5), direction=direction)
    return vol, np.ascontiguousarray(lungs), np.ascontiguousarray(lesion)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


@pytest.mark.parametrize("flip_x", [False, True])
def test_toy_chest_lungs_sides_and_dense_pathology(flip_x: bool) -> None:
    vol, lungs, lesion = _toy_chest(flip_x=flip_x)
    q = quantify(vol, params=CLASSICAL)
    assert q.grid.factors == (1, 1, 1)
    for label in (1, 2):  # 1 = right whatever the array orientation
        assert _dice(q.lung_mask == label, lungs == label) > 0.95
    assert (q.lung_mask[lesion == 2] > 0).mean() > 0.9, "pleural consolidation must be inside the lung mask"
    trachea_top = vol.hu[40:] < -950
    assert not (q.lung_mask[40:] > 0)[trachea_top].any(), "trachea must be excluded"
    assert _dice(q.lesion_mask == 2, lesion == 2) > 0.8
    assert _dice(q.lesion_mask == 1, lesion == 1) > 0.7
    true_percent = 100 * (lesion > 0).sum() / (lungs > 0).sum()
    assert q.lesion_percent == pytest.approx(true_percent, abs=1.0)
    for label, got in ((1, q.right_lesion_percent), (2, q.left_lesion_percent)):
        assert got == pytest.approx(100 * (lesion[lungs == label] > 0).mean(), abs=1.0)
    assert q.zone_lesion_percent[(Side.RIGHT, Zone.MIDDLE)] > q.zone_lesion_percent[(Side.RIGHT, Zone.UPPER)]
    assert q.severity is Severity.CT_1
    assert q.lung_volume_ml == pytest.approx(q.right_lung_volume_ml + q.left_lung_volume_ml)


@pytest.mark.parametrize("sizes", [(3, 3, 3), (1, 5, 3), (7, 1, 9)])
def test_grey_opening_matches_scipy(sizes: tuple[int, int, int]) -> None:
    from medai.quantify.opacities import _grey_opening

    values = np.random.default_rng(1).normal(size=(4, 9, 6)).astype(np.float32)[:, 1:, :]  # a view, as served
    expected = values
    for axis, size in enumerate(sizes):
        expected = ndimage.minimum_filter1d(expected, size, axis=axis, mode="nearest")
    for axis, size in enumerate(sizes):
        expected = ndimage.maximum_filter1d(expected, size, axis=axis, mode="nearest")
    got = _grey_opening(values, sizes)
    np.testing.assert_array_equal(got, expected)
    assert not np.shares_memory(got, values)


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 2), (0,)])
@pytest.mark.parametrize("border", [False, True])
def test_erode_and_dilate_match_scipy(axes: tuple[int, ...], border: bool) -> None:
    from medai.quantify.opacities import _dilate, _erode

    mask = np.random.default_rng(2).random((6, 9, 7)) < 0.7
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1, 1, 1] = True
    for axis in axes:
        for v in (0, 2):
            index = [1, 1, 1]
            index[axis] = v
            cross[tuple(index)] = True
    expected = ndimage.binary_erosion(mask, structure=cross, border_value=int(border))
    np.testing.assert_array_equal(_erode(mask, axes, border=border), expected)
    np.testing.assert_array_equal(_dilate(mask, axes), ndimage.binary_dilation(mask, structure=cross))


def test_neighbour_maximum_is_a_6_neighbour_grey_dilation() -> None:
    from medai.quantify.grid import neighbour_extreme

    labels = np.random.default_rng(0).integers(0, 3, (5, 7, 6)).astype(np.uint8)
    cross = ndimage.generate_binary_structure(3, 1)
    expected = ndimage.grey_dilation(labels, footprint=cross, mode="constant", cval=0)
    np.testing.assert_array_equal(neighbour_extreme(labels, (0, 1, 2), np.maximum), expected)


@_NO_HEAD
def test_aerated_rim_gives_back_thin_lung_on_thick_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thick slices (4.5 mm), lesion-free: the rim step brings the lungs closer to the truth."""
    from dataclasses import replace

    from medai.quantify import measure

    for later_step in ("peel_surface_fat", "drop_detached_parts"):  # the rim alone
        monkeypatch.setattr(measure, later_step, lambda sides, *_, **__: sides)

    spec = synthetic.sample_spec(np.random.default_rng(5003), label="normal", split="heldout")
    acq = synthetic.Acquisition(
        slice_thickness_mm=4.5, pixel_spacing_mm=2.6, matrix=128, noise_hu=40, kernel_sharpness=0.95
    )
    ph = synthetic.generate(replace(spec, acquisition=acq), fast=True)
    no_trim = 1000.0  # the base trim alone, without the rim, would cut what the rim's voxels let stay
    alone = {"base_margin_mm": no_trim, "support_min_contact": 0.0, "support_fat_contact": 0.0}  # the rim alone
    with_rim = quantify(ph.volume, params=QuantifyParams(**alone))
    without = quantify(ph.volume, params=QuantifyParams(rim_steps=0, **alone))
    truth = ph.lung_mask > 0
    dice_with = _dice(with_rim.grid.upsample(with_rim.lung_mask) > 0, truth)
    dice_without = _dice(without.grid.upsample(without.lung_mask) > 0, truth)
    assert dice_with >= dice_without + 0.005, (dice_with, dice_without)
    assert with_rim.lung_volume_ml > without.lung_volume_ml
    # nothing outside the body: every added voxel touches the lungs found without the rim
    added = (with_rim.lung_mask > 0) & (without.lung_mask == 0)
    assert np.all(ndimage.binary_dilation(without.lung_mask > 0)[added])


@_NO_HEAD
def test_hybrid_is_the_default_learned_lungs_with_classical_opacities() -> None:
    vol, _, _ = _toy_chest()
    assert QuantifyParams().method is QuantMethod.HYBRID
    hybrid = quantify(vol)
    learned = quantify(vol, params=LEARNED)
    # The learned lungs plus the aerated rim around them: each added voxel is mostly air (block mean below
    # rim_threshold_hu), touches the learned lung of its side and lies inside the body. What goes of the learned
    # lungs here is detached from its side's main part (drop_detached_parts; no fat in this toy).
    added = (hybrid.lung_mask > 0) & (learned.lung_mask == 0)
    kept = hybrid.lung_mask > 0
    both = (learned.lung_mask > 0) & kept
    np.testing.assert_array_equal(hybrid.lung_mask[both], learned.lung_mask[both])
    for side in (1, 2):
        labels, _ = ndimage.label(learned.lung_mask == side)
        main = np.bincount(labels.ravel())[1:].argmax() + 1
        assert not ((labels == main) & ~kept).any()
    assert 0 < added.sum() < 0.1 * (learned.lung_mask > 0).sum()
    coarse = block_mean(vol.hu, hybrid.grid.factors)
    assert coarse[added].max() < QuantifyParams().rim_threshold_hu
    for side in (1, 2):
        grown = ndimage.binary_dilation(learned.lung_mask == side)
        assert np.all(grown[added & (hybrid.lung_mask == side)])
    same_lungs = quantify(vol, lung_mask=hybrid.lung_mask, params=CLASSICAL)
    np.testing.assert_array_equal(hybrid.lesion_mask, same_lungs.lesion_mask)
    assert hybrid.lesion_percent == pytest.approx(same_lungs.lesion_percent)
    assert "hybrid" in hybrid.method and "medai-quant" in hybrid.method


@pytest.mark.parametrize("params", BOTH_METHODS)
def test_supplied_lung_mask_is_reused(params: QuantifyParams) -> None:
    vol, lungs, _lesion = _toy_chest()
    q = quantify(vol, lung_mask=lungs, params=params)
    np.testing.assert_array_equal(q.lung_mask, lungs)
    assert q.lung_volume_ml == pytest.approx((lungs > 0).sum() * 2.5**3 / 1000)
    q_bool = quantify(vol, lung_mask=lungs > 0, params=params)
    assert _dice(q_bool.lung_mask == 1, lungs == 1) > 0.99
    with pytest.raises(ValueError, match="lung_mask must have the volume's shape"):
        quantify(vol, lung_mask=lungs[:-1], params=params)
    with pytest.raises(ValueError, match="lung_mask must be bool or integers 0/1/2"):
        quantify(vol, lung_mask=lungs * 3, params=params)


@pytest.mark.parametrize("params", BOTH_METHODS)
def test_empty_volume_has_no_lungs(params: QuantifyParams) -> None:
    q = quantify(Volume(np.full((6, 32, 32), 40, np.int16), spacing_mm=(2.5, 2.5, 2.5)), params=params)
    assert q.lung_volume_ml == 0 and q.lesion_percent == 0 and q.severity is Severity.CT_0


@pytest.mark.parametrize("params", BOTH_METHODS)
def test_non_axial_volume_is_refused(params: QuantifyParams) -> None:
    coronal = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    vol = Volume(np.zeros((4, 8, 8), np.int16), spacing_mm=(1, 1, 1), direction=coronal)
    with pytest.raises(InvalidSeriesError, match="must be axial"):
        quantify(vol, params=params)


def test_to_dict_flattens_zones() -> None:
    vol, _, _ = _toy_chest()
    d = quantify(vol, params=CLASSICAL).to_dict()
    assert d["severity"] == "CT-1"
    assert {"right_upper_lesion_percent", "left_lower_lesion_percent"} <= set(d)
    assert all(isinstance(v, float) for k, v in d.items() if k.endswith("_percent"))


def _bitten_chest(*, gradient_hu: float = 0.0, lung_hu: float = -850.0) -> tuple[Volume, np.ndarray]:
    """The toy chest with ribs, both lungs bitten laterally by a 45 mm consolidation (mirror images of each
    other, too wide for the closing), and dependent lung ``gradient_hu`` denser at the back than the front."""
    vol, lungs, _ = _toy_chest()
    hu = vol.hu.astype(np.float32)
    nz, ny, nx = hu.shape
    z, y, x = np.mgrid[:nz, :ny, :nx].astype(np.float32)
    ring = np.abs(np.sqrt(((y - 48) / 36) ** 2 + ((x - 56) / 47) ** 2) - 1) < 0.04
    hu[ring & (np.sin(z / 2) > -0.3)] = 600.0  # ribs, with intercostal gaps
    bite = np.zeros(lungs.shape, bool)
    for cx in (17.0, 95.0):
        bite |= (((y - 48) / 9) ** 2 + ((x - cx) / 9) ** 2 + ((z - 22) / 8) ** 2 < 1) & (lungs > 0)
    aerated = (lungs > 0) & ~bite
    hu[aerated] += lung_hu + 850.0 + gradient_hu * (y[aerated] - 48) / 27 / 2
    hu[bite] = 20.0
    return vol.with_array(np.rint(hu).astype(np.int16)), bite


def test_lateral_envelope_gives_back_bilateral_pleural_consolidation() -> None:
    vol, bite = _bitten_chest()
    truth = _toy_chest()[1] > 0
    q = quantify(vol, params=CLASSICAL)
    without = quantify(vol, params=QuantifyParams(method=QuantMethod.CLASSICAL, lateral_envelope_mm=0.0))
    inside_with = float((q.lung_mask[bite] > 0).mean())
    inside_without = float((without.lung_mask[bite] > 0).mean())
    assert inside_with > 0.6 > inside_without + 0.3, (inside_with, inside_without)  # the outermost layer is
    # partial volume with the chest wall in every row, bitten or not
    added = (q.lung_mask > 0) & (without.lung_mask == 0)
    assert float(truth[added].mean()) > 0.95, "the envelope must not spill into the chest wall"
    assert _dice(q.lung_mask > 0, truth) > 0.99


def test_ground_glass_threshold_follows_the_dependent_gradient() -> None:
    """Dependent lung (-725 HU at the back, -855 in front) is not an opacity; faint ground glass in front is."""
    vol, _ = _bitten_chest(gradient_hu=130.0, lung_hu=-790.0)
    hu = vol.hu.copy()
    z, y, x = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    ggo = ((y - 38) / 6) ** 2 + ((x - 80) / 6) ** 2 + ((z - 26) / 5) ** 2 < 1
    hu[ggo] = -700
    q = quantify(vol.with_array(hu), params=CLASSICAL)
    posterior_aerated = (y > 60) & (q.lung_mask > 0) & (hu < -700)
    assert float((q.lesion_mask[posterior_aerated] > 0).mean()) < 0.02
    assert float((q.lesion_mask[ggo] == 1).mean()) > 0.6


# --- accuracy on held-out phantoms (seeds >= 10_000, never used for training) -----------------------

synthetic = pytest.importorskip("medai.phantoms.synthetic")

_SEVERITIES = (0.03, 0.2, 0.45, 0.1, 0.3, 0.55)


def _phantom_cases(n: int, *, matrix: int = 256, seed: int = 10_000, heldout: bool = False) -> list:
    """``n`` phantoms cycling through the classes and the severities above, patient seeds ``seed + i``.

    Train-like acquisitions (1.5-2 mm slices, FOV 350-410 mm, noise 6-30 HU) or, with ``heldout``,
    the held-out ranges of :func:`medai.phantoms.synthetic.sample_acquisition`.
    """
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        label = CLASS_NAMES[i % 3]
        if heldout:
            acq = synthetic.sample_acquisition(rng, split="heldout", matrix=matrix)
        else:
            acq = synthetic.Acquisition(
                slice_thickness_mm=round(float(rng.uniform(1.5, 2.0)), 2),
                pixel_spacing_mm=round(float(rng.uniform(350, 410)) / matrix, 3),
                matrix=matrix,
                noise_hu=round(float(rng.uniform(6, 30)), 1),
                kernel_sharpness=round(float(rng.uniform(0.15, 0.8)), 2),
                patient_scale=round(float(rng.uniform(0.9, 1.1)), 2),
            )
        severity = 0.0 if label == "normal" else _SEVERITIES[i % len(_SEVERITIES)]
        cases.append(synthetic.generate(synthetic.PhantomSpec(label, severity, seed + i, acq), fast=True))
    return cases


@pytest.fixture(scope="module")
def phantoms() -> list:
    return _phantom_cases(9)


@pytest.fixture(scope="module")
def phantom_results(phantoms: list) -> list[tuple[object, object]]:
    return [(ph, quantify(ph.volume)) for ph in phantoms]


def _meets_targets(results: list) -> None:
    """Issue 4 targets: lung Dice >= 0.95, lesion % MAE <= 3 points, grade accuracy >= 90 %."""
    dice = [_dice(q.grid.upsample(q.lung_mask) > 0, ph.lung_mask > 0) for ph, q in results]
    errors = [abs(q.lesion_percent - ph.lesion_percent) for ph, q in results]
    grades = [severity_from_percent(ph.lesion_percent) is q.severity for ph, q in results]
    assert min(dice) >= 0.95 and float(np.mean(errors)) <= 3.0 and np.mean(grades) >= 0.9, (dice, errors, grades)


@_NO_HEAD
@pytest.mark.xfail(
    reason="the learned head alone under-counts one COVID-19 case (30 % reads 4.9 %), lobar Dice 0.91-0.93",
    strict=True,
)
def test_learned_head_meets_targets(phantoms: list) -> None:
    _meets_targets([(ph, quantify(ph.volume, params=LEARNED)) for ph in phantoms])


def test_phantom_lungs_without_lobar_consolidation(phantom_results: list) -> None:
    """What works today: normal and COVID-19 phantoms (peripheral multifocal opacities)."""
    for ph, q in phantom_results:
        if ph.spec.label == "other_pneumonia":
            continue
        lungs = q.grid.upsample(q.lung_mask)
        assert _dice(lungs > 0, ph.lung_mask > 0) >= 0.93, ph.spec
        right, left = _dice(lungs == 1, ph.lung_mask == 1), _dice(lungs == 2, ph.lung_mask == 2)
        assert min(right, left) >= 0.92, ph.spec
        assert right > _dice(lungs == 1, ph.lung_mask == 2), "right and left swapped"
        assert 2000 <= q.lung_volume_ml <= 9000
        assert abs(q.lesion_percent - ph.lesion_percent) <= 10.0, ph.spec


_TARGETS_NOT_MET = (
    "targets not met on these 9 thin-slice phantoms (asked of every case here): lung Dice 0.914 and 0.943 on the two "
    "lobar cases (>= 0.95 asked), grade 8/9 (a COVID-19 case at 30 % reads 22 %), lesion % MAE 3.09 (<= 3 asked: "
    "medai.quantify/13's vessel-rim rule takes 0.3 and 0.6 points off a COVID-19 and an other pneumonia case; 2.99 "
    "with the issue-13 head and /11 and /12, whose band rule takes 0.3 and 0.9 points off two COVID-19 cases; "
    "2.86 with /10, 2.85 with /8 and /9, 2.46 with /7, whose fat rule did not peel the pleural part of this "
    "world's -100 HU consolidation; docs/ood.md)"
)


@pytest.mark.xfail(reason=_TARGETS_NOT_MET, strict=True)
def test_phantom_lungs_match_ground_truth(phantom_results: list) -> None:
    for ph, q in phantom_results:
        lungs = q.grid.upsample(q.lung_mask)
        assert _dice(lungs > 0, ph.lung_mask > 0) >= 0.95, ph.spec
        right, left = _dice(lungs == 1, ph.lung_mask == 1), _dice(lungs == 2, ph.lung_mask == 2)
        assert min(right, left) >= 0.93, ph.spec
        assert right > _dice(lungs == 1, ph.lung_mask == 2), "right and left swapped"
        assert 2000 <= q.lung_volume_ml <= 9000


@pytest.mark.xfail(reason=_TARGETS_NOT_MET, strict=True)
def test_phantom_lesion_percent_and_grade(phantom_results: list) -> None:
    errors = [abs(q.lesion_percent - ph.lesion_percent) for ph, q in phantom_results]
    assert float(np.mean(errors)) <= 3.0, errors
    diseased = [(ph, q) for ph, q in phantom_results if ph.spec.label != "normal"]
    assert all(q.lesion_percent > 0.5 * ph.lesion_percent for ph, q in diseased)
    grades = [severity_from_percent(ph.lesion_percent) is q.severity for ph, q in phantom_results]
    assert np.mean(grades) >= 0.9, grades


def test_massive_lobar_consolidation_keeps_the_lung() -> None:
    """The learned head follows a consolidated lung (a strict xfail until the issue-13 head)."""
    acq = synthetic.Acquisition(slice_thickness_mm=2.5, pixel_spacing_mm=3.0, matrix=128, noise_hu=20.0)
    ph = synthetic.generate(synthetic.PhantomSpec("other_pneumonia", 0.85, 10_005, acq), fast=True)
    q = quantify(ph.volume)
    assert _dice(q.grid.upsample(q.lung_mask) > 0, ph.lung_mask > 0) >= 0.95


def test_symmetry_prior_recovers_a_consolidated_lung() -> None:
    """Thick noisy slices, the right lung largely consolidated (lobar, severity 0.55): the mirror gives it back."""
    acq = synthetic.Acquisition(
        slice_thickness_mm=4.5, pixel_spacing_mm=2.6, matrix=128, noise_hu=40, kernel_sharpness=0.95
    )
    ph = synthetic.generate(synthetic.PhantomSpec("other_pneumonia", 0.55, 1001, acq), fast=True)
    assert ph.pattern == "lobar"
    with_prior = quantify(ph.volume, params=CLASSICAL)
    without = quantify(ph.volume, params=QuantifyParams(method=QuantMethod.CLASSICAL, symmetry_coverage=0.0))
    right_with = _dice(with_prior.grid.upsample(with_prior.lung_mask) == 1, ph.lung_mask == 1)
    right_without = _dice(without.grid.upsample(without.lung_mask) == 1, ph.lung_mask == 1)
    assert right_with >= 0.75 > right_without + 0.3, (right_with, right_without)
    assert abs(with_prior.lesion_percent - ph.lesion_percent) <= 10.0  # the classical fallback under-reads it


@pytest.mark.slow
def test_phantom_sweep_heldout_acquisitions() -> None:
    phantoms = _phantom_cases(24, seed=20_000, heldout=True)
    results = [(ph, quantify(ph.volume)) for ph in phantoms]
    dice = [_dice(q.grid.upsample(q.lung_mask) > 0, ph.lung_mask > 0) for ph, q in results]
    errors = [abs(q.lesion_percent - ph.lesion_percent) for ph, q in results]
    assert np.median(dice) >= 0.95 and np.mean(errors) <= 5.0


def test_dense_tissue_that_no_aerated_lung_borders_is_not_lung() -> None:
    """A fat-like blob glued to a lung by one small face (a pericardial fat pad, tissue above the apex) is
    dropped; a consolidation inside the same lung, bordered by aerated lung, stays; so does the blob at
    soft-tissue density with the same border (that could be a consolidation reaching the chest wall)."""
    from medai.quantify.lungs import drop_unsupported_dense

    sides = np.zeros((30, 40, 40), np.uint8)
    sides[2:28, 5:35, 5:20] = 1
    hu = np.full(sides.shape, -850.0)
    hu[10:18, 12:20, 8:14] = 20.0  # a consolidation inside the lung
    blob = (slice(2, 10), slice(5, 15), slice(20, 38))
    sides[blob] = 1  # a block the segmenter added beside the lung, touching it by its 8x10 end only ...
    hu[blob] = -95.0  # ... and fat
    params = QuantifyParams()
    out = drop_unsupported_dense(sides, hu, (3.0, 3.0, 3.0), params=params)
    assert not out[blob].any()  # the fat is gone
    assert (out[:, :, :20] == sides[:, :, :20]).all()  # the lung and its consolidation stay
    soft = hu.copy()
    soft[blob] = 30.0
    assert drop_unsupported_dense(sides, soft, (3.0, 3.0, 3.0), params=params)[blob].all()
    # nothing aerated beside it at all: dropped whatever its density
    alone = sides.copy()
    alone[2:10, 5:15, 19] = 0
    hu_alone = soft.copy()
    assert not drop_unsupported_dense(alone, hu_alone, (3.0, 3.0, 3.0), params=params)[blob].any()


def test_expiration_lung_is_baseline_and_its_ground_glass_is_found() -> None:
    """An expiration scan (aerated lung -710 HU in front to -570 at the back, none below -760) is not ground glass;
    a patch 200 HU above it is."""
    vol, lungs, _ = _toy_chest()
    hu = vol.hu.astype(np.float32)
    z, y, x = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    aerated = (lungs > 0) & (hu < -700)
    hu[aerated] += 850.0 - 640.0 + 140.0 * (y[aerated] - 48) / 54
    patch = (((y - 40) / 6) ** 2 + ((x - 33) / 6) ** 2 + ((z - 24) / 5) ** 2 < 1) & (lungs == 1)
    hu[patch] = -460.0
    q = quantify(vol.with_array(np.rint(hu).astype(np.int16)), params=CLASSICAL)
    clear = (q.lung_mask > 0) & aerated & ~ndimage.binary_dilation(patch, iterations=3)
    assert float((q.lesion_mask[clear] > 0).mean()) < 0.03
    assert float((q.lesion_mask[patch] > 0).mean()) > 0.6
    assert q.expiration and q.to_dict()["expiration"]  # and it says it read the scan so (a QC flag downstream)


def _half_expired_chest() -> tuple[Volume, np.ndarray]:
    """The toy chest's aerated lung from -800 HU in front to -670 at the back (clear in front, dense behind: a
    quarter of it below -760), with noise. Returns the volume and the aerated lung."""
    vol, lungs, _ = _toy_chest()
    hu = vol.hu.astype(np.float32)
    y = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]][1]
    aerated = (lungs > 0) & (hu < -700)
    hu[aerated] = -735.0 + 65.0 * (y[aerated] - 48) / 27 + np.random.default_rng(3).normal(0, 15, int(aerated.sum()))
    return vol.with_array(np.rint(hu).astype(np.int16)), aerated


def _patchy_dependent_chest(coverage: float) -> tuple[Volume, np.ndarray]:
    """The toy chest (clear lung, -850 HU) with ``coverage`` % of its dependent half in faint ground glass
    (-680 HU) blobs about 15 mm across. Returns the volume and the blobs."""
    vol, lungs, _ = _toy_chest()
    hu = vol.hu.astype(np.float32)
    y = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]][1]
    back = (lungs > 0) & (hu < -700) & (y > 48)
    blobs = ndimage.gaussian_filter(np.random.default_rng(4).normal(size=hu.shape), 2.5)
    ggo = back & (blobs > np.percentile(blobs[back], 100.0 - coverage))
    hu[ggo] += 170.0
    return vol.with_array(np.rint(hu).astype(np.int16)), ggo


def test_dense_dependent_lung_is_baseline_where_the_front_is_clear() -> None:
    """A half-expired lung (clear in front, -670 HU behind) is not ground glass: the median of the few clear
    voxels of its dense slabs is censored far below them, and that read a held-out normal as 28.6 % lesion."""
    vol, aerated = _half_expired_chest()
    q = quantify(vol, params=CLASSICAL)
    assert float((q.lesion_mask[aerated & (q.lung_mask > 0)] > 0).mean()) < 0.03
    assert not q.expiration  # its clear front is read as such: not an expiration scan


def test_ground_glass_filling_the_dependent_lung_is_not_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faint ground glass over most of a clear lung's dependent half is found: its slabs are dense, but they rise
    from the clear lung in front faster than gravity does. Let the gravity bound go and they become baseline."""
    from medai.quantify import opacities

    vol, ggo = _patchy_dependent_chest(85.0)
    assert float((quantify(vol, params=CLASSICAL).lesion_mask[ggo] > 0).mean()) > 0.7
    monkeypatch.setattr(opacities, "MAX_GRADIENT_HU_PER_MM", 10.0)
    assert float((quantify(vol, params=CLASSICAL).lesion_mask[ggo] > 0).mean()) < 0.6


@pytest.mark.parametrize("tail", [True, False])
def test_a_censored_slab_is_read_at_its_parenchyma(tail: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lung whose parenchyma (40 HU of texture) rises by gravity from -880 HU in front to -740 behind: the back
    slabs have a third to a half of their voxels under -760 HU. The median of those, and the low quantile of a
    dense slab, read 15-19 HU under the parenchyma (a shallow breath's texture then crosses the 40 HU margin as
    "ground glass"); read by their low tail and the front's texture they are within a few HU of it."""
    from medai.quantify import opacities

    if not tail:
        monkeypatch.setattr(opacities, "_uncensored_level", lambda level, *_: level)  # the old reading
    rng = np.random.default_rng(3)
    parenchyma = np.linspace(-880.0, -740.0, 80)  # 0.7 HU per mm over 200 mm, rows 2.5 mm apart
    value = (parenchyma[None, :, None] + rng.normal(0.0, 40.0, (20, 80, 30))).astype(np.float32)
    inner = np.ones(value.shape, bool)
    params = QuantifyParams()
    baseline = opacities._parenchyma_baseline(
        value, inner, ap_dim=1, ap_mm=2.5, params=params, expiration=opacities.expiration_scan(value, inner, params)
    )
    error = baseline[0, :, 0] - np.median(value, axis=(0, 2))
    if tail:
        assert np.abs(error).max() < 8.0
    else:
        assert error[-10:].mean() < -10.0


def _dependent_chest(*, whole_band: bool, spacing_mm: float) -> tuple[Volume, np.ndarray]:
    """The toy chest (voxels of ``spacing_mm``) with 12.5 mm of -520 HU under its posterior pleura: along all
    of it, or one patch of it."""
    vol, lungs, _ = _toy_chest()
    hu = vol.hu.astype(np.float32)
    z, y, x = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    depth = ndimage.distance_transform_edt(lungs > 0, sampling=spacing_mm)
    dense = (lungs > 0) & (depth <= 12.5) & (y > 58) & (hu < -700)
    if not whole_band:
        dense &= ((x - 79) / 9) ** 2 + ((z - 24) / 8) ** 2 < 1
    hu[dense] = -520.0
    return Volume(np.rint(hu).astype(np.int16), spacing_mm=(spacing_mm,) * 3), dense


@pytest.mark.parametrize("spacing_mm", [2.5, 3.0])  # 3 mm: no inner voxel within 4 mm of the pleura
@pytest.mark.parametrize("rule", [True, False])
def test_dependent_band_is_normal_lung_a_patch_of_it_is_not(
    rule: bool, spacing_mm: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A band of dependent density along the whole posterior pleura is normal lung; a patch of the same density
    and depth is a lesion. Without the dependent-density rule the band is counted too."""
    from medai.quantify import opacities

    if not rule:
        monkeypatch.setattr(opacities, "_dependent_density", lambda residual, *a, **k: np.zeros_like(residual))
    band_vol, band = _dependent_chest(whole_band=True, spacing_mm=spacing_mm)
    patch_vol, patch = _dependent_chest(whole_band=False, spacing_mm=spacing_mm)
    band_read = float((quantify(band_vol, params=CLASSICAL).lesion_mask[band] > 0).mean())
    assert float((quantify(patch_vol, params=CLASSICAL).lesion_mask[patch] > 0).mean()) > 0.5
    assert (band_read < 0.1) if rule else (band_read > 0.5), band_read


@pytest.mark.parametrize(("blob_hu", "kept"), [(-100.0, False), (20.0, True), (-220.0, True)])
def test_fat_inside_the_lung_mask_is_not_lung(blob_hu: float, kept: bool) -> None:
    """A dense blob that aerated lung borders all round stays lung as consolidation (20 HU) or dense ground glass
    (-220 HU); as fat (-100 HU, a pericardial fat pad a segmenter took in) it goes."""
    from medai.quantify.lungs import drop_unsupported_dense

    sides = np.zeros((20, 20, 20), np.uint8)
    sides[2:18, 2:18, 2:18] = 1
    rng = np.random.default_rng(0)
    hu = np.full(sides.shape, -850.0) + rng.normal(0, 15, sides.shape)
    blob = np.zeros(sides.shape, bool)
    blob[7:13, 7:13, 7:13] = True
    hu[blob] = blob_hu + rng.normal(0, 15, int(blob.sum()))
    out = drop_unsupported_dense(sides, hu, (3.0, 3.0, 3.0), params=QuantifyParams())
    assert bool((out[blob] > 0).all()) is kept
    assert bool((out[~blob] == sides[~blob]).all())


def test_detached_parts_above_the_apex_or_under_the_base_are_not_lung() -> None:
    """Air the lung head took in above the apex (between the neck and raised arms) or under the base (the stomach
    bubble under a dome) goes; a part beside the lung within its slices (a lobe cut off by a fissure) and a part
    as large as a lung stay."""
    from medai.quantify.lungs import drop_detached_parts

    sides = np.zeros((40, 30, 40), np.uint8)
    sides[8:34, 5:25, 3:18] = 1  # right lung, superior at high z
    sides[8:34, 5:25, 22:37] = 2  # left lung
    neck = (slice(36, 39), slice(10, 14), slice(5, 10))  # above the right apex
    bubble = (slice(2, 7), slice(8, 16), slice(26, 34))  # under the left base, in its columns
    beside = (slice(12, 20), slice(26, 29), slice(5, 12))  # within the right lung's slices, behind it
    sides[neck] = sides[beside] = 1
    sides[bubble] = 2
    out = drop_detached_parts(sides, sup_high=True)
    assert not out[neck].any() and not out[bubble].any()
    assert (out[beside] == 1).all()
    assert (out[8:34] == sides[8:34]).all()  # the lungs themselves are untouched
    # the same chest stored feet-first (superior at low z): the same parts go
    assert (drop_detached_parts(sides[::-1], sup_high=False) == out[::-1]).all()
    # a detached part of 30 % of its lung or more is not judged by position
    big = sides.copy()
    big[0:7, 5:25, 19:40] = 2  # 2,940 voxels under a lung of 7,800
    assert (drop_detached_parts(big, sup_high=True)[0:7, 5:25, 19:40] == 2).all()


def _independent_phantom(split: str, index: int, seed: int = 0) -> IndependentPhantom:
    """Case ``index`` of the independent family's ``split`` as ``medai.evaluation.worlds`` draws it (seed set
    ``seed``, 256 matrix), generating that case alone (the world would generate every case before it)."""
    from medai.phantoms.independent import generate_independent, sample_independent_spec

    rng = np.random.default_rng([seed, 0 if split == "val" else 1])
    specs = [sample_independent_spec(rng, label=CLASS_NAMES[i % 3], split=split, matrix=256) for i in range(index + 1)]
    return generate_independent(specs[index])


def test_air_around_the_neck_is_not_lung_on_an_independent_phantom(monkeypatch: pytest.MonkeyPatch) -> None:
    """The independent family's case 5 of its validation seeds (lobar pneumonia, neck and shoulders in the scan):
    the lung head takes in ~130 ml of air on each side above the apices; the served quantification does not."""
    from medai.quantify import measure

    ph = _independent_phantom("val", 5)
    truth = ndimage.binary_dilation(ph.lung_mask > 0, iterations=3)

    def extra_ml(q: Quantification) -> float:
        lungs = q.grid.upsample(q.lung_mask) > 0
        return float(np.count_nonzero(lungs & ~truth)) * ph.volume.voxel_volume_ml

    served = quantify(ph.volume)
    assert extra_ml(served) <= 50.0, extra_ml(served)
    assert abs(served.lung_volume_ml / ph.lung_volume_ml - 1.0) <= 0.03
    monkeypatch.setattr(measure, "drop_detached_parts", lambda sides, **_: sides)
    assert extra_ml(quantify(ph.volume)) >= 200.0  # what the rule removes


def test_stomach_gas_under_a_dome_is_not_lung_on_an_independent_phantom(monkeypatch: pytest.MonkeyPatch) -> None:
    """The independent family's case 23 of its validation seed set 3 (focal pneumonia, 1.2 % of the lungs; the
    stomach high under the left dome, joined to the lung mask through it): the lung head takes in ~165 ml of the
    stomach's gas, food and wall, read as 2.4 points of extra "consolidation"; the served quantification drops the
    gas the lungs' air cannot reach and what it reaches first."""
    from medai.quantify import measure

    ph = _independent_phantom("val", 23, seed=3)
    truth = ndimage.binary_dilation(ph.lung_mask > 0, iterations=3)

    def extra_ml(q: Quantification) -> float:
        lungs = q.grid.upsample(q.lung_mask) > 0
        return float(np.count_nonzero(lungs & ~truth)) * ph.volume.voxel_volume_ml

    served = quantify(ph.volume)
    monkeypatch.setattr(measure, "drop_gut_gas", lambda sides, *_, **__: sides)
    without = quantify(ph.volume)
    assert extra_ml(served) <= 120.0 and extra_ml(without) >= 200.0, (extra_ml(served), extra_ml(without))
    error, error_without = (abs(q.lesion_percent - ph.lesion_percent) for q in (served, without))
    assert error <= error_without - 0.8, (served.lesion_percent, without.lesion_percent, ph.lesion_percent)
    assert abs(served.lung_volume_ml / ph.lung_volume_ml - 1.0) <= 0.06


@pytest.mark.parametrize("kind", ["bronchogram", "island"])
def test_gas_in_a_consolidated_base_that_is_not_the_gut_stays(kind: str) -> None:
    """A consolidated lower lobe holds two kinds of aerated pockets the lungs' air does not reach: a bronchogram
    (a tube: nothing survives an erosion) and clear parenchyma cut off by the consolidation (round, but -780 HU,
    not gas). Neither is the gut's, and the consolidation around them stays; without the guard that tells them
    apart (roundness, or the mean below gas), the step takes them and the consolidation with them."""
    from medai.quantify.lungs import drop_gut_gas

    sides = np.zeros((30, 24, 24), np.uint8)
    sides[2:29, 1:23, 1:23] = 1
    hu = np.full(sides.shape, -850.0)
    consolidation = (slice(2, 12), slice(1, 23), slice(1, 23))  # the whole base, under aerated lung
    hu[consolidation] = 30.0
    if kind == "bronchogram":
        # a branching bronchus, 2 x 2 voxels across (6 mm), about 5 ml
        hu[3:11, 10:12, 10:12] = hu[6:8, 10:12, 2:22] = hu[6:8, 2:22, 10:12] = -1000.0
        guard_off = QuantifyParams(gut_gas_core_share=0.0)
    else:
        hu[4:10, 8:16, 8:16] = -780.0  # 10 ml of clear lung
        guard_off = QuantifyParams(gut_gas_max_hu=-700.0)
    kept = drop_gut_gas(sides, hu, (3.0, 3.0, 3.0), sup_high=True, params=QuantifyParams())
    assert (kept == sides).all()
    taken = drop_gut_gas(sides, hu, (3.0, 3.0, 3.0), sup_high=True, params=guard_off)
    assert int((taken[consolidation] == 0).sum()) > 200


def test_fat_reached_from_the_mask_surface_is_not_lung() -> None:
    """A fat layer (-100 HU) the lung head carried into on the chest-wall side goes, reached from the mask's
    surface; a pleural-based consolidation (20 HU) stays, and so does fat-density partial volume deep inside the
    lung (a consolidation's shell against aerated lung), which the surface does not reach."""
    from medai.quantify.lungs import peel_surface_fat

    sides = np.zeros((24, 30, 30), np.uint8)
    sides[2:22, 3:27, 3:27] = 1
    rng = np.random.default_rng(1)
    hu = np.full(sides.shape, -850.0) + rng.normal(0, 10, sides.shape)
    wall_fat = (slice(2, 22), slice(3, 27), slice(23, 27))
    hu[wall_fat] = -110.0 + rng.normal(0, 5, hu[wall_fat].shape)
    consolidation = (slice(6, 14), slice(3, 12), slice(3, 12))  # reaches the mask's surface at y = 3 and x = 3
    hu[consolidation] = 20.0 + rng.normal(0, 10, hu[consolidation].shape)
    shell = (slice(8, 12), slice(12, 13), slice(5, 10))  # its partial-volume face toward aerated lung
    hu[shell] = -100.0
    out = peel_surface_fat(sides, hu, params=QuantifyParams())
    assert not out[wall_fat].any()
    assert out[consolidation].all() and out[shell].all()
    assert int((out > 0).sum()) == int((sides > 0).sum()) - int(np.prod([20, 24, 4]))


def test_lungs_stay_within_a_quarter_on_severe_covid_in_a_small_body() -> None:
    """The independent family's case 16 of its test seeds (COVID-19, 54 % of a 1.7 l lung): the lung head carries
    the mask into the chest wall's fat along the pleural consolidation and into the stomach, +34 % lung volume;
    the served quantification stays within the issue's 25 %."""
    ph = _independent_phantom("test", 16)
    q = quantify(ph.volume)
    assert abs(q.lung_volume_ml / ph.lung_volume_ml - 1.0) <= 0.25, (q.lung_volume_ml, ph.lung_volume_ml)


def _local_band_chest(*, fading: bool) -> tuple[Volume, np.ndarray]:
    """The toy chest with dense lung under one place of the right lung's posterior pleura (about 45 x 40 mm,
    15 mm deep): dependent atelectasis that clears away from the pleura (-400 HU at it, -850 by 15 mm),
    or, with ``fading`` False, a patch of ground glass of one density (-520 HU) in the same place."""
    vol, lungs, _ = _toy_chest()
    hu = vol.hu.astype(np.float32)
    z, y, x = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    depth = ndimage.distance_transform_edt(lungs > 0, sampling=2.5)
    dense = (lungs == 1) & (depth <= 15.0) & (y > 58) & (((x - 33) / 9) ** 2 + ((z - 24) / 8) ** 2 < 1)
    hu[dense] = (-850.0 + 450.0 * np.exp(-depth[dense] / 6.0)) if fading else -520.0
    return Volume(np.rint(hu).astype(np.int16), spacing_mm=(2.5,) * 3), dense


@pytest.mark.parametrize("rule", [True, False])
def test_a_local_band_that_clears_inward_is_atelectasis_a_patch_of_one_density_is_not(
    rule: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dense lung thick in one place only (which the dependent-density rule, reading whole height thirds, leaves)
    is not a lesion when it clears with depth, as collapse does; ground glass of one density in the same place
    is. Without the band rule the clearing band is counted too."""
    from medai.quantify import opacities

    if not rule:
        monkeypatch.setattr(opacities, "_drop_dependent_bands", lambda opacity, *a, **k: opacity)
    band_vol, band = _local_band_chest(fading=True)
    patch_vol, patch = _local_band_chest(fading=False)
    band_read = float((quantify(band_vol, params=CLASSICAL).lesion_mask[band] > 0).mean())
    assert float((quantify(patch_vol, params=CLASSICAL).lesion_mask[patch] > 0).mean()) > 0.5
    assert (band_read < 0.1) if rule else (band_read > 0.3), band_read


def _band_core_chest(fringe_hu: float, *, disease_elsewhere: bool) -> tuple[Volume, np.ndarray]:
    """The toy chest with a 10 mm deep patch of one density (-500 HU) under one place of the right lung's posterior
    pleura, and 5 mm of lung at ``fringe_hu`` deeper under it; its two lesions (about 2 % of the lungs) stay only
    with ``disease_elsewhere``."""
    vol, lungs, lesion = _toy_chest()
    hu = vol.hu.astype(np.float32)
    if not disease_elsewhere:
        hu[lesion > 0] = -850.0 + np.random.default_rng(6).normal(0, 10, int(np.count_nonzero(lesion)))
    z, y, x = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    depth = ndimage.distance_transform_edt(lungs > 0, sampling=2.5)
    place = (lungs == 1) & (y > 58) & (((x - 33) / 9) ** 2 + ((z - 24) / 8) ** 2 < 1)
    core = place & (depth <= 10.0)
    hu[core] = -500.0
    hu[place & (depth > 10.0) & (depth <= 15.0)] = fringe_hu
    return Volume(np.rint(hu).astype(np.int16), spacing_mm=(2.5,) * 3), core


@pytest.mark.parametrize("rule", [True, False])
@pytest.mark.parametrize(
    ("fringe_hu", "disease_elsewhere", "band"), [(-785.0, False, True), (-785.0, True, False), (-830.0, False, False)]
)
def test_a_band_cut_at_its_fringe_is_atelectasis_in_an_otherwise_clear_lung(
    fringe_hu: float, disease_elsewhere: bool, band: bool, rule: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dense core against the dependent pleura that clears inward only below the opacity threshold: the
    threshold cuts the band at its fringe, and the core alone, of one density, does not clear (medai.quantify/17
    kept it). Judged with its faint fringe (-785 HU, just under the threshold) it is a band and goes when the rest
    of the lungs is clear (medai.quantify/19); beside disease elsewhere it is read as disease and stays, and over
    clear lung (-830 HU) the same core is a patch of ground glass and stays. Without the fringe reading all stay."""
    from medai.quantify import opacities

    if not rule:
        monkeypatch.setattr(opacities, "BAND_FRINGE_SHARE", 99.0)
    vol, core = _band_core_chest(fringe_hu, disease_elsewhere=disease_elsewhere)
    read = float((quantify(vol, params=CLASSICAL).lesion_mask[core] > 0).mean())
    assert (read < 0.1) if (band and rule) else (read > 0.5), read


@pytest.mark.parametrize(("reach_mm", "read"), [(30.0, False), (40.0, True)])
def test_a_band_that_clears_inward_is_atelectasis_to_35_mm_deep_and_disease_deeper(reach_mm: float, read: bool) -> None:
    """The independent family's thickest bands of dependent atelectasis reach 26-33 mm under the pleura
    (medai.quantify/11 stopped at 25 mm and read this 30 mm band as lesion); density that keeps clearing 40 mm
    into the lung is more than a band, and stays a lesion."""
    vol, lungs, _ = _toy_chest()
    hu = vol.hu.astype(np.float32)
    z, y, x = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    depth = ndimage.distance_transform_edt(lungs > 0, sampling=2.5)
    dense = (lungs == 1) & (depth <= reach_mm) & (y > 52) & (((x - 33) / 9) ** 2 + ((z - 24) / 8) ** 2 < 1)
    hu[dense] = -350.0 - 360.0 * depth[dense] / reach_mm  # -350 HU at the pleura, -710 at its deepest
    q = quantify(Volume(np.rint(hu).astype(np.int16), spacing_mm=(2.5,) * 3), params=CLASSICAL)
    share = float((q.lesion_mask[dense] > 0).mean())
    assert (share > 0.9) if read else (share < 0.1), share


@pytest.mark.parametrize("neighbours", [True, False])
@pytest.mark.parametrize("profile", ["clears", "one density", "denser inward"])
def test_a_band_of_varying_thickness_is_read_between_neighbours(
    profile: str, neighbours: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A posterior band 7.5 mm deep in half of its slices and 22.5 mm in the others, clearing inward in every
    slice (thin: -500 HU at the pleura; thick: -150, falling late): pooled over the part its depths barely tell
    its density (rank correlation -0.16), but nearly every pair of face neighbours is clearer on the deeper side,
    and it is atelectasis (medai.quantify/13 kept such bands: 2-7 % on the real patient, docs/ood.md failure
    mode 1). The same part at one density, or denser away from the pleura, is disease and stays. Without the
    neighbour rule (medai.quantify/15) the band stays: the whole part's correlation alone does not take it
    (/14's slice-by-slice reading did; /16 took that reading out once the neighbour rule took all its bands)."""
    from medai.quantify import opacities
    from medai.quantify.opacities import _drop_dependent_bands, rank_correlation

    if not neighbours:  # no share of pairs reaches these: only the correlation judges
        monkeypatch.setattr(opacities, "DEPENDENT_BAND_CLEARING", 2.0)
        monkeypatch.setattr(opacities, "DEPENDENT_BAND_CLEARING_FORWARD", 2.0)

    lung = np.ones((20, 40, 30), bool)
    y = np.arange(40)[None, :, None]
    depth = np.broadcast_to((39 - y) * 2.5, lung.shape).astype(np.float32)  # the pleura at the back (y = 39)
    thin = (np.arange(20) < 10)[:, None, None]
    columns = (np.arange(30) >= 5) & (np.arange(30) < 25)
    part = np.where(thin, y >= 36, y >= 30) & columns[None, None, :]
    fraction = np.where(thin, depth / 7.5, depth / 22.5)  # of the way through the band, 0 at the pleura
    hu = {
        "clears": np.where(thin, -500.0 - 250.0 * fraction, -150.0 - 350.0 * fraction**3),
        "one density": np.full(lung.shape, -500.0),
        "denser inward": np.where(thin, -750.0 + 250.0 * fraction, -500.0 + 350.0 * fraction**3),
    }[profile]
    hu = (hu + np.random.default_rng(0).normal(0, 10, lung.shape)).astype(np.float32)
    if profile == "clears":
        assert rank_correlation(depth[part], hu[part]) > -0.5  # the whole part's reading alone would keep it
    parts = ndimage.label(part, structure=np.ones((3, 3, 3), bool))
    kept = _drop_dependent_bands(part, hu, lung, depth, ap_dim=1, posterior_high=True, parts=parts)
    assert bool(kept[part].any()) == (profile != "clears" or not neighbours)


@pytest.mark.parametrize(
    ("profile", "front", "dropped"),
    [("clears", 16, True), ("one density", 16, False), ("denser inward", 16, False), ("clears", 10, False)],
)
def test_a_band_over_the_diaphragm_is_read_between_neighbours(profile: str, front: int, dropped: bool) -> None:
    """A band over the back half of the diaphragm's dome lies in front of the posterior line (its median at 0.55
    of the lungs' depth here) and clears upward, away from the diaphragm: nearly every deeper neighbour is clearer,
    and it is atelectasis (medai.quantify/15; /14 kept it: 2.5 % on the real patient's atelectasis copy). The same
    part at one density or denser inward is disease; and so is a clearing part whose median lies in front of the
    lungs' middle (0.4 here)."""
    from medai.quantify.opacities import _drop_dependent_bands

    lung = np.ones((20, 40, 30), bool)
    z = np.arange(20)[:, None, None]
    depth = np.broadcast_to(z * 2.5, lung.shape).astype(np.float32)  # the diaphragm under the first slice
    part = (z < 8) & (np.arange(40)[None, :, None] >= front) & (np.arange(40)[None, :, None] < front + 12)
    part = part & (np.arange(30)[None, None, :] >= 5) & (np.arange(30)[None, None, :] < 25)
    hu = {
        "clears": -200.0 - 24.0 * depth,
        "one density": np.full(lung.shape, -500.0),
        "denser inward": -700.0 + 24.0 * depth,
    }[profile]
    hu = (hu + np.random.default_rng(1).normal(0, 10, lung.shape)).astype(np.float32)
    parts = ndimage.label(part, structure=np.ones((3, 3, 3), bool))
    kept = _drop_dependent_bands(part, hu, lung, depth, ap_dim=1, posterior_high=True, parts=parts)
    assert bool(kept[part].any()) != dropped


def test_rank_correlation_is_spearmans_with_ties() -> None:
    from scipy import stats

    from medai.quantify.opacities import rank_correlation

    rng = np.random.default_rng(3)
    depth = rng.integers(0, 6, 300).astype(np.float32)  # coarse depths: many ties
    hu = -400.0 - 60.0 * depth + rng.normal(0, 80, 300)
    assert rank_correlation(depth, hu) == pytest.approx(stats.spearmanr(depth, hu).statistic, abs=1e-9)
    assert rank_correlation(depth, np.full(300, -500.0)) == 0.0  # one density: no correlation


def _vessel_chest(*, core_hu: float) -> tuple[Volume, np.ndarray]:
    """The toy chest with a hilar-sized vessel in the left lung: 12 mm wide, 20 mm long (cranio-caudal), with a
    one-voxel partial-volume rim (-450 HU); ``core_hu`` -550 makes it a patch of ground glass of the same shape."""
    vol, lungs, _ = _toy_chest()
    hu = vol.hu.astype(np.float32)
    z, y, x = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    r2 = (y - 40.0) ** 2 + (x - 72.0) ** 2
    along = (z >= 19) & (z < 27) & (lungs == 2)
    core, rim = along & (r2 <= 2.4**2), along & (r2 > 2.4**2) & (r2 <= 3.4**2)
    hu[core] = core_hu
    hu[rim] = -450.0 if core_hu > -150 else core_hu
    return Volume(np.rint(hu).astype(np.int16), spacing_mm=(2.5,) * 3), core | rim


@pytest.mark.parametrize("rule", [True, False])
def test_the_rim_of_a_vessel_too_wide_for_the_opening_is_not_a_lesion_ground_glass_of_its_shape_is(
    rule: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12 mm vessel (40 HU, unenhanced) is wider than the vessel opening, so it and its partial-volume rim
    read as 4.6 ml of opacity; the halo rule drops it (medai.quantify/13: the hilar arteries' rims were 0.1-0.5 %
    of "ground glass" in most phantom normals). Ground glass of the same size and shape, without a bright core,
    stays a lesion, and so do the toy chest's pleural consolidation and ground glass."""
    from medai.quantify import opacities

    if not rule:
        monkeypatch.setattr(opacities, "_drop_vessel_halos", lambda opacity, *a, **k: opacity)
    vessel_vol, vessel = _vessel_chest(core_hu=40.0)
    patch_vol, patch = _vessel_chest(core_hu=-550.0)
    vessel_q = quantify(vessel_vol, params=CLASSICAL)
    vessel_read = float((vessel_q.lesion_mask[vessel] > 0).mean())
    assert (vessel_read < 0.1) if rule else (vessel_read > 0.5), vessel_read
    assert float((quantify(patch_vol, params=CLASSICAL).lesion_mask[patch] > 0).mean()) > 0.5
    _, _, toy_lesion = _toy_chest()
    assert float((vessel_q.lesion_mask[toy_lesion > 0] > 0).mean()) > 0.5


@pytest.mark.parametrize("params", BOTH_METHODS)
def test_on_lungs_reports_the_final_lungs_before_the_opacities(
    params: QuantifyParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classifier starts its lung-restricted network input from this call while the opacities are measured."""
    import medai.quantify.measure as measure

    acq = synthetic.Acquisition(slice_thickness_mm=2.5, pixel_spacing_mm=3.0, matrix=128, noise_hu=20.0)
    ph = synthetic.generate(synthetic.PhantomSpec("covid19", 0.2, 10_007, acq), fast=True)
    events: list[str] = []
    seen: list[tuple[np.ndarray, QuantGrid]] = []
    segment = measure.segment_opacities

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        events.append("opacities")
        return segment(*args, **kwargs)  # type: ignore[arg-type]

    def found(lungs: np.ndarray, grid: QuantGrid) -> None:
        events.append("lungs")
        seen.append((lungs.copy(), grid))

    monkeypatch.setattr(measure, "segment_opacities", spy)
    q = quantify(ph.volume, params=params, on_lungs=found)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0][0], q.lung_mask)  # the lungs reported are the lungs measured
    assert seen[0][1] == q.grid
    assert events[0] == "lungs"  # before any opacity is segmented (the learned method segments none)
    assert q.lung_volume_ml > 1000


@pytest.mark.parametrize(
    ("profile", "clearing", "band"),
    [
        ((-400.0, -500.0, -300.0, -400.0), 2 / 3, True),  # clears in two of its three steps inward
        ((-400.0, -500.0, -300.0, -400.0, -450.0, -350.0), 3 / 5, False),  # in three of five: a lesion's texture
    ],
)
def test_a_posterior_part_is_a_band_when_it_clears_inward_in_65_percent_of_its_pairs(
    profile: tuple[float, ...], clearing: float, band: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """medai.quantify/20: behind the posterior line, a shallow part whose pairs clear inward in 65 % of cases (not
    70 %) is a band even when its pooled depth-HU correlation is weak; the independent family's normal bands clear
    in a median 0.69 of their pairs and its lesions in 0.54 (docs/ood.md, "tenth")."""
    from medai.quantify import opacities

    lung = np.ones((8, 20, 10), bool)
    depth = np.broadcast_to(((19 - np.arange(20)) * 3.0)[None, :, None], lung.shape).astype(np.float32)
    hu = np.full(lung.shape, -850.0)
    part = np.zeros(lung.shape, bool)
    for k, value in enumerate(profile):  # k voxels in from the posterior pleura, over a 6 x 6 patch
        hu[1:7, 19 - k, 2:8] = value
        part[1:7, 19 - k, 2:8] = True
    labels = ndimage.label(part, structure=np.ones((3, 3, 3), bool))
    assert opacities._clearing_share(labels[0], labels[1], hu, depth)[0] == pytest.approx(clearing)
    kept = opacities._drop_dependent_bands(part, hu, lung, depth, ap_dim=1, posterior_high=True, parts=labels)
    assert (not kept.any()) if band else bool(kept[part].all())
    monkeypatch.setattr(opacities, "DEPENDENT_BAND_CLEARING", 0.7)  # /19's bar: both stay
    assert opacities._drop_dependent_bands(part, hu, lung, depth, ap_dim=1, posterior_high=True, parts=labels)[
        part
    ].all()
