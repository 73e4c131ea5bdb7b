"""Training data: cases -> shared preprocessing -> arrays in memory -> augmented batches.

:func:`prepare_synthetic` generates phantoms, :func:`prepare_manifest` loads
manifest rows; both run :func:`medai.preprocess.to_model_input` in worker
processes through the persistent :class:`medai.training.cache.InputCache`.
:func:`build_augmentation` is the MONAI augmentation and :class:`CaseDataset`
serves augmented arrays with a seed derived from ``(epoch seed, index)`` so
that batches do not depend on the number of data-loader workers.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt

from medai.errors import MedaiError
from medai.inference.network_input import network_input
from medai.labels import CLASS_NAMES
from medai.modelcard import file_sha256
from medai.preprocess import PreprocessParams
from medai.training.cache import InputCache, path_fingerprint
from medai.training.manifest import ManifestRow, Split, assign_splits, load_case, read_manifest

__all__ = [
    "CaseDataset",
    "TrainData",
    "build_augmentation",
    "prepare_manifest",
    "prepare_synthetic",
    "synthetic_inputs",
]

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Preprocessed arrays ``(1, D, H, W)`` and integer labels, plus a description for the checkpoint."""

    train_arrays: list[np.ndarray]
    train_labels: np.ndarray
    val_arrays: list[np.ndarray]
    val_labels: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)


def _map(
    fn: Callable[[Any], np.ndarray], items: Sequence[Any], workers: int, desc: str, show: bool
) -> list[np.ndarray]:
    """Apply ``fn`` to items in worker processes (fork) with a progress bar."""
    from rich.progress import Progress

    results: list[np.ndarray | None] = [None] * len(items)
    with Progress(disable=not show, transient=True) as progress:
        task = progress.add_task(desc, total=len(items))
        if workers <= 1 or len(items) < 4:
            for i, item in enumerate(items):
                results[i] = fn(item)
                progress.advance(task)
        else:
            ctx = multiprocessing.get_context("fork")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
                for fut in concurrent.futures.as_completed(futures):
                    results[futures[fut]] = fut.result()
                    progress.advance(task)
    return [r for r in results if r is not None]


def _synthetic_source_hash() -> str:
    """Hash of the phantom world's code: a change to any of its modules makes new phantoms (and cache keys)."""
    import medai.phantoms

    digest = hashlib.sha256()
    folder = Path(medai.phantoms.__file__).parent
    for name in ("anatomy", "render", "abdomen", "pathology", "artifacts", "synthetic"):  # the training generator
        digest.update((folder / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def _synthetic_case(job: tuple[Any, dict[str, Any], str | None, str]) -> np.ndarray:
    spec, params_dict, cache_root, gen_hash = job
    from medai.phantoms import synthetic

    params = PreprocessParams.from_dict(params_dict)

    def compute() -> np.ndarray:
        return network_input(synthetic.generate(spec, fast=True).volume, params)[0].array

    if cache_root is None:
        return compute()
    return InputCache(cache_root).get_or_compute(f"synthetic:{gen_hash}:{spec!r}{_lungs_key(params)}", params, compute)


def _lungs_key(params: PreprocessParams) -> str:
    """A lung-restricted input depends on the quantification head that found the lungs: part of the cache key."""
    if params.lung_margin_mm <= 0:
        return ""
    from medai.quantify.head import shipped_quantnet

    return f":lungs={shipped_quantnet().model_id}"


def _cache_root(cache_dir: str | None) -> str | None:
    if cache_dir == "":
        return None
    return str(InputCache(cache_dir).root)


def _synthetic_specs(n: int, *, seed: int, split: str) -> list[Any]:
    from medai.phantoms import synthetic

    rng = np.random.default_rng(seed)
    return [synthetic.sample_spec(rng, label=CLASS_NAMES[i % 3], split=split) for i in range(n)]


def synthetic_inputs(
    specs: Sequence[Any],
    *,
    params: PreprocessParams,
    cache_dir: str | None = None,
    workers: int = 2,
    show_progress: bool = False,
) -> list[np.ndarray]:
    """Model inputs of phantoms (``synthetic.generate(spec, fast=True)`` then preprocessing), cached."""
    gen_hash = _synthetic_source_hash()
    jobs = [(s, params.to_dict(), _cache_root(cache_dir), gen_hash) for s in specs]
    return _map(_synthetic_case, jobs, workers, "phantoms", show_progress)


def prepare_synthetic(
    n_train: int,
    *,
    n_val: int = 0,
    seed: int = 0,
    params: PreprocessParams,
    cache_dir: str | None = None,
    workers: int = 2,
    show_progress: bool = False,
) -> TrainData:
    """Generate balanced phantoms (``split="train"`` acquisitions) and preprocess them.

    Validation phantoms come from another seed stream and never share a phantom seed with training.

    Example:
        >>> data = prepare_synthetic(3, n_val=3, params=PreprocessParams(grid_shape=(16, 16, 16)), cache_dir="")
        ...  # doctest: +SKIP
    """

    n_val = n_val or max(12, n_train // 5)
    train_specs = _synthetic_specs(n_train, seed=seed, split="train")
    val_specs = _synthetic_specs(n_val, seed=seed + 7919, split="train")
    overlap = {s.seed for s in train_specs} & {s.seed for s in val_specs}
    if overlap:
        raise MedaiError(f"synthetic validation seeds must differ from training seeds, not share {sorted(overlap)[:5]}")
    gen_hash = _synthetic_source_hash()
    arrays = synthetic_inputs(
        [*train_specs, *val_specs], params=params, cache_dir=cache_dir, workers=workers, show_progress=show_progress
    )
    labels = np.array([CLASS_NAMES.index(s.label) for s in [*train_specs, *val_specs]], dtype=np.int64)
    return TrainData(
        train_arrays=arrays[:n_train],
        train_labels=labels[:n_train],
        val_arrays=arrays[n_train:],
        val_labels=labels[n_train:],
        description={
            "kind": "synthetic",
            "generator": (
                "medai.phantoms.synthetic.generate("
                "sample_spec(rng, label=CLASS_NAMES[i % 3], split='train'), fast=True)"
            ),
            "generator_sha256_16": gen_hash,
            "seed_train": seed,
            "seed_val": seed + 7919,
            "n_train": n_train,
            "n_val": n_val,
        },
    )


def _manifest_case(job: tuple[ManifestRow, dict[str, Any], str | None]) -> np.ndarray:
    row, params_dict, cache_root = job
    params = PreprocessParams.from_dict(params_dict)

    def compute() -> np.ndarray:
        return network_input(load_case(row), params)[0].array

    if cache_root is None:
        return compute()
    key = f"path:{path_fingerprint(row.path)}{_lungs_key(params)}"
    return InputCache(cache_root).get_or_compute(key, params, compute)


def prepare_manifest(
    path: str | Path,
    *,
    params: PreprocessParams,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    cache_dir: str | None = None,
    workers: int = 2,
    show_progress: bool = False,
) -> TrainData:
    """Load and preprocess the train and val rows of a manifest (the test rows are left for evaluation)."""
    rows = assign_splits(read_manifest(path), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    train_rows = [r for r in rows if r.split is Split.TRAIN]
    val_rows = [r for r in rows if r.split is Split.VAL]
    if not train_rows or not val_rows:
        raise MedaiError(f"manifest must have train and val cases, not {len(train_rows)} and {len(val_rows)}")
    root = _cache_root(cache_dir)
    jobs = [(r, params.to_dict(), root) for r in [*train_rows, *val_rows]]
    arrays = _map(_manifest_case, jobs, workers, "cases", show_progress)
    labels = np.array([r.label_index for r in [*train_rows, *val_rows]], dtype=np.int64)
    n = len(train_rows)
    return TrainData(
        arrays[:n],
        labels[:n],
        arrays[n:],
        labels[n:],
        description={
            "kind": "manifest",
            "path": str(path),
            "sha256": file_sha256(path),
            "n_train": n,
            "n_val": len(val_rows),
            "split_seed": seed,
        },
    )


def build_augmentation() -> mt.Compose:
    """Training augmentation on ``(1, z, y, x)`` arrays in the patient frame of :mod:`medai.preprocess`.

    Geometry: small rotations (mostly in the axial plane), scaling and shifts;
    left-right flips only (lesion distribution is bilateral-symmetric, but
    COVID-19 is posterior and lower-lobe predominant, so no AP or SI flips).
    Intensity: contrast (gamma), scale and shift (scanner calibration), noise
    (dose), smoothing and sharpening (reconstruction kernels).
    """
    return mt.Compose(
        [
            mt.RandAffine(
                prob=0.8,
                rotate_range=(0.2, 0.06, 0.06),  # radians about z (axial plane), y, x
                scale_range=(0.1, 0.1, 0.1),
                translate_range=(4, 4, 4),
                padding_mode="zeros",  # 0 is air after unit windowing
                mode="bilinear",
            ),
            mt.RandFlip(prob=0.5, spatial_axis=2),  # x: left-right
            mt.RandGaussianSmooth(prob=0.2, sigma_x=(0.3, 0.9), sigma_y=(0.3, 0.9), sigma_z=(0.3, 0.9)),
            mt.RandGaussianSharpen(prob=0.15, alpha=(2.0, 8.0)),
            mt.RandAdjustContrast(prob=0.3, gamma=(0.75, 1.35)),
            mt.RandScaleIntensity(factors=0.1, prob=0.5),
            mt.RandShiftIntensity(offsets=0.05, prob=0.5),
            mt.RandGaussianNoise(prob=0.4, std=0.03),
            mt.ToTensor(track_meta=False),
        ]
    )


class CaseDataset(torch.utils.data.Dataset):
    """Arrays + labels; each item's augmentation is seeded by (epoch seed, index)."""

    def __init__(self, arrays: Sequence[np.ndarray], labels: np.ndarray, transform: mt.Compose | None) -> None:
        self.arrays = arrays
        self.labels = labels
        self.transform = transform
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.arrays[index]
        if self.transform is None:
            return torch.as_tensor(x, dtype=torch.float32), int(self.labels[index])
        seed = int(np.random.SeedSequence([self.epoch_seed, index]).generate_state(1)[0])
        self.transform.set_random_state(seed=seed)
        out = self.transform(x)
        return torch.as_tensor(out, dtype=torch.float32), int(self.labels[index])
