"""Sanity checks of medai's saliency maps (Adebayo et al. 2018, "Sanity checks for saliency maps").

On covid19 phantoms never used in training (``split="heldout"``, other seeds),
with their exact ground-truth lesion masks:

1. *Model randomisation.* The same network with freshly initialised weights
   must give a different map: Spearman rank correlation with the trained
   model's map, over lung voxels of the model grid, below 0.3. One random
   draw is a noisy yardstick (on the same case the correlation ranges from
   -0.15 to 0.4 across draws, its sign set by the draw), so each case uses
   ``RANDOM_DRAWS`` independent initialisations and the mean *absolute*
   correlation: a map anti-correlated with a random network's fails too.
2. *Localisation.* The top 5 % most salient lung voxels must hit the true
   lesions far more often than chance: ratio = P(lesion | top 5 %) /
   P(lesion | lung) (chance = 1).
3. *Deletion.* Setting the top 5 % most salient lung voxels to normal lung
   (-850 HU) must lower the network's p(covid19) (its temperature-scaled
   logits: the map explains the network, whatever decision layer the model
   serves) more than setting as many random lung voxels to -850 HU.

Usage::

    python scripts/eval_saliency.py                      # shipped model, 30 phantoms
    python scripts/eval_saliency.py --model m.onnx --checkpoint m.pt --cases 10

The checkpoint (for the randomisation check, which rebuilds the network in
torch) defaults to the one named in the model card beside the ONNX file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from medai.inference.calibration import softmax
from medai.inference.classifier import Classifier
from medai.inference.network_input import network_input
from medai.inference.saliency import lungs_on_model_grid, make_saliency
from medai.phantoms import synthetic
from medai.preprocess import ModelInput
from medai.training.network import build_model, load_checkpoint
from medai.volume import Volume

NORMAL_LUNG_HU = -850
TOP_FRACTION = 0.05
RANDOM_DRAWS = 5


@dataclass(frozen=True)
class CaseResult:
    """Sanity-check numbers of one phantom."""

    seed: int
    lesion_fraction: float  # of lung voxels (source grid)
    p_covid: float
    overlap_ratio: float  # P(lesion | top 5 %) / P(lesion | lung)
    drop_top: float  # p_covid - p_covid after deleting the top 5 %
    drop_random: float  # p_covid - p_covid after deleting as many random lung voxels
    randomised_rank_corr: float  # mean |Spearman rho| with the maps of RANDOM_DRAWS randomly initialised networks
    randomised_rank_corr_draws: tuple[float, ...]  # the signed rho of each draw


def covid_phantoms(n: int, *, seed: int, matrix: int = 160) -> list[tuple[int, synthetic.Phantom]]:
    """``n`` covid19 held-out phantoms (fast generator) with their seeds."""
    out = []
    for i in range(n):
        case_seed = seed + i
        spec = synthetic.sample_spec(np.random.default_rng(case_seed), label="covid19", split="heldout", matrix=matrix)
        out.append((case_seed, synthetic.generate(spec, fast=True)))
    return out


def _torch_map(model: torch.nn.Module, mi: ModelInput, k: int, lungs: np.ndarray, source_shape: Any) -> Any:
    with torch.inference_mode():
        _, cam = model.forward_with_cam(torch.from_numpy(mi.array[None]))
    sal = make_saliency(
        cam[0].numpy(), k, "covid19", lungs=lungs, index_affine=mi.index_affine, source_shape=source_shape
    )
    return sal.map[lungs]


def check_case(
    clf: Classifier,
    trained: torch.nn.Module,
    randomised: Sequence[torch.nn.Module],
    seed: int,
    phantom: synthetic.Phantom,
) -> CaseResult:
    """Run the three checks on one phantom (saliency of class covid19, restricted to the true lungs)."""
    rng = np.random.default_rng(seed)
    lung = phantom.lung_mask > 0
    lesion = phantom.lesion_mask > 0
    volume = phantom.volume
    k = clf.class_names.index("covid19")
    mi = network_input(volume, clf.preprocess)[0]  # what the served model sees (the lungs only, if so trained)
    _, cam = clf._run(mi.array[None])
    lungs_model = lungs_on_model_grid(lung.astype(np.uint8), (1, 1, 1), mi.index_affine, mi.array.shape[1:])
    sal = make_saliency(
        cam[0], k, "covid19", lungs=lungs_model, index_affine=mi.index_affine, source_shape=volume.shape
    )
    values = sal.to_source()[lung]
    n_top = max(1, int(TOP_FRACTION * values.size))
    top_idx = np.argpartition(-values, n_top - 1)[:n_top]
    lung_idx = np.flatnonzero(lung)
    lesion_in_lung = lesion.ravel()[lung_idx]
    ratio = float(lesion_in_lung[top_idx].mean() / max(lesion_in_lung.mean(), 1e-9))

    def deleted(indices: np.ndarray) -> Volume:
        hu = volume.hu.copy()
        hu.ravel()[lung_idx[indices]] = NORMAL_LUNG_HU
        return volume.with_array(hu)

    random_idx = rng.choice(values.size, size=n_top, replace=False)
    p = network_probabilities(clf, [volume, deleted(top_idx), deleted(random_idx)])[:, k]
    trained_map = _torch_map(trained, mi, k, lungs_model, volume.shape)
    draws = tuple(
        float(np.nan_to_num(stats.spearmanr(trained_map, _torch_map(r, mi, k, lungs_model, volume.shape)).statistic))
        for r in randomised
    )
    return CaseResult(
        seed=seed,
        lesion_fraction=float(lesion_in_lung.mean()),
        p_covid=float(p[0]),
        overlap_ratio=ratio,
        drop_top=float(p[0] - p[1]),
        drop_random=float(p[0] - p[2]),
        randomised_rank_corr=float(np.mean(np.abs(draws))),
        randomised_rank_corr_draws=draws,
    )


def network_probabilities(clf: Classifier, volumes: Sequence[Volume]) -> np.ndarray:
    """The network's own probabilities (temperature-scaled logits) on what it sees of each volume.

    The class activation map explains these, not a decision layer's: a ``findings`` layer decides from the
    measured opacities, and deleting salient voxels would test the quantification instead.
    """
    arrays = np.stack([network_input(v, clf.preprocess)[0].array for v in volumes])
    return softmax(clf._run(arrays)[0], clf.temperature)


def randomised_copy(model: torch.nn.Module, *, seed: int) -> torch.nn.Module:
    """The same architecture with freshly initialised weights (full model randomisation), in eval mode."""
    torch.manual_seed(seed)
    spec = model.spec  # type: ignore[attr-defined]
    return build_model(spec).eval()


def run(
    model_path: str | None, checkpoint: str | None, *, cases: int, seed: int, matrix: int = 160
) -> list[CaseResult]:
    """All checks on ``cases`` phantoms; the torch checkpoint must be the one the ONNX model came from."""
    clf = Classifier.load(model_path)
    ckpt_path = Path(checkpoint) if checkpoint else clf.path.with_suffix(".pt")
    trained, _ = load_checkpoint(ckpt_path)
    randomised = [randomised_copy(trained, seed=seed + draw) for draw in range(RANDOM_DRAWS)]
    return [check_case(clf, trained, randomised, s, ph) for s, ph in covid_phantoms(cases, seed=seed, matrix=matrix)]


def summarise(results: Sequence[CaseResult]) -> dict[str, float]:
    """Medians and the share of cases passing each check."""
    ratio = np.array([r.overlap_ratio for r in results])
    top = np.array([r.drop_top for r in results])
    rnd = np.array([r.drop_random for r in results])
    corr = np.array([r.randomised_rank_corr for r in results])
    first = np.array([r.randomised_rank_corr_draws[0] for r in results])
    return {
        "cases": float(len(results)),
        "median_overlap_ratio": float(np.median(ratio)),
        "share_overlap_ratio_gt_2": float(np.mean(ratio > 2.0)),
        "mean_drop_top5": float(top.mean()),
        "mean_drop_random": float(rnd.mean()),
        "share_top_drop_gt_random": float(np.mean(top > rnd)),
        "median_randomised_rank_corr": float(np.median(corr)),
        "max_randomised_rank_corr": float(np.max(corr)),
        "median_first_draw_signed_corr": float(np.median(first)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (default: the shipped one)")
    parser.add_argument("--checkpoint", help="its torch checkpoint (default: the .pt beside the model)")
    parser.add_argument("--cases", type=int, default=30, help="covid19 phantoms (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=555_000, help="first phantom seed (default: %(default)s)")
    parser.add_argument("--json", help="write per-case results and the summary here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    results = run(args.model, args.checkpoint, cases=args.cases, seed=args.seed)
    summary = summarise(results)
    print(f"{'seed':>8} {'lesion%':>8} {'p_covid':>8} {'overlap':>8} {'drop_top':>9} {'drop_rnd':>9} {'rand_rho':>9}")
    for r in results:
        print(
            f"{r.seed:>8} {100 * r.lesion_fraction:>8.1f} {r.p_covid:>8.3f} {r.overlap_ratio:>8.2f} "
            f"{r.drop_top:>9.3f} {r.drop_random:>9.3f} {r.randomised_rank_corr:>9.3f}"
        )
    for key, value in summary.items():
        print(f"{key:32s} {value:.3f}")
    print(f"time {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "cases": [asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
