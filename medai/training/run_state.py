"""The state a training run keeps and restores, and where it runs.

Rank and device (torchrun's environment), the code version a checkpoint records, the RNG states that make a
resumed run repeat an uninterrupted one, atomic checkpoint and log writes, and initial weights from another
checkpoint.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medai.errors import MedaiError
from medai.training.config import TrainConfig

__all__ = [
    "append_csv",
    "code_version",
    "device_for",
    "distributed",
    "init_weights",
    "rng_states",
    "save_atomic",
    "set_rng_states",
]

log = logging.getLogger(__name__)


def distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def device_for(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MedaiError(f"device must be 'cpu' or 'auto' on a machine without CUDA, not {cfg.device!r}")
    return torch.device("cuda", local_rank)


def code_version() -> dict[str, str]:
    from medai import __version__

    info = {"medai": __version__, "torch": str(torch.__version__)}
    try:
        repo = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = "unknown"
    return info


def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def init_weights(model: nn.Module, path: str) -> None:
    """Load a checkpoint's weights; a 3x3x3 strided shortcut becomes the 1x1x1 one of a stride-1 stage."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model_state" not in state:
        raise MedaiError(f"init_from must be a medai checkpoint, not {path!r}")
    weights = dict(state["model_state"])
    target = model.state_dict()
    for key, value in weights.items():
        want = target.get(key)
        if want is not None and value.ndim == 5 and want.shape[2:] == (1, 1, 1) and value.shape[:2] == want.shape[:2]:
            c = [n // 2 for n in value.shape[2:]]  # MONAI uses a 1x1x1 shortcut conv when the stage has stride 1
            weights[key] = value[:, :, c[0] : c[0] + 1, c[1] : c[1] + 1, c[2] : c[2] + 1].clone()
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise MedaiError(f"init_from {path!r} does not fit the model (tensor names/shapes differ): {exc}") from exc
    log.info("initialised the weights from %s", path)


def append_csv(path: Path, row: dict[str, float]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
