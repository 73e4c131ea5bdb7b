"""Train the learned quantification head (QuantNet) on synthetic phantoms and export it to ONNX.

Three steps, each skipped when its output exists (``--force`` redoes them):

1. *Cache.* Train-split phantoms (``sample_spec(split="train")``, seeds from ``--seed``, default 200_000,
   disjoint from the evaluation seeds 5000+ and the tuning seeds 1000-1035), the three classes in turn,
   diseased severities half from ``sample_spec`` (log-uniform 0.01-0.6) and half uniform 0.3-0.9. Each is
   block-averaged onto the quantification grid (:func:`medai.quantify.measure.coarse_grid`, ~3 mm) together with
   the ground-truth fractions of normal lung, ground glass and consolidation; stored as
   ``runs/quantnet/cache/*.npz``.
2. *Train.* torch, random crops, augmentation (extra correlated noise, blur/sharpen, HU offset and gain,
   z-pooling to thick slices, flips), soft cross-entropy on the four class fractions.
3. *Export.* ONNX (dynamic spatial axes, HU window inside the graph) to ``models/medai-quant.onnx`` and
   the card ``models/medai-quant.json`` (sha256, data, metrics on the validation phantoms).

Synthetic phantoms only: not validated on patients.

Example:
    python scripts/train_quantnet.py --n-train 180 --minutes 15
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medai.labels import CLASS_NAMES
from medai.phantoms.synthetic import generate, sample_spec
from medai.quantify.grid import block_mean, coarse_grid

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / "runs" / "quantnet"
MODEL_PATH = ROOT / "models" / "medai-quant.onnx"
TARGET_SPACING_MM = (3.0, 3.0, 3.0)
HU_WINDOW = (-1100.0, 300.0)


# --- 1. cache ------------------------------------------------------------------------------------------


def _case(seed: int, index: int, *, matrix: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = CLASS_NAMES[index % 3]
    spec = sample_spec(rng, label=label, split="train", matrix=matrix)
    if label != "normal" and rng.random() < 0.5:
        spec = replace(spec, severity=round(float(rng.uniform(0.3, 0.9)), 4))
    ph = generate(spec, fast=True)
    grid = coarse_grid(ph.volume.spacing_mm, ph.volume.shape, target_spacing_mm=TARGET_SPACING_MM)
    hu = block_mean(ph.volume.hu, grid.factors)
    lung = ph.lung_mask > 0
    fractions = [
        block_mean((lung & (ph.lesion_mask == 0)).view(np.uint8), grid.factors),
        block_mean((lung & (ph.lesion_mask == 1)).view(np.uint8), grid.factors),
        block_mean((lung & (ph.lesion_mask == 2)).view(np.uint8), grid.factors),
    ]
    return {
        "hu": hu.astype(np.float16),
        "fractions": np.rint(np.stack(fractions) * 255).astype(np.uint8),
        "spacing_mm": np.asarray(grid.spacing_mm, np.float32),
        "lesion_percent": np.float32(ph.lesion_percent),
        "label": np.array(label),
        "severity": np.float32(spec.severity),
        "noise_hu": np.float32(spec.acquisition.noise_hu),
    }


def _write_case(job: tuple[Path, int, int]) -> str:
    path, seed, index = job
    matrix = (256, 256, 192)[(index // 3) % 3]
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **_case(seed, index, matrix=matrix))
    tmp.replace(path)
    return path.name


def make_cache(folder: Path, *, n: int, seed: int, force: bool = False, workers: int = 1) -> list[Path]:
    """Generate (or reuse) ``n`` cached phantoms with seeds ``seed + i``; returns their paths."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"case{seed + i}.npz" for i in range(n)]
    jobs = [(path, seed + i, i) for i, path in enumerate(paths) if force or not path.exists()]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, name in enumerate(pool.map(_write_case, jobs), 1):
            print(f"cached {name} ({done}/{len(jobs)}, {time.perf_counter() - start:.0f} s)", flush=True)
    return paths


# --- 2. model and training ----------------------------------------------------------------------------


def build_model(widths: tuple[int, int, int] = (8, 16, 32)) -> Any:
    """QuantNet: a 3-level UNet at ~6 mm with a 3 mm output through space-to-depth channels.

    Input ``(N, 1, D, H, W)`` HU on the quantification grid (D, H, W multiples of 8). Output
    ``(N, 24, D/2, H/2, W/2)`` sigmoids: channel ``k * 8 + (dz * 4 + dy * 2 + dx)`` is quantity ``k``
    (0 lung fraction, 1 lesion share of the lung, 2 consolidation share of the lesion) of the 3 mm
    voxel ``(2i + dz, 2j + dy, 2l + dx)``. No resize, transpose or channel softmax in the graph (slow in
    onnxruntime); :mod:`medai.quantify.head` rearranges the output in numpy.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    def cbr(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU())

    class QuantNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c1, c2, c3 = widths
            self.stem = nn.Conv3d(1, 16, 2, stride=2)  # the 8 voxels of each 2x2x2 block, learned mixes
            self.e1 = nn.Sequential(cbr(1, c1), cbr(c1, c1))
            self.e2 = nn.Sequential(cbr(c1, c2), cbr(c2, c2))
            self.e3 = nn.Sequential(cbr(c2, c3), cbr(c3, c3))
            self.u2 = nn.ConvTranspose3d(c3, c2, 2, stride=2)  # onnxruntime's Resize is slower
            self.d2 = cbr(c2, c2)
            self.u1 = nn.ConvTranspose3d(c2, c1, 2, stride=2)
            self.d1 = cbr(c1, c1)
            self.mix = nn.Conv3d(c1, 16, 1)
            self.head = nn.Conv3d(16, 24, 1)

        def forward(self, hu: torch.Tensor) -> torch.Tensor:
            x = ((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])).clamp(0.0, 1.0)
            local = self.stem(x)
            e1 = self.e1(F.avg_pool3d(x, 2))
            e2 = self.e2(F.max_pool3d(e1, 2))
            e3 = self.e3(F.max_pool3d(e2, 2))
            d2 = self.d2(e2 + self.u2(e3))
            d1 = self.d1(e1 + self.u1(d2))
            return torch.sigmoid(self.head(torch.relu(self.mix(d1) + local)))

    return QuantNet()


def space_to_depth(a: np.ndarray) -> np.ndarray:
    """``(..., C, D, H, W)`` -> ``(..., C * 8, D/2, H/2, W/2)`` in the output channel order of the model."""
    *lead, c, d, h, w = a.shape
    a = a.reshape(*lead, c, d // 2, 2, h // 2, 2, w // 2, 2)
    n = len(lead)
    a = a.transpose(*range(n), n, n + 2, n + 4, n + 6, n + 1, n + 3, n + 5)
    return a.reshape(*lead, c * 8, d // 2, h // 2, w // 2)


def _log_probs(out: Any) -> Any:
    """Log-probabilities ``(N, 4, 8, ...)`` of outside / normal lung / ground glass / consolidation."""
    import torch

    eps = 1e-6
    n, _, d, h, w = out.shape
    q = out.reshape(n, 3, 8, d, h, w).clamp(eps, 1 - eps)
    lung, lesion, cons = q[:, 0], q[:, 1], q[:, 2]
    return torch.stack(
        [
            torch.log1p(-lung),
            torch.log(lung) + torch.log1p(-lesion),
            torch.log(lung) + torch.log(lesion) + torch.log1p(-cons),
            torch.log(lung) + torch.log(lesion) + torch.log(cons),
        ],
        dim=1,
    )


class _Cases:
    """Cached phantoms in memory: HU (float32) and fractions (float32, 4 classes incl. outside)."""

    def __init__(self, paths: list[Path]) -> None:
        self.items = []
        for path in paths:
            with np.load(path) as z:
                self.items.append(
                    {
                        "hu": z["hu"].astype(np.float32),
                        "fractions": z["fractions"],
                        "spacing_mm": z["spacing_mm"],
                        "lesion_percent": float(z["lesion_percent"]),
                        "label": str(z["label"]),
                    }
                )


def _targets(fractions_u8: np.ndarray) -> np.ndarray:
    f = fractions_u8.astype(np.float32) / 255.0
    outside = np.clip(1.0 - f.sum(axis=0, keepdims=True), 0.0, 1.0)
    return np.concatenate([outside, f], axis=0)


def _augment(
    hu: np.ndarray, frac: np.ndarray, spacing_z: float, rng: np.random.Generator, *, dense_hu: float = 0.0
) -> tuple:
    """Denser consolidation, thick slices (z-pooling), blur/sharpen, HU gain/offset, correlated noise, flip.

    ``dense_hu`` > 0: in half of the crops every consolidated voxel gains the same ``U(0, dense_hu)`` HU, in
    proportion to its consolidated fraction (exact for block means). The phantoms draw consolidation at
    -90..+40 HU (median about -15); real and independently drawn consolidation reads 10-40 HU, more with IV
    contrast, where a head that never saw it leaves half of a consolidated lobe out of the lungs.
    """
    from scipy import ndimage

    if dense_hu > 0 and rng.random() < 0.5:
        hu = hu + np.float32(rng.uniform(0.0, dense_hu)) * frac[3]

    if spacing_z < 2.7 and rng.random() < 0.5:  # 1.5-2.6 mm -> 3-5.2 mm slices, like thick reconstructions
        nz = hu.shape[0] // 2 * 2
        hu = hu[:nz].reshape(nz // 2, 2, *hu.shape[1:]).mean(axis=1)
        frac = frac[:, :nz].reshape(frac.shape[0], nz // 2, 2, *frac.shape[2:]).mean(axis=2)
    r = rng.random()
    if r < 0.3:
        hu = ndimage.gaussian_filter(hu, (0.0, *(2 * [rng.uniform(0.3, 0.8)])))
    elif r < 0.6:
        blurred = ndimage.gaussian_filter(hu, (0.0, 1.0, 1.0))
        hu = hu + rng.uniform(0.2, 0.8) * (hu - blurred)
    # Small HU calibration drift only: ground glass (-750..-600) is 100-250 HU above normal lung (-850).
    hu = hu * rng.uniform(0.99, 1.01) + rng.uniform(-8.0, 8.0)
    sigma = rng.uniform(0.0, 30.0)
    if sigma > 1:
        noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), (0.0, 0.7, 0.7))
        hu = hu + noise * (sigma / max(float(noise.std()), 1e-6))
    if rng.random() < 0.5:  # right-left mirror (the sides swap, the classes do not care)
        hu, frac = hu[..., ::-1], frac[..., ::-1]
    return np.ascontiguousarray(hu, dtype=np.float32), np.ascontiguousarray(frac, dtype=np.float32)


def _crop(
    item: dict, rng: np.random.Generator, size: tuple[int, int, int], *, dense_hu: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    hu, frac = item["hu"], _targets(item["fractions"])
    hu, frac = _augment(hu, frac, float(item["spacing_mm"][0]), rng, dense_hu=dense_hu)
    pad = [(0, max(0, s - n)) for s, n in zip(size, hu.shape, strict=True)]
    if any(p[1] for p in pad):
        hu = np.pad(hu, pad, mode="edge")
        frac = np.pad(frac, [(0, 0), *pad], mode="constant")
        frac[0][frac.sum(axis=0) == 0] = 1.0
    lung = frac[1:].sum(axis=0) > 0.5
    if lung.any() and rng.random() < 0.7:  # centre on a lung voxel (else anywhere: neck, abdomen, wall)
        idx = np.argwhere(lung)
        centre = idx[rng.integers(len(idx))]
    else:
        centre = np.array([rng.integers(n) for n in hu.shape])
    lo = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, hu.shape, strict=True)]
    box = tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))
    return hu[box], frac[(slice(None), *box)]


def load_onnx_weights(model: Any, path: Path) -> None:
    """Initialise ``model`` from an exported head: BatchNorm was folded into the convolutions at export.

    Each convolution takes the folded weight; its BatchNorm becomes the identity plus the folded bias
    (running mean 0, variance 1 - eps), so in eval mode the torch model computes what the ONNX file does.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    weights = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(path)).graph.initializer
    }
    state = model.state_dict()
    for name in list(state):
        if name in weights and weights[name].shape == state[name].shape:
            state[name] = weights[name]
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            conv_name = module_name.rsplit(".", 1)[0] + ".0.weight"
            folded = weights.get(conv_name + "_bias")
            if folded is None:
                raise ValueError(f"{path} must hold the folded bias {conv_name}_bias of a medai-quant head")
            state[module_name + ".weight"] = torch.ones_like(folded)
            state[module_name + ".bias"] = folded
            state[module_name + ".running_mean"] = torch.zeros_like(folded)
            state[module_name + ".running_var"] = torch.full_like(folded, 1 - module.eps)
    model.load_state_dict(state)


def _padded(hu: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    pad = [(0, (-n) % 8) for n in hu.shape]
    return np.pad(hu, pad, mode="edge"), tuple(slice(0, n) for n in hu.shape)


def _validate(model: Any, cases: _Cases) -> dict[str, float]:
    """Lesion % MAE, coarse lung Dice and grade accuracy of the torch model on whole volumes."""
    import torch

    from medai.labels import severity_from_percent

    model.eval()
    errors, dices, grades = [], [], []
    with torch.no_grad():
        for item in cases.items:
            hu, box = _padded(item["hu"])
            out = model(torch.from_numpy(hu)[None, None]).numpy()[0]
            q = depth_to_space(out)[(slice(None), *box)]
            lung = q[0]
            lesion = q[0] * q[1]
            percent = 100.0 * float(lesion.sum()) / max(float(lung.sum()), 1e-6)
            truth = _targets(item["fractions"])
            true_lung = truth[1:].sum(axis=0) >= 0.5
            dices.append(
                2 * float((true_lung & (lung >= 0.5)).sum()) / max(1, int(true_lung.sum() + (lung >= 0.5).sum()))
            )
            errors.append(abs(percent - item["lesion_percent"]))
            grades.append(severity_from_percent(min(percent, 100.0)) is severity_from_percent(item["lesion_percent"]))
    model.train()
    return {
        "lesion_mae_points": float(np.mean(errors)),
        "coarse_lung_dice": float(np.mean(dices)),
        "grade_accuracy": float(np.mean(grades)),
    }


def depth_to_space(out: np.ndarray) -> np.ndarray:
    """Model output ``(24, d, h, w)`` -> ``(3, 2d, 2h, 2w)`` (lung, lesion share, consolidation share)."""
    _, d, h, w = out.shape
    a = out.reshape(3, 2, 2, 2, d, h, w).transpose(0, 4, 1, 5, 2, 6, 3)
    return a.reshape(3, 2 * d, 2 * h, 2 * w)


def _batch(
    cases: _Cases, rng: np.random.Generator, size: tuple[int, int, int], batch: int, *, dense_hu: float = 0.0
) -> tuple[Any, Any]:
    import torch

    crops = [_crop(cases.items[rng.integers(len(cases.items))], rng, size, dense_hu=dense_hu) for _ in range(batch)]
    hu = torch.from_numpy(np.stack([c[0] for c in crops]))[:, None]
    target = torch.from_numpy(space_to_depth(np.stack([c[1] for c in crops])))
    return hu, target.reshape(batch, 4, 8, *target.shape[2:])


def recalibrate_batchnorm(model: Any, cases: _Cases, *, seed: int, batches: int = 80, batch: int = 2) -> None:
    """Replace the running BatchNorm statistics by plain averages over ``batches`` fresh training batches."""
    import torch

    rng = np.random.default_rng(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(_batch(cases, rng, (32, 96, 96), batch)[0])
    model.eval()


def train(
    train_cases: _Cases,
    val_cases: _Cases,
    *,
    minutes: float,
    seed: int,
    threads: int,
    batch: int,
    lr: float,
    init: Path | None = None,
    init_onnx: Path | None = None,
    freeze_bn: bool = False,
    validate_every: int = 400,
    lesion_weight: float = 1.0,
    dense_hu: float = 0.0,
) -> tuple[Any, dict[str, float], dict[str, Any]]:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    model = build_model()
    if init is not None:
        model.load_state_dict(torch.load(init, map_location="cpu"))
    if init_onnx is not None:
        load_onnx_weights(model, init_onnx)

    def train_mode() -> None:
        model.train()
        if freeze_bn:
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm3d):
                    module.eval()

    train_mode()
    if init is not None or init_onnx is not None:
        print(f"start {_validate(model, val_cases)}", flush=True)
        train_mode()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    size = (32, 96, 96)
    class_weights = torch.tensor([1.0, 1.0, lesion_weight, lesion_weight]).reshape(1, 4, 1, 1, 1, 1)
    start = time.perf_counter()
    budget = 60.0 * minutes
    step, losses = 0, []
    best: tuple[float, dict[str, Any], dict[str, float]] | None = None
    while time.perf_counter() - start < budget:
        lr_now = lr * 0.5 * (1 + np.cos(np.pi * min(1.0, (time.perf_counter() - start) / budget)))
        for group in opt.param_groups:
            group["lr"] = lr_now
        hu, target = _batch(train_cases, rng, size, batch, dense_hu=dense_hu)
        logp = _log_probs(model(hu))
        # Opacities are ~4 % of the voxels: weigh them up (the lesion-share term below keeps the sums honest).
        weight = (target * class_weights).sum(dim=1)
        ce = -(weight * (target * logp).sum(dim=1)).mean()
        probs = logp.exp()
        lung_sum = probs[:, 1:].sum(dim=(1, 2, 3, 4, 5))
        les_sum = probs[:, 2:].sum(dim=(1, 2, 3, 4, 5))
        t_lung = target[:, 1:].sum(dim=(1, 2, 3, 4, 5))
        t_les = target[:, 2:].sum(dim=(1, 2, 3, 4, 5))
        share = (les_sum / (lung_sum + 50.0) - t_les / (t_lung + 50.0)).abs().mean()
        loss = ce + share
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % validate_every == 0:
            metrics = _validate(model, val_cases)
            train_mode()
            elapsed = time.perf_counter() - start
            print(
                f"step {step} {elapsed:.0f} s loss {np.mean(losses[-validate_every:]):.4f} lr {lr_now:.2e} {metrics}",
                flush=True,
            )
            score = metrics["lesion_mae_points"] + 100 * (1 - metrics["coarse_lung_dice"])
            if best is None or score < best[0]:
                best = (score, {k: v.clone() for k, v in model.state_dict().items()}, metrics)
    metrics = _validate(model, val_cases)
    print(f"final step {step} {metrics}", flush=True)
    score = metrics["lesion_mae_points"] + 100 * (1 - metrics["coarse_lung_dice"])
    if best is not None and best[0] < score:
        model.load_state_dict(best[1])
        metrics = best[2]
        score = best[0]
        print(f"kept the best checkpoint {metrics}", flush=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if not freeze_bn:
        recalibrate_batchnorm(model, train_cases, seed=seed + 1)
        recalibrated = _validate(model, val_cases)
        print(f"BatchNorm statistics recalibrated: {recalibrated}", flush=True)
        if recalibrated["lesion_mae_points"] + 100 * (1 - recalibrated["coarse_lung_dice"]) < score:
            metrics = recalibrated
        else:
            model.load_state_dict(state)
    info = {
        "steps": step,
        "batch": batch,
        "crop": list(size),
        "lr": lr,
        "minutes": minutes,
        "seed": seed,
        "init": str(init.name) if init else (str(init_onnx.name) if init_onnx else None),
        "freeze_bn": freeze_bn,
        "lesion_weight": lesion_weight,
        "dense_consolidation_hu": dense_hu,
    }
    return model.eval(), metrics, info


# --- 3. export ----------------------------------------------------------------------------------------


def export(model: Any, path: Path, *, metadata: dict[str, Any]) -> str:
    """ONNX export with dynamic spatial axes (multiples of 8) and medai metadata; returns the sha256."""
    import onnx
    import torch

    example = torch.zeros(1, 1, 32, 64, 64)
    dims = {
        axis: 8 * torch.export.Dim(f"s{axis}", min=1, max=256)  # type: ignore[attr-defined]
        for axis in (2, 3, 4)
    }
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        dynamo=True,
        input_names=["hu"],
        output_names=["quantities"],
        dynamic_shapes={"hu": dims},
        external_data=False,
    )
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medai", json.dumps(metadata)
    onnx.save(proto, str(path))
    tmp.unlink()
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parity(model: Any, path: Path, item: dict) -> float:
    import onnxruntime as ort
    import torch

    hu, _ = _padded(item["hu"])
    with torch.no_grad():
        ref = model(torch.from_numpy(hu)[None, None]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"hu": hu[None, None]})[0]
    return float(np.abs(got - ref).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=180, help="training phantoms")
    parser.add_argument("--n-val", type=int, default=15, help="validation phantoms (train ranges, other seeds)")
    parser.add_argument("--seed", type=int, default=200_000, help="first training seed")
    parser.add_argument("--val-seed", type=int, default=300_000, help="first validation seed")
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--output", type=Path, default=MODEL_PATH, help="ONNX path (card beside it, .json)")
    parser.add_argument("--lesion-weight", type=float, default=1.0, help="cross-entropy weight of opacity voxels")
    parser.add_argument("--train-seed", type=int, default=0, help="seed of crops, augmentation and initial weights")
    parser.add_argument("--init-from", type=Path, help="start from these weights (a state dict from a previous run)")
    parser.add_argument("--out-dir", type=Path, default=RUN_DIR, help="where the torch weights go")
    parser.add_argument("--cache-only", action="store_true", help="stop after the cache")
    parser.add_argument("--cache-dir", type=Path, default=RUN_DIR / "cache", help="where the cached phantoms go")
    parser.add_argument("--workers", type=int, default=1, help="processes generating the cache")
    parser.add_argument(
        "--init-from-onnx",
        type=Path,
        help="start from an exported head (e.g. models/medai-quant.onnx): its BatchNorm-folded weights",
    )
    parser.add_argument(
        "--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed while training (fine-tuning)"
    )
    parser.add_argument(
        "--dense-consolidation-hu",
        type=float,
        default=0.0,
        help="in half of the crops, raise consolidation by up to this many HU (0: off, as runs 1-8)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate the cache")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    train_paths = make_cache(args.cache_dir, n=args.n_train, seed=args.seed, force=args.force, workers=args.workers)
    val_paths = make_cache(args.cache_dir, n=args.n_val, seed=args.val_seed, force=args.force, workers=args.workers)
    if args.cache_only:
        return 0
    t1 = time.perf_counter()
    model, metrics, info = train(
        _Cases(train_paths),
        (val := _Cases(val_paths)),
        minutes=args.minutes,
        seed=args.train_seed,
        threads=args.threads,
        batch=args.batch,
        lr=args.lr,
        init=args.init_from,
        init_onnx=args.init_from_onnx,
        freeze_bn=args.freeze_bn,
        lesion_weight=args.lesion_weight,
        dense_hu=args.dense_consolidation_hu,
    )
    t2 = time.perf_counter()
    import torch

    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out_dir / "quantnet.pt")
    metadata = {
        "format": "medai-quant/1",
        "name": "medai-quant",
        "hu_window": list(HU_WINDOW),
        "target_spacing_mm": list(TARGET_SPACING_MM),
        "multiple": 8,
        "outputs": "24 sigmoids at half resolution: channel k*8 + dz*4 + dy*2 + dx, k = lung, lesion|lung, cons|lesion",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sha = export(model, args.output, metadata=metadata)
    parity = _parity(model, args.output, val.items[0])
    params = sum(p.numel() for p in model.parameters())
    card = {
        "name": "medai-quant",
        "file": args.output.name,
        "sha256": sha,
        "intended_use": "research only; not a medical device",
        "training_data": (
            f"synthetic phantoms only: not validated on patients. {args.n_train} medai.phantoms.synthetic "
            "train-split phantoms "
            f"(seeds {args.seed}..{args.seed + args.n_train - 1}, classes in turn, matrix 192/256, fast generator), "
            f"validation {args.n_val} (seeds {args.val_seed}+)"
        ),
        "network": f"3-level 3D UNet at ~6 mm with space-to-depth 3 mm output, {params} parameters",
        "metadata": metadata,
        "training": info,
        "validation_metrics": metrics,
        "export_parity_max_abs": parity,
        "seconds": {"cache": round(t1 - t0, 1), "train": round(t2 - t1, 1)},
    }
    args.output.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"exported {args.output} ({args.output.stat().st_size} bytes, sha256 {sha[:12]}, parity {parity:.2e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
