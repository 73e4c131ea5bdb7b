"""Benchmark of the viewer's server-side rendering: what one slider move or overlay toggle costs, against a peer.

On a 300-slice 512x512 phantom series (the bench_predict series, written once), with the shipped model's
prediction, the script times what the viewer does on one rerun:

* **slider move**: the moved view rendered (window, saliency, lung contour, opacities), the other two views'
  crosshairs redrawn on their cached slices, three PNGs encoded (level 1);
* **overlay toggle**: all three views rendered again with the new layers, three PNGs;
* **one view**: one view rendered and encoded from scratch.

The peer, measured in the same run, is the direct way with what medai had: each view composed at source
resolution the way the key images are (:func:`medai.report.keyimages`: the saliency resampled from the model
grid at every source pixel, the coarse lung mask repeated up to the source grid, float blending), resized to
square pixels with Pillow and saved as PNG at Pillow's default level. For the WebGL alternative (a component
such as niivue-streamlit draws the volume in the browser), it reports what has to reach the browser before the
first picture: the volume as gzipped NIfTI (base64 in the component's arguments) and the time to make it.

Usage: ``python scripts/bench_viewer.py [--slices 300] [--matrix 512] [--repeats 15]`` (prints the numbers).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import importlib.util
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent


def _bench_predict() -> Any:
    spec = importlib.util.spec_from_file_location("bench_predict", ROOT / "scripts" / "bench_predict.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(function: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median and 90th percentile (ms) of ``repeats`` calls after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(1000.0 * (time.perf_counter() - start))
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))]}


def peer_view(volume: Any, prediction: Any, plane: str, index: int, size_px: int) -> bytes:
    """One view the direct way: source-resolution compositing as the key images do, Pillow resize, PNG level 6."""
    from medai.report.rendering import WINDOW_PRESETS, heat_rgb, saliency_weight

    quant = prediction.quantification
    hu = volume.hu
    at: list[Any] = [slice(None)] * 3
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]
    at[axis] = index
    plane_hu = hu[tuple(at)]
    grey = WINDOW_PRESETS["lung"].grey(plane_hu).astype(np.float32) / 255.0
    # saliency at every source pixel of the plane, from the model grid
    rows, cols = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in plane_hu.shape), indexing="ij")
    points = [rows, cols]
    points.insert(axis, np.full_like(rows, float(index)))
    inv = np.linalg.inv(prediction.saliency.index_affine)
    coords = inv[:3, :3] @ np.stack(points).reshape(3, -1) + inv[:3, 3:4]
    heat = ndimage.map_coordinates(prediction.saliency.map, coords, order=1).reshape(plane_hu.shape)
    lungs = quant.grid.upsample(quant.lung_mask)[tuple(at)] > 0  # the coarse mask repeated to the source grid
    heat = np.clip(heat, 0.0, 1.0) * lungs
    weight = saliency_weight(heat, 0.6)[..., None]
    rgb = ((1.0 - weight) * grey[..., None] + weight * heat_rgb(heat)) * 255.0 + 0.5
    spacing = [s for a, s in enumerate(volume.spacing_mm) if a != axis]
    height_mm, width_mm = plane_hu.shape[0] * spacing[0], plane_hu.shape[1] * spacing[1]
    scale = size_px / max(height_mm, width_mm)
    image = Image.fromarray(rgb.astype(np.uint8)).resize((round(width_mm * scale), round(height_mm * scale)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def webgl_payload(volume: Any) -> dict[str, float]:
    """What a WebGL viewer must send before its first picture: the volume as .nii.gz, base64 in the page."""
    from medai.ingest.nifti import write_nifti

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.nii"
        write_nifti(volume, path)
        raw = path.read_bytes()
    packed = gzip.compress(raw, compresslevel=1)
    text = base64.b64encode(packed)
    return {
        "raw_mb": len(raw) / 2**20,
        "gzip_mb": len(packed) / 2**20,
        "base64_mb": len(text) / 2**20,
        "encode_s": time.perf_counter() - start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="slices of the phantom series (default: 300)")
    parser.add_argument("--matrix", type=int, default=512, help="rows = columns (default: 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantom spec (default: 0)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions per measurement (default: 15)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "medai-bench-predict"))
    args = parser.parse_args(argv)

    from medai.inference.classifier import Classifier
    from medai.ingest.load import load_study
    from medai.report.rendering import MPR, Layers, Overlays, Plane, encode_png

    folder = _bench_predict().write_series(Path(args.workdir), slices=args.slices, matrix=args.matrix, seed=args.seed)
    _, volume = load_study(folder)
    prediction = Classifier.load().predict(volume)
    start = time.perf_counter()
    overlays = Overlays.from_prediction(prediction)
    prepare_ms = 1000.0 * (time.perf_counter() - start)
    mpr = MPR(volume, overlays)
    sizes = {Plane.AXIAL: 512, Plane.CORONAL: 400, Plane.SAGITTAL: 400}  # as the viewer lays them out
    layers = Layers(lung_contour=True, lesion_opacity=0.45)
    cursor = list(mpr.start_cursor())

    def rerun(active: Layers) -> None:
        for plane, size in sizes.items():
            rgb = mpr.render(
                plane, cursor[plane.normal_axis], Layers(**{**vars(active), "size_px": size}), cursor=tuple(cursor)
            )
            encode_png(rgb)

    rerun(layers)
    n_axial = mpr.slices(Plane.AXIAL)

    def slider_move() -> None:
        cursor[0] = (cursor[0] + 7) % n_axial  # a slice not rendered yet
        rerun(layers)

    toggles = [layers, Layers(lesion_opacity=0.45), Layers(lung_contour=True), Layers()]
    flip = iter(range(10**9))

    def overlay_toggle() -> None:
        mpr._cache.clear()  # a toggle changes the layers: nothing cached applies
        rerun(toggles[next(flip) % len(toggles)])

    def one_view() -> None:
        mpr._cache.clear()
        encode_png(mpr.render(Plane.CORONAL, cursor[1], Layers(lung_contour=True, size_px=400), cursor=tuple(cursor)))

    peer_index = iter(range(10**9))

    def peer_rerun() -> None:
        k = next(peer_index)
        for plane, size in sizes.items():
            axis = plane.normal_axis
            peer_view(volume, prediction, plane.value, (volume.shape[axis] // 2 + k) % volume.shape[axis], size)

    def peer_one_view() -> None:
        peer_view(volume, prediction, "coronal", volume.shape[1] // 2, 400)

    results = {
        "slider move (3 views)": (timed(slider_move, args.repeats), timed(peer_rerun, max(3, args.repeats // 3))),
        "overlay toggle (3 views)": (timed(overlay_toggle, args.repeats), None),
        "one view from scratch": (timed(one_view, args.repeats), timed(peer_one_view, max(3, args.repeats // 3))),
    }
    print(f"series {volume.shape} int16, spacing {tuple(round(s, 3) for s in volume.spacing_mm)} mm")
    print(f"overlays prepared once per series: {prepare_ms:.0f} ms")
    print(f"{'rerun':28s} {'medai median':>13s} {'p90':>8s} {'peer median':>12s} {'ratio':>7s}")
    for name, (ours, peer) in results.items():
        peer_text = f"{peer['median_ms']:10.1f} ms {peer['median_ms'] / ours['median_ms']:6.1f}x" if peer else ""
        print(f"{name:28s} {ours['median_ms']:10.1f} ms {ours['p90_ms']:5.1f} ms {peer_text}")
    payload = webgl_payload(volume)
    png_kb = len(encode_png(mpr.render(Plane.AXIAL, cursor[0], layers))) / 1024
    print(
        f"WebGL component payload before the first picture: {payload['gzip_mb']:.1f} MB gzipped NIfTI "
        f"({payload['raw_mb']:.0f} MB raw, {payload['base64_mb']:.1f} MB as base64), {payload['encode_s']:.2f} s "
        f"to make; server-side rendering sends one {png_kb:.0f} KB PNG per view and change"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
