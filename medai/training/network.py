"""The 3D CNN classifier (training side; serving runs its ONNX export).

A compact residual network built from MONAI blocks: a strided stem
convolution, one :class:`monai.networks.blocks.ResidualUnit` per stage (each
halving the grid), then one linear layer applied at every position of the last feature grid:
the class activation map ``CAM_c = sum_k w_ck * feature_k + b_c``. The logit
pools that map, by its mean (global average pooling, ``pooling="mean"``) or by
a log-sum-exp soft maximum (``pooling="lse"``, multiple-instance pooling: the
cells with the most evidence decide, so the evidence has to sit on the
finding). Either way the logit is an exact function of the CAM, and the
exported graph returns the CAM alongside the logits.

Checkpoints are plain dictionaries written by :mod:`medai.training.loop`;
:func:`load_checkpoint` (here) rebuilds the model from the ``ModelSpec`` they
carry, and :func:`predict_logits` runs it on preprocessed arrays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn
from torch.nn import functional as F

from medai.errors import ModelError
from medai.preprocess import ModelInput

__all__ = [
    "CHECKPOINT_FORMAT",
    "Classifier3D",
    "ModelSpec",
    "build_model",
    "count_params",
    "estimate_flops",
    "load_checkpoint",
    "predict_logits",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medai-checkpoint-v1"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network; stored in every checkpoint.

    Example:
        >>> spec = ModelSpec(input_shape=(32, 48, 48), channels=(8, 16, 32), strides=(2, 2, 2))
        >>> ModelSpec.from_dict(spec.to_dict()) == spec
        True
    """

    # Input grid (z, y, x); must equal the PreprocessParams.grid_shape the model is trained with.
    input_shape: tuple[int, int, int] = (80, 64, 96)
    # Output channels of the stem and of each residual stage. Narrow early stages keep CPU training cheap
    # (~1.5 GFLOP forward at 80x64x96); the wide last stages carry the capacity (~0.66 M parameters).
    channels: tuple[int, ...] = (8, 16, 32, 64, 96)
    # Stride of the stem and of each stage (2 halves the grid); same length as channels. The last two stages
    # keep their grid (80x64x96 -> 10x8x12 feature/CAM grid, ~8 mm cells: fine enough to point at a lesion).
    strides: tuple[int, ...] = (2, 2, 2, 1, 1)
    # Dropout on the pooled features before the linear head.
    dropout: float = 0.3
    n_classes: int = 3
    # Normalisation layer: "batch", "instance" or "group" (group uses 8 groups).
    norm: str = "batch"
    # Convolutions per residual unit.
    subunits: int = 2
    # How the class map becomes the logit: "mean" (global average, the CAM of Zhou et al. 2016) or "lse"
    # (log-sum-exp, a soft maximum over positions: the logit follows the cells with the most evidence, so
    # evidence has to sit where the finding is; multiple-instance pooling as in Pinheiro & Collobert 2015).
    pooling: str = "lse"
    # Sharpness r of the log-sum-exp pooling: r -> 0 is the mean, r -> inf the maximum.
    lse_r: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(n) for n in self.input_shape))
        object.__setattr__(self, "channels", tuple(int(n) for n in self.channels))
        object.__setattr__(self, "strides", tuple(int(n) for n in self.strides))
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ValueError(
                f"channels and strides must have the same non-zero length, not {self.channels} and {self.strides}"
            )
        if self.norm not in ("batch", "instance", "group"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'group', not {self.norm!r}")
        if self.pooling not in ("mean", "lse"):
            raise ValueError(f"pooling must be 'mean' or 'lse', not {self.pooling!r}")
        if self.lse_r <= 0:
            raise ValueError(f"lse_r must be positive, not {self.lse_r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        out = asdict(self)
        for key in ("input_shape", "channels", "strides"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise. Specs written before pooling existed mean ``"mean"``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model spec keys must be among {sorted(known)}, not {unknown}")
        return cls(**{"pooling": "mean", **dict(data)})


def _norm(spec: ModelSpec) -> Any:
    if spec.norm == "batch":
        return "BATCH"
    if spec.norm == "instance":
        return ("INSTANCE", {"affine": True})
    return ("GROUP", {"num_groups": 8})


class Classifier3D(nn.Module):
    """Residual 3D CNN with a global-average-pool + linear head (see the module docstring)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        norm = _norm(spec)
        layers: list[nn.Module] = [
            Convolution(3, 1, spec.channels[0], strides=spec.strides[0], kernel_size=3, norm=norm, act="RELU")
        ]
        for c_in, c_out, stride in zip(spec.channels[:-1], spec.channels[1:], spec.strides[1:], strict=True):
            layers.append(
                ResidualUnit(
                    3, c_in, c_out, strides=stride, kernel_size=3, subunits=spec.subunits, norm=norm, act="RELU"
                )
            )
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.channels[-1], spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` for inputs ``(B, 1, D, H, W)``."""
        if self.spec.pooling == "mean":
            pooled = self.features(x).mean(dim=(2, 3, 4))
            return self.head(self.dropout(pooled))
        return self._pool(self._cam(self.dropout(self.features(x))))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C)`` and class activation maps ``(B, C, d, h, w)`` on the final feature grid.

        ``logits`` is the pooled ``cam`` exactly (up to rounding): its mean over
        positions, or its log-sum-exp with ``pooling="lse"``; dropout is not applied.
        """
        cam = self._cam(self.features(x))
        return self._pool(cam), cam

    def _cam(self, feats: torch.Tensor) -> torch.Tensor:
        weight = self.head.weight[:, :, None, None, None]
        return F.conv3d(feats, weight, self.head.bias)

    def _pool(self, cam: torch.Tensor) -> torch.Tensor:
        if self.spec.pooling == "mean":
            return cam.mean(dim=(2, 3, 4))
        r = self.spec.lse_r
        flat = cam.flatten(2)
        return (torch.logsumexp(r * flat, dim=2) - math.log(flat.shape[2])) / r


def build_model(spec: ModelSpec) -> Classifier3D:
    """A freshly initialised :class:`Classifier3D`.

    Example:
        >>> model = build_model(ModelSpec(input_shape=(16, 16, 16), channels=(4, 8), strides=(2, 2)))
        >>> tuple(model(torch.zeros(2, 1, 16, 16, 16)).shape)
        (2, 3)
    """
    return Classifier3D(spec)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters.

    Example:
        >>> count_params(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def estimate_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs for one input of ``input_shape`` (z, y, x), counted by torch (2 FLOPs per MAC).

    Example:
        >>> estimate_flops(nn.Conv3d(1, 1, 1), (2, 2, 2))
        16
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, *input_shape))
    model.train(was_training)
    return int(counter.get_total_flops())


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[Classifier3D, dict[str, Any]]:
    """Rebuild the model stored in a medai checkpoint, in eval mode.

    Args:
        path: a ``.pt`` file written by :mod:`medai.training.loop`.
        device: where to put the model.

    Returns:
        ``(model, checkpoint)``; the dictionary holds ``model_spec``, ``preprocess``
        (:meth:`medai.preprocess.PreprocessParams.to_dict`), ``class_names``,
        ``temperature``, ``indeterminate``, ``metrics``, ``data``, ``code`` and ``config``.

    Raises:
        ModelError: the file is missing, unreadable or not a medai checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint must be an existing file, not {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle of foreign objects, ...
        raise ModelError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(f"checkpoint format must be {CHECKPOINT_FORMAT!r}, not {found!r} in {str(path)!r}")
    try:
        model = build_model(ModelSpec.from_dict(ckpt["model_spec"]))
        model.load_state_dict(ckpt["model_state"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(f"checkpoint {str(path)!r} does not rebuild its model: {exc}") from exc
    model.to(device).eval()
    return model, ckpt


def predict_logits(model: nn.Module, inputs: Sequence[np.ndarray | ModelInput], *, batch_size: int = 8) -> np.ndarray:
    """Logits ``(N, n_classes)`` (float32, before temperature) for preprocessed inputs.

    Args:
        model: a :class:`Classifier3D` (put in eval mode here).
        inputs: arrays ``(1, D, H, W)`` from :func:`medai.preprocess.to_model_input`, or the
            :class:`~medai.preprocess.ModelInput` objects themselves.
        batch_size: inputs per forward pass.

    Example:
        >>> model = build_model(ModelSpec(input_shape=(16, 16, 16), channels=(4, 8), strides=(2, 2)))
        >>> predict_logits(model, [np.zeros((1, 16, 16, 16), np.float32)] * 3).shape
        (3, 3)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            chunk = [i.array if isinstance(i, ModelInput) else i for i in inputs[start : start + batch_size]]
            batch = torch.from_numpy(np.stack(chunk).astype(np.float32, copy=False)).to(device)
            out.append(model(batch).float().cpu().numpy())
    if not out:
        return np.zeros((0, getattr(getattr(model, "spec", None), "n_classes", 0)), dtype=np.float32)
    return np.concatenate(out)
