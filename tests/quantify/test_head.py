"""Tests of medai.quantify.head (the learned quantification head) and the learned path of medai.quantify.measure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medai.errors import ModelError
from medai.inference.classifier import Classifier
from medai.labels import Severity
from medai.phantoms.synthetic import Acquisition, PhantomSpec, generate
from medai.quantify import head as quantnet
from medai.quantify.head import DEFAULT_QUANT_MODEL, QuantNet
from medai.quantify.measure import quantify
from medai.quantify.params import QuantifyParams, QuantMethod
from medai.volume import Volume

pytestmark = pytest.mark.skipif(not DEFAULT_QUANT_MODEL.is_file(), reason="models/medai-quant.onnx is not shipped")

LEARNED = QuantifyParams(method=QuantMethod.LEARNED)


@pytest.fixture(scope="module")
def phantom() -> object:
    acq = Acquisition(slice_thickness_mm=2.5, pixel_spacing_mm=2.6, matrix=144, noise_hu=15.0)
    return generate(PhantomSpec("covid19", 0.3, 41, acq), fast=True)


def test_shipped_card_matches_and_says_synthetic() -> None:
    card = json.loads(DEFAULT_QUANT_MODEL.with_suffix(".json").read_text())
    net = QuantNet.load()
    assert net.sha256 == card["sha256"]
    assert "synthetic phantoms only: not validated on patients" in card["training_data"]
    assert DEFAULT_QUANT_MODEL.stat().st_size < 2_000_000


def test_hash_mismatch_is_a_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "medai-quant.onnx"
    shutil.copy(DEFAULT_QUANT_MODEL, model)
    card = json.loads(DEFAULT_QUANT_MODEL.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    with pytest.raises(ModelError, match=r"has sha256 .* but its card"):
        QuantNet.load(model)
    monkeypatch.setattr(quantnet, "DEFAULT_QUANT_MODEL", model)  # as if the shipped file were replaced
    with pytest.raises(ModelError, match=r"has sha256 .* but its card"):
        QuantNet.load()
    model.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="must exist beside the shipped model"):
        QuantNet.load()
    model.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelError, match="must be JSON with a 'sha256'"):
        QuantNet.load()


def test_env_model_is_served_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phantom: object) -> None:
    model = tmp_path / "other.onnx"
    model.write_bytes(DEFAULT_QUANT_MODEL.read_bytes()[:-10])  # truncated: unreadable, no card
    monkeypatch.setenv(quantnet.QUANT_MODEL_ENV, str(model))
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        quantify(phantom.volume, params=LEARNED)  # type: ignore[attr-defined]
    with pytest.raises(ModelError, match=r"must be an existing \.onnx file"):
        QuantNet.load(tmp_path / "missing.onnx")


def test_fractions_shapes_and_ranges() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(-500, 400, size=(13, 37, 42)).astype(np.float32)  # not multiples of 8: padded inside
    f = QuantNet.load().fractions(hu)
    for a in (f.lung, f.lesion, f.consolidation):
        assert a.shape == hu.shape and a.dtype == np.float32
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    with pytest.raises(ValueError, match="coarse_hu must be 3D"):
        QuantNet.load().fractions(hu[0])
    np.testing.assert_array_equal(QuantNet.load().lung_fraction(hu), f.lung)


def test_the_head_sees_the_body_box_and_loses_nothing_of_the_lungs(phantom: object) -> None:
    from medai.quantify.grid import block_mean, coarse_grid
    from medai.quantify.head import BODY_MARGIN, body_box

    volume = phantom.volume  # type: ignore[attr-defined]
    grid = coarse_grid(volume.spacing_mm, volume.shape, target_spacing_mm=(3.0, 3.0, 3.0))
    pad = ((0, 0), (30, 30), (30, 30))  # a wider field of view: air all around the patient
    coarse = np.pad(block_mean(volume.hu, grid.factors), pad, constant_values=-1000.0)
    box = body_box(coarse, margin=BODY_MARGIN)
    inside = np.zeros(coarse.shape, bool)
    inside[box] = True
    lungs = np.pad(block_mean(phantom.lung_mask > 0, grid.factors) > 0, pad)  # type: ignore[attr-defined]
    assert bool(inside[lungs].all())
    assert inside.mean() < 0.75  # the air around the patient is cut


def test_learned_quantify_on_a_phantom(phantom: object) -> None:
    q = quantify(phantom.volume, params=LEARNED)  # type: ignore[attr-defined]
    truth = phantom.lung_mask  # type: ignore[attr-defined]
    assert q.lung_mask.shape == q.grid.shape == q.lesion_mask.shape
    assert set(np.unique(q.lung_mask)) <= {0, 1, 2} and set(np.unique(q.lesion_mask)) <= {0, 1, 2}
    lungs = q.grid.upsample(q.lung_mask)
    for label in (1, 2):
        inter = np.logical_and(lungs == label, truth == label).sum()
        assert 2 * inter / ((lungs == label).sum() + (truth == label).sum()) > 0.9
    assert abs(q.lesion_percent - phantom.lesion_percent) < 6.0  # type: ignore[attr-defined]
    assert q.ggo_percent + q.consolidation_percent == pytest.approx(q.lesion_percent, abs=1e-6)
    assert q.lung_volume_ml == pytest.approx(q.right_lung_volume_ml + q.left_lung_volume_ml)
    assert all(0.0 <= v <= 100.0 for v in q.zone_lesion_percent.values())
    assert "learned" in q.method and "medai-quant@" in q.method


def test_learned_quantify_does_not_depend_on_array_orientation(phantom: object) -> None:
    vol = phantom.volume  # type: ignore[attr-defined]
    q = quantify(vol, params=LEARNED)
    flipped = replace(vol, hu=np.ascontiguousarray(vol.hu[:, ::-1, ::-1]), direction=np.diag([-1.0, -1.0, 1.0]))
    qf = quantify(flipped, params=LEARNED)
    assert qf.lesion_percent == pytest.approx(q.lesion_percent, abs=1e-3)
    assert qf.right_lung_volume_ml == pytest.approx(q.right_lung_volume_ml, rel=1e-4)
    np.testing.assert_array_equal(qf.lung_mask, q.lung_mask[:, ::-1, ::-1])
    swapped_axes = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # array x runs front-back
    swapped = replace(vol, hu=np.ascontiguousarray(vol.hu.transpose(0, 2, 1)), direction=swapped_axes)
    qs = quantify(swapped, params=LEARNED)
    assert qs.lesion_percent == pytest.approx(q.lesion_percent, abs=1e-3)
    np.testing.assert_array_equal(qs.lung_mask, q.lung_mask.transpose(0, 2, 1))


def test_learned_quantify_of_an_empty_volume() -> None:
    q = quantify(Volume(np.full((8, 40, 40), 40, np.int16), spacing_mm=(2.5, 2.5, 2.5)), params=LEARNED)
    assert q.lung_volume_ml == 0.0 and q.lesion_percent == 0.0 and q.severity is Severity.CT_0


def test_unknown_method_is_refused(phantom: object) -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        quantify(phantom.volume, params=QuantifyParams(method="magic"))  # type: ignore[arg-type, attr-defined]


def test_serving_path_is_torch_free() -> None:
    code = (
        "import sys, numpy as np\n"
        "from medai.quantify.measure import quantify, QuantifyParams\n"
        "from medai.volume import Volume\n"
        "hu = np.full((8, 40, 40), -1000, np.int16); hu[:, 4:36, 4:36] = 40; hu[:, 10:30, 8:32] = -850\n"
        "q = quantify(Volume(hu, spacing_mm=(2.5, 2.5, 2.5)), params=QuantifyParams(method='learned'))\n"
        "assert 'learned' in q.method, q.method\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_set_threads_reloads_the_shared_head() -> None:
    try:
        quantnet.set_threads(1)
        one = quantnet.shipped_quantnet()
        assert one._session.get_session_options().intra_op_num_threads == 1
        assert quantnet.shipped_quantnet() is one  # cached while the setting holds
        Classifier.load(threads=2)  # a classifier given threads sets the head's too
        assert quantnet.shipped_quantnet()._session.get_session_options().intra_op_num_threads == 2
        with pytest.raises(ValueError, match="threads must be >= 1"):
            quantnet.set_threads(0)
    finally:
        quantnet.set_threads(None)
