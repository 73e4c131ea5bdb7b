"""Tests for medai.training.loop and medai.training.data: learning, resume, DDP, self-describing checkpoints."""

from __future__ import annotations

import csv
import socket

import numpy as np
import pytest
import torch

from medai.errors import MedaiError
from medai.inference.calibration import DecisionRule
from medai.preprocess import PreprocessParams
from medai.training.config import TrainConfig
from medai.training.data import CaseDataset, TrainData, build_augmentation, prepare_synthetic
from medai.training.loop import train
from medai.training.network import load_checkpoint

GRID = (32, 48, 48)


def toy_data(n_train: int = 36, n_val: int = 12, seed: int = 0, grid=GRID) -> TrainData:
    """Lung-like boxes; covid19 adds posterior-basal opacities, other_pneumonia a dense anterior-upper block."""
    rng = np.random.default_rng(seed)

    def case(label: int) -> np.ndarray:
        z, y, x = grid
        a = np.full((1, *grid), 0.75, np.float32)
        a[:, z // 8 : -z // 8, y // 6 : -y // 6, x // 8 : x // 2 - 2] = 0.1
        a[:, z // 8 : -z // 8, y // 6 : -y // 6, x // 2 + 2 : -x // 8] = 0.1
        if label == 1:
            a[:, z // 6 : z // 2, y // 2 : -y // 5, x // 6 : -x // 6] += 0.3
        elif label == 2:
            a[:, z // 2 : -z // 6, y // 6 : y // 2, x // 6 : x // 2] = 0.7
        return a + rng.normal(0, 0.05, a.shape).astype(np.float32)

    labels = np.arange(n_train + n_val) % 3
    arrays = [case(int(lab)) for lab in labels]
    return TrainData(arrays[:n_train], labels[:n_train], arrays[n_train:], labels[n_train:], {"kind": "toy", "n": 48})


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    cfg = TrainConfig(
        out_dir=str(tmp_path),
        grid_shape=GRID,
        channels=(4, 8, 16),
        strides=(2, 2, 2),
        dropout=0.1,
        epochs=3,
        batch_size=6,
        lr=5e-3,
        num_workers=0,
        progress=False,
        device="cpu",
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_training_loss_falls_and_checkpoint_describes_itself(tmp_path):
    torch.set_num_threads(2)
    data = toy_data()
    result = train(tiny_config(tmp_path, epochs=6, augment=False), data=data)  # 36 steps
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.metrics["val_auc"] > 0.9
    model, ckpt = load_checkpoint(tmp_path / "model.pt")
    assert not model.training
    for key in ("model_spec", "preprocess", "class_names", "temperature", "metrics", "data", "code", "config"):
        assert key in ckpt
    assert ckpt["class_names"] == ["normal", "covid19", "other_pneumonia"]
    assert PreprocessParams.from_dict(ckpt["preprocess"]).grid_shape == GRID
    assert ckpt["data"] == {"kind": "toy", "n": 48}
    assert 0.05 < ckpt["temperature"] < 20
    rule = DecisionRule.from_dict(ckpt["decision_rule"])
    assert (rule.band_half_width, rule.min_top_probability) == (0.1, 0.6)
    with (tmp_path / "log.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 6


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    torch.set_num_threads(2)
    data = toy_data(n_train=24, n_val=6)
    full = train(tiny_config(tmp_path / "full"), data=data)
    part = train(tiny_config(tmp_path / "part", max_epochs_this_run=1), data=data)
    assert [h["epoch"] for h in part.history] == [0.0]
    assert not (tmp_path / "part" / "model.pt").exists()
    resumed = train(tiny_config(tmp_path / "part", resume=True), data=data)
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0, 2.0]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert resumed.temperature == pytest.approx(full.temperature, rel=1e-4)


def test_resume_refuses_other_data(tmp_path):
    train(tiny_config(tmp_path, max_epochs_this_run=1, epochs=2), data=toy_data(n_train=12, n_val=6))
    other = toy_data(n_train=12, n_val=6)
    other.description = {"kind": "toy", "n": 99}
    with pytest.raises(MedaiError, match="same data and model"):
        train(tiny_config(tmp_path, resume=True, epochs=2), data=other)


def test_early_stopping(tmp_path):
    data = toy_data(n_train=12, n_val=6)
    result = train(tiny_config(tmp_path, epochs=20, patience=0, lr=0.0, augment=False), data=data)
    assert result.metrics["stopped_early"] == 1.0
    assert len(result.history) < 20


def test_augmentation_is_seeded_by_epoch_and_index():
    arrays = [np.random.default_rng(0).random((1, 16, 16, 16), dtype=np.float32)] * 2
    ds = CaseDataset(arrays, np.array([0, 1]), build_augmentation())
    ds.epoch_seed = 3
    a = ds[0][0]
    b = ds[0][0]
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, ds[1][0])  # same array, other index: other augmentation
    ds.epoch_seed = 4
    assert not torch.equal(a, ds[0][0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, data: TrainData) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from pathlib import Path

    cfg = tiny_config(Path(out_dir), epochs=2, batch_size=4)
    result = train(cfg, data=data)
    torch.save(result.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_keep_identical_weights(tmp_path):
    data = toy_data(n_train=16, n_val=6)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), data), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in w0:
        torch.testing.assert_close(w0[key], w1[key], rtol=0, atol=0)
    assert (tmp_path / "model.pt").is_file()  # written by rank 0 only
    with (tmp_path / "log.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2


def test_prepare_synthetic_uses_the_cache(tmp_path):
    pytest.importorskip("medai.phantoms.synthetic")
    params = PreprocessParams(grid_shape=(16, 24, 24))
    first = prepare_synthetic(3, n_val=3, params=params, cache_dir=str(tmp_path), workers=1)
    assert [a.shape for a in first.train_arrays] == [(1, 16, 24, 24)] * 3
    assert sorted(first.train_labels.tolist()) == [0, 1, 2]
    assert first.description["kind"] == "synthetic"
    assert len(list(tmp_path.rglob("*.npy"))) == 6
    again = prepare_synthetic(3, n_val=3, params=params, cache_dir=str(tmp_path), workers=1)
    np.testing.assert_array_equal(again.val_arrays[0], first.val_arrays[0])
