"""Training: manifest or phantoms -> shared preprocessing -> MONAI augmentation -> 3D CNN -> checkpoint.

Read top to bottom: :func:`train` takes a :class:`~medai.training.config.TrainConfig`
(every knob, commented defaults; data preparation and augmentation live in
:mod:`medai.training.data`, saved state in :mod:`medai.training.run_state`): seeded,
CUDA + AMP when available, DDP under ``torchrun`` (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; nccl on CUDA, gloo on CPU), rank 0 writes a CSV log,
TensorBoard (when installed) and self-describing checkpoints; ``resume``
continues after an interruption; early stopping on the validation metric;
temperature scaling on the validation split at the end.

Determinism: each epoch reseeds torch with ``seed + epoch`` and every
augmented sample draws from a seed derived from ``(seed, epoch, index)``, so
a resumed run repeats an uninterrupted one exactly on CPU, whatever the
number of data-loader workers.

The checkpoint is loaded by :func:`medai.training.network.load_checkpoint`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import DataLoader
from sklearn.metrics import roc_auc_score
from torch import nn

from medai.errors import MedaiError
from medai.inference.calibration import DecisionRule, fit_temperature, nll
from medai.labels import CLASS_NAMES
from medai.preprocess import PreprocessParams
from medai.training.config import TrainConfig, TrainResult, jsonable_config
from medai.training.data import CaseDataset, TrainData, build_augmentation, prepare_manifest, prepare_synthetic
from medai.training.network import CHECKPOINT_FORMAT, build_model, count_params, estimate_flops, predict_logits
from medai.training.run_state import (
    append_csv,
    code_version,
    device_for,
    distributed,
    init_weights,
    rng_states,
    save_atomic,
    set_rng_states,
)

__all__ = ["run_cli", "train"]

log = logging.getLogger(__name__)


def _validate(model: nn.Module, data: TrainData, batch_size: int) -> tuple[dict[str, float], np.ndarray]:
    logits = predict_logits(model, data.val_arrays, batch_size=batch_size)
    labels = data.val_labels
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    # one-vs-rest ROC AUC per class; nan for a class the validation set lacks (sklearn would raise)
    aucs = np.array(
        [
            roc_auc_score(labels == k, probs[:, k]) if 0 < (labels == k).sum() < labels.size else np.nan
            for k in range(probs.shape[1])
        ]
    )
    metrics = {
        "val_loss": nll(logits, labels),
        "val_accuracy": float((logits.argmax(axis=1) == labels).mean()),
        "val_auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "val_auc_covid19": float(aucs[CLASS_NAMES.index("covid19")]),
    }
    return metrics, logits


def _lr_lambda(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _load_data(cfg: TrainConfig, params: PreprocessParams, rank: int, world: int) -> TrainData:
    def prepare() -> TrainData:
        show = cfg.progress and rank == 0
        if cfg.manifest:
            return prepare_manifest(
                cfg.manifest,
                params=params,
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
                seed=cfg.seed,
                cache_dir=cfg.cache_dir,
                workers=cfg.prep_workers,
                show_progress=show,
            )
        if cfg.synthetic > 0:
            return prepare_synthetic(
                cfg.synthetic,
                n_val=cfg.synthetic_val,
                seed=cfg.seed,
                params=params,
                cache_dir=cfg.cache_dir,
                workers=cfg.prep_workers,
                show_progress=show,
            )
        raise MedaiError("training data must be a manifest or a number of synthetic phantoms, not neither")

    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 fills the cache first
    data = prepare()
    if world > 1 and rank == 0:
        dist.barrier()
    return data


def train(cfg: TrainConfig, *, data: TrainData | None = None) -> TrainResult:
    """Train (or resume) a model; rank 0 writes ``last.pt``, ``best.pt`` and the final ``model.pt``.

    Args:
        cfg: the settings.
        data: preprocessed arrays; when ``None`` they come from ``cfg.manifest`` or ``cfg.synthetic``.

    Returns:
        The :class:`TrainResult` (final model with the best weights, calibrated metrics).

    Raises:
        MedaiError: no data, inconsistent resume state.
    """
    rank, world, local_rank = distributed()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    device = device_for(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    is_main = rank == 0
    out_dir = Path(cfg.out_dir)
    params = cfg.preprocess_params()
    spec = cfg.model_spec()
    if data is None:
        data = _load_data(cfg, params, rank, world)
    if not data.train_arrays or not data.val_arrays:
        raise MedaiError("training and validation sets must not be empty")
    expected = (1, *params.grid_shape)
    if data.train_arrays[0].shape != expected:
        raise MedaiError(f"input arrays must have shape {expected}, not {data.train_arrays[0].shape}")

    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    if cfg.init_from:
        init_weights(model, cfg.init_from)
    model = model.to(device)
    if is_main:
        log.info(
            "model: %d parameters, %.2f GFLOP per forward at %s",
            count_params(model),
            estimate_flops(model, spec.input_shape) / 1e9,
            spec.input_shape,
        )
    ddp_model: nn.Module = model
    if world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    train_ds = CaseDataset(data.train_arrays, data.train_labels, build_augmentation() if cfg.augment else None)
    sampler: torch.utils.data.Sampler[int] | None = None
    if world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(
            train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    generator = torch.Generator()
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        num_workers=cfg.num_workers,
        drop_last=len(train_ds) // world > cfg.batch_size,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
    counts = np.bincount(data.train_labels, minlength=len(CLASS_NAMES)).astype(np.float64)
    weights = counts.sum() / np.maximum(counts, 1) / len(CLASS_NAMES) if cfg.balance_classes else np.ones(len(counts))
    loss_fn = nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=device), label_smoothing=cfg.label_smoothing
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    )
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    higher_better = cfg.monitor == "val_auc"
    if cfg.monitor not in ("val_loss", "val_auc"):
        raise MedaiError(f"monitor must be 'val_loss' or 'val_auc', not {cfg.monitor!r}")
    start_epoch, best, best_epoch, history = 0, -math.inf if higher_better else math.inf, -1, []
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if cfg.resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if state.get("data") != data.description or state.get("model_spec") != spec.to_dict():
            raise MedaiError(f"resume must use the same data and model as {last_path}, not different ones")
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        scaler.load_state_dict(state["scaler_state"])
        set_rng_states(state["rng_states"])
        start_epoch, best, best_epoch, history = (
            state["epoch"] + 1,
            state["best"],
            state["best_epoch"],
            state["history"],
        )
        if is_main:
            log.info("resumed from %s at epoch %d", last_path, start_epoch)

    writer = None
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            writer = None

    def checkpoint(kind: str, epoch: int, metrics: dict[str, float], temperature: float = 1.0) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": kind,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_spec": spec.to_dict(),
            "preprocess": params.to_dict(),
            "class_names": list(CLASS_NAMES),
            "temperature": float(temperature),
            "decision_rule": DecisionRule(
                class_names=CLASS_NAMES,
                positive_class="covid19",
                threshold=cfg.covid_threshold,
                band_half_width=cfg.indeterminate_band,
                min_top_probability=cfg.indeterminate_min_top,
            ).to_dict(),
            "metrics": dict(metrics),
            "epoch": epoch,
            "best": best,
            "best_epoch": best_epoch,
            "history": history,
            "data": data.description,
            "code": code_version(),
            "config": jsonable_config(cfg),
            "created_unix": time.time(),
        }

    stopped_early = False
    epochs_run = 0
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not (cfg.progress and is_main),
    )
    with progress:
        epoch_task = progress.add_task("epochs", total=cfg.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            if best_epoch >= 0 and epoch - best_epoch > cfg.patience:
                stopped_early = True
                break
            if cfg.max_epochs_this_run and epochs_run >= cfg.max_epochs_this_run:
                break
            t0 = time.perf_counter()
            epoch_seed = cfg.seed * 1_000_003 + epoch
            torch.manual_seed(epoch_seed + rank)
            train_ds.epoch_seed = epoch_seed
            generator.manual_seed(epoch_seed)
            if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
                sampler.set_epoch(epoch)
            ddp_model.train()
            total, n_seen = 0.0, 0
            step_task = progress.add_task(f"epoch {epoch + 1}", total=steps_per_epoch, info="")
            for step, (x, y) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    loss = loss_fn(ddp_model(x), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total += float(loss.detach()) * len(y)
                n_seen += len(y)
                progress.update(step_task, advance=1, info=f"loss {total / n_seen:.3f}")
            progress.remove_task(step_task)
            metrics, _ = _validate(model, data, cfg.batch_size)
            metrics.update(
                epoch=float(epoch),
                train_loss=total / max(n_seen, 1),
                lr=float(scheduler.get_last_lr()[0]),
                seconds=time.perf_counter() - t0,
            )
            history.append(metrics)
            value = metrics[cfg.monitor]
            if (value > best) if higher_better else (value < best):
                best, best_epoch = value, epoch
                if is_main:
                    save_atomic(checkpoint("best", epoch, metrics), best_path)
            if is_main:
                state = checkpoint("last", epoch, metrics)
                state.update(
                    optimizer_state=optimizer.state_dict(),
                    scheduler_state=scheduler.state_dict(),
                    scaler_state=scaler.state_dict(),
                    rng_states=rng_states(),
                )
                save_atomic(state, last_path)
                append_csv(out_dir / "log.csv", metrics)
                if writer is not None:
                    for k, v in metrics.items():
                        writer.add_scalar(k, v, epoch)
                log.info(
                    "epoch %d: train %.4f val %.4f acc %.3f auc %.3f (%.0f s)",
                    epoch + 1,
                    metrics["train_loss"],
                    metrics["val_loss"],
                    metrics["val_accuracy"],
                    metrics["val_auc"],
                    metrics["seconds"],
                )
            progress.update(
                epoch_task,
                advance=1,
                info=f"val loss {metrics['val_loss']:.3f} auc {metrics['val_auc']:.3f}",
            )
            epochs_run += 1
    if writer is not None:
        writer.close()
    if world > 1:
        dist.barrier()

    finished = stopped_early or not history or int(history[-1]["epoch"]) == cfg.epochs - 1
    if not finished:  # interrupted on purpose (max_epochs_this_run): resume later
        return TrainResult(model, last_path if is_main else None, history[-1] if history else {}, history, 1.0)

    # final model: best weights, temperature fitted on validation
    if best_path.is_file():
        model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["model_state"])
    metrics, logits = _validate(model, data, cfg.batch_size)
    temperature = fit_temperature(logits, data.val_labels)
    metrics["val_nll_calibrated"] = nll(logits, data.val_labels, temperature)
    metrics["best_epoch"] = float(best_epoch)
    metrics["stopped_early"] = float(stopped_early)
    final_path = out_dir / "model.pt"
    if is_main:
        final = checkpoint("final", best_epoch, metrics, temperature)
        save_atomic(final, final_path)
        if cfg.output:
            save_atomic(final, Path(cfg.output))
        log.info("final model %s: T=%.3f val %s", final_path, temperature, metrics)
    return TrainResult(model, final_path if is_main else None, metrics, history, temperature)


def run_cli(args: Any) -> int:
    """``medai train`` handler: build a :class:`TrainConfig` from parsed arguments, train, print a summary."""
    cfg = TrainConfig(
        out_dir=args.out_dir,
        seed=args.seed,
        manifest=args.manifest,
        synthetic=args.synthetic or 0,
        synthetic_val=args.synthetic_val,
        cache_dir="" if args.no_cache else args.cache_dir,
        prep_workers=args.prep_workers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        num_workers=args.workers,
        amp=not args.no_amp,
        device=args.device,
        max_steps_per_epoch=args.max_steps_per_epoch,
        monitor=args.monitor,
        patience=args.patience,
        resume=args.resume,
        init_from=args.init_from,
        progress=not args.no_progress,
        output=args.output,
    )
    if args.grid:
        cfg.grid_shape = tuple(args.grid)
    cfg.lung_margin_mm = float(getattr(args, "lung_margin_mm", 0.0))
    result = train(cfg)
    if result.checkpoint_path is not None:
        shown = {k: round(v, 4) for k, v in result.metrics.items()}
        print(f"model: {result.checkpoint_path}  temperature {result.temperature:.3f}  {shown}")
    return 0
