"""Tests for medai.training.network: architecture, CAM, checkpoint round trip, prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medai.errors import ModelError
from medai.preprocess import PreprocessParams, to_model_input
from medai.training.network import (
    CHECKPOINT_FORMAT,
    ModelSpec,
    build_model,
    count_params,
    estimate_flops,
    load_checkpoint,
    predict_logits,
)
from medai.volume import Volume

TINY = ModelSpec(input_shape=(16, 24, 24), channels=(4, 8, 16), strides=(2, 2, 1), dropout=0.1, pooling="mean")


def test_default_model_size_flops_and_speed():
    spec = ModelSpec()
    model = build_model(spec)
    assert 300_000 < count_params(model) < 2_000_000
    flops = estimate_flops(model, spec.input_shape)
    assert 1e8 < flops < 3e9
    x = torch.zeros(1, 1, *spec.input_shape)
    model.eval()
    with torch.inference_mode():
        logits, cam = model.forward_with_cam(x)
    assert logits.shape == (1, 3)
    assert cam.shape == (1, 3, 10, 8, 12)


def test_cam_mean_equals_logits():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    x = torch.rand(2, 1, *TINY.input_shape)
    with torch.inference_mode():
        logits, cam = model.forward_with_cam(x)
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cam.mean(dim=(2, 3, 4)), logits)


def test_lse_pooling_is_a_soft_maximum_of_the_cam():
    torch.manual_seed(0)
    spec = ModelSpec(input_shape=(16, 24, 24), channels=(4, 8, 16), strides=(2, 2, 1), pooling="lse", lse_r=5.0)
    model = build_model(spec).eval()
    x = torch.rand(2, 1, *spec.input_shape)
    with torch.inference_mode():
        logits, cam = model.forward_with_cam(x)
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)
        flat = cam.flatten(2).double()
        expected = (torch.logsumexp(5.0 * flat, dim=2) - np.log(flat.shape[2])) / 5.0
        torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)
        assert bool((logits >= cam.mean(dim=(2, 3, 4)) - 1e-5).all())  # between the mean ...
        assert bool((logits <= flat.amax(dim=2) + 1e-5).all())  # ... and the maximum
    # a checkpoint written before pooling existed reads as mean pooling
    old = {k: v for k, v in spec.to_dict().items() if k not in ("pooling", "lse_r")}
    assert ModelSpec.from_dict(old).pooling == "mean"


def test_spec_validation_and_round_trip():
    assert ModelSpec.from_dict(TINY.to_dict()) == TINY
    lse = ModelSpec(pooling="lse", lse_r=3.0)
    assert ModelSpec.from_dict(lse.to_dict()) == lse
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'lse', not 'max'"):
        ModelSpec(pooling="max")
    with pytest.raises(ValueError, match="lse_r must be positive"):
        ModelSpec(pooling="lse", lse_r=0.0)
    with pytest.raises(ValueError, match="same non-zero length"):
        ModelSpec(channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="norm must be"):
        ModelSpec(norm="layer")
    with pytest.raises(ValueError, match="must be among"):
        ModelSpec.from_dict({**TINY.to_dict(), "depth": 3})


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_other_norms_build(norm):
    spec = ModelSpec(input_shape=(16, 16, 16), channels=(8, 16), strides=(2, 2), norm=norm)
    assert build_model(spec)(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3)


def _checkpoint(model, params):
    return {
        "format": CHECKPOINT_FORMAT,
        "model_state": model.state_dict(),
        "model_spec": model.spec.to_dict(),
        "preprocess": params.to_dict(),
        "class_names": ["normal", "covid19", "other_pneumonia"],
        "temperature": 1.5,
    }


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(1)
    model = build_model(TINY)
    model.train()
    model(torch.rand(4, 1, *TINY.input_shape))  # move BatchNorm running statistics off their defaults
    params = PreprocessParams(grid_shape=TINY.input_shape)
    torch.save(_checkpoint(model, params), tmp_path / "m.pt")
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert not loaded.training
    assert PreprocessParams.from_dict(ckpt["preprocess"]) == params
    hu = np.full((20, 48, 48), -1000, np.int16)
    hu[:, 6:42, 4:44] = 40
    hu[3:17, 12:36, 8:22] = -850
    hu[3:17, 12:36, 26:40] = -850
    mi = to_model_input(Volume(hu, (5.0, 4.0, 4.0)), PreprocessParams.from_dict(ckpt["preprocess"]))
    np.testing.assert_allclose(predict_logits(loaded, [mi]), predict_logits(model, [mi.array]), rtol=1e-5, atol=1e-6)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(ModelError, match="existing file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="format must be"):
        load_checkpoint(tmp_path / "other.pt")
    model = build_model(TINY)
    bad = _checkpoint(model, PreprocessParams())
    bad["model_spec"] = {**TINY.to_dict(), "channels": [4, 8, 32]}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="does not rebuild"):
        load_checkpoint(tmp_path / "bad.pt")


def test_predict_logits_batches_consistently():
    torch.manual_seed(2)
    model = build_model(TINY)
    arrays = [np.random.default_rng(i).random((1, *TINY.input_shape), dtype=np.float32) for i in range(5)]
    np.testing.assert_allclose(
        predict_logits(model, arrays, batch_size=2), predict_logits(model, arrays, batch_size=5), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="batch_size must be"):
        predict_logits(model, arrays, batch_size=0)
