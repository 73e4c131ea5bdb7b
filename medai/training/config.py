"""What a training run is told (:class:`TrainConfig`, every knob with its default) and what it returns.

The config is stored in every checkpoint, so a model says how it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from medai.labels import CLASS_NAMES
from medai.preprocess import PreprocessParams
from medai.training.network import ModelSpec

__all__ = ["TrainConfig", "TrainResult", "jsonable_config"]


@dataclass
class TrainConfig:
    """Every training setting; stored in the checkpoint."""

    out_dir: str = "runs/medai"  # last.pt (resumable), best.pt, model.pt (final, calibrated), log.csv, tensorboard/
    seed: int = 0
    # data (used when train() is not given TrainData): a manifest, or N synthetic phantoms
    manifest: str | None = None
    synthetic: int = 0  # training phantoms (balanced classes, sample_spec(split="train"), fast generator)
    synthetic_val: int = 0  # validation phantoms from distinct seeds; 0: max(12, synthetic // 5)
    val_fraction: float = 0.15  # manifest rows without a split: patient-level split fractions
    test_fraction: float = 0.15
    cache_dir: str | None = None  # preprocessed-input cache; None: $MEDAI_CACHE_DIR or ~/.cache/medai/inputs; "": off
    prep_workers: int = 2  # processes generating/loading + preprocessing cases
    # preprocessing and model
    grid_shape: tuple[int, int, int] = (80, 64, 96)
    # > 0: the network sees only the lungs the quantification found and this margin around them (mm); 0: the
    # whole lung-centred crop (heart, abdomen, arms included)
    lung_margin_mm: float = 0.0
    channels: tuple[int, ...] = (8, 16, 32, 64, 96)
    strides: tuple[int, ...] = (2, 2, 2, 1, 1)
    norm: str = "batch"
    dropout: float = 0.3
    pooling: str = "lse"  # class-map pooling: "lse" (soft maximum, see ModelSpec) or "mean" (global average)
    # optimisation
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3  # AdamW peak LR, linear warmup then cosine decay to 2% of it
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    balance_classes: bool = True  # inverse-frequency class weights in the loss
    augment: bool = True
    num_workers: int = 1  # data-loader workers per process (augmentation)
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda
    max_steps_per_epoch: int = 0  # 0: full epochs (smoke tests cap it)
    # early stopping: stop when `monitor` has not improved for `patience` epochs
    monitor: str = "val_loss"  # val_loss (lower is better) or val_auc (macro one-vs-rest, higher is better)
    patience: int = 8
    # stop (resumably, last.pt is written) after this many epochs in this invocation; 0: no limit
    max_epochs_this_run: int = 0
    resume: bool = False
    # Start from this checkpoint's weights (fine-tuning, e.g. on real data, or to a new stride layout): every
    # tensor must match in shape; strides, dropout and the data may differ.
    init_from: str | None = None
    # "indeterminate" rule stored with the model (see medai.inference.calibration.DecisionRule)
    covid_threshold: float = 0.5
    indeterminate_band: float = 0.1  # |p_covid - threshold| < band -> indeterminate
    indeterminate_min_top: float = 0.6  # top class probability below this -> indeterminate
    progress: bool = True  # rich progress bars (rank 0)
    output: str | None = None  # also copy the final checkpoint here (e.g. models/medai-ref.pt)

    def preprocess_params(self) -> PreprocessParams:
        return PreprocessParams(grid_shape=self.grid_shape, lung_margin_mm=self.lung_margin_mm)

    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            input_shape=self.grid_shape,
            channels=self.channels,
            strides=self.strides,
            dropout=self.dropout,
            n_classes=len(CLASS_NAMES),
            norm=self.norm,
            pooling=self.pooling,
        )


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    model: nn.Module
    checkpoint_path: Path | None
    metrics: dict[str, float]
    history: list[dict[str, float]]
    temperature: float


def jsonable_config(cfg: TrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
