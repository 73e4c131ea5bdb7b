"""How sharply do measured opacities stand out from the lung around them? A diagnostic for issue 13.

The normals of the out-of-distribution worlds keep 1-8 % of measured "opacity" (dependent atelectasis, mask
leaks, dense normal texture), and every margin tried on the baseline traded that away against faint disease
(docs/ood.md, failure modes 1, 7 and 9). The hypothesis this script tests: such false opacity is *texture*,
faint and diffuse against its surroundings, while disease stands out. For each case of a world it quantifies
the case as served (``medai.quantify.measure.quantify``) and, for every opacity component of at least
``--min-ml``, measures

* ``contrast``: the component's median HU minus the median of the lung in a ring around it (the voxels one to
  three coarse voxels outside, not opacity themselves);
* ``core``: the share of the component's voxels more than :data:`CORE_HU` above that ring median.

It prints each case's volume-weighted means and, among the cases measuring at least ``--min-percent``, the
AUC with which low contrast (and low core share) tells the normals from mild covid19 and from mild
other_pneumonia (true lesion at most ``--mild`` %). An AUC near 0.5 means the measure cannot separate them.

    python scripts/opacity_contrast.py --worlds heldout independent-val train --n 60 --json .bench/contrast.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

#: A component's voxel is "core" when it lies this far above the lung around it (HU).
CORE_HU = 150.0
_RING = (1, 3)  # coarse voxels outside the component: from, to


def component_contrast(coarse: np.ndarray, lungs: np.ndarray, lesions: np.ndarray, voxel_ml: float, min_ml: float):  # type: ignore[no-untyped-def]
    """``[(ml, contrast HU, core share), ...]`` of each opacity component of at least ``min_ml`` with a lung ring."""
    lung = lungs > 0
    opacity = (lesions > 0) & lung
    labels, _ = ndimage.label(opacity, np.ones((3, 3, 3), bool))
    out = []
    pad = _RING[1]
    for k, box in enumerate(ndimage.find_objects(labels), 1):
        if box is None:
            continue
        box = tuple(slice(max(0, s.start - pad), s.stop + pad) for s in box)
        part = labels[box] == k
        n = int(np.count_nonzero(part))
        if n * voxel_ml < min_ml:
            continue
        near = ndimage.binary_dilation(part, iterations=_RING[0])
        ring = ndimage.binary_dilation(part, iterations=_RING[1]) & ~near & lung[box] & ~opacity[box]
        if not ring.any():
            continue
        inside = coarse[box][part]
        around = float(np.median(coarse[box][ring]))
        out.append((n * voxel_ml, float(np.median(inside)) - around, float(np.mean(inside > around + CORE_HU))))
    return out


def case_row(case, min_ml: float) -> dict:  # type: ignore[no-untyped-def]
    """One case's truth, measured lesion % and volume-weighted contrast and core share (0 without components)."""
    from medai.quantify.grid import block_mean
    from medai.quantify.measure import quantify

    q = quantify(case.volume)
    coarse = block_mean(case.volume.hu, q.grid.factors)
    comps = component_contrast(coarse, q.lung_mask, q.lesion_mask, q.grid.voxel_volume_ml, min_ml)
    ml = np.array([c[0] for c in comps])
    weighted = [float(np.average([c[i] for c in comps], weights=ml)) if comps else 0.0 for i in (1, 2)]
    return {
        "case": case.case_id,
        "label": case.label,
        "pattern": case.pattern,
        "true_percent": case.lesion_percent,
        "measured_percent": q.lesion_percent,
        "components": len(comps),
        "contrast_hu": weighted[0],
        "core_share": weighted[1],
    }


def separations(rows: list[dict], *, min_percent: float, mild: float) -> dict:
    """AUC of low contrast / low core share for normals against mild disease of each class (None: a class absent)."""
    from sklearn.metrics import roc_auc_score

    out: dict = {}
    measured = [r for r in rows if r["measured_percent"] >= min_percent]
    normals = [r for r in measured if r["label"] == "normal"]
    for label in ("covid19", "other_pneumonia"):
        sick = [r for r in measured if r["label"] == label and r["true_percent"] <= mild]
        entry: dict = {"normals": len(normals), "cases": len(sick)}
        for key in ("contrast_hu", "core_share"):
            both = normals + sick
            entry[key] = (
                float(roc_auc_score([r["label"] == "normal" for r in both], [-r[key] for r in both]))
                if normals and sick
                else None
            )
        out[f"normal_vs_mild_{label}"] = entry
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from medai.evaluation.worlds import world_cases

    parser = argparse.ArgumentParser(description="contrast of measured opacities against the lung around them")
    parser.add_argument("--worlds", nargs="+", default=["heldout", "independent-val", "train"])
    parser.add_argument("--n", type=int, default=60, help="cases per world (classes in turn)")
    parser.add_argument("--matrix", type=int, default=256, help="in-plane matrix of the phantoms")
    parser.add_argument("--min-ml", type=float, default=1.0, help="smallest component measured (ml)")
    parser.add_argument("--min-percent", type=float, default=0.5, help="cases measuring less are left out")
    parser.add_argument("--mild", type=float, default=6.0, help="true lesion %% at most this is mild disease")
    parser.add_argument("--json", type=Path, help="write the rows and the AUCs here")
    args = parser.parse_args(argv)
    report: dict = {"command": " ".join(["scripts/opacity_contrast.py", *(argv or sys.argv[1:])]), "worlds": {}}
    for world in args.worlds:
        start = time.perf_counter()
        rows = [case_row(c, args.min_ml) for c in world_cases(world, args.n, seed=0, matrix=args.matrix)]
        found = separations(rows, min_percent=args.min_percent, mild=args.mild)
        report["worlds"][world] = {"rows": rows, "separation": found}
        print(f"{world}: {len(rows)} cases in {time.perf_counter() - start:.0f} s", flush=True)
        for r in sorted(rows, key=lambda r: r["contrast_hu"]):
            if r["measured_percent"] >= args.min_percent:
                print(
                    f"  {r['label'][:15]:15s} true {r['true_percent']:5.2f} % measured {r['measured_percent']:5.2f} % "
                    f"contrast {r['contrast_hu']:5.0f} HU core {r['core_share']:.2f}",
                    flush=True,
                )
        for name, entry in found.items():
            aucs = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in entry.items() if "_" in k)
            print(f"  {name} ({entry['normals']} normals, {entry['cases']} cases): AUC of low {aucs}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
