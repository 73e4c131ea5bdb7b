"""Benchmark prediction end to end: medai against the pipeline a MONAI user would assemble.

Both run in the same invocation on the same phantom series (``medai.phantoms.synthetic``,
held-out acquisition ranges, covid19; by default 300 slices of 512x512,
uncompressed, written once to a cache folder and read warm from the page cache):

* **medai**: ``Classifier.load()`` once, then ``clf.predict_path(folder)``:
  DICOM discovery, QC and loading, preprocessing, onnxruntime with the in-graph
  CAM, saliency and quantification -> ``Prediction``.
* **monai**: ``LoadImage(reader="PydicomReader")`` on the folder ->
  ``EnsureChannelFirst`` -> ``Orientation("RAS")`` -> ``Spacing(1.5, 1.5, 2.0)``
  (the spleen segmentation tutorial) -> ``ScaleIntensityRange(-1000, 400, 0, 1)``
  -> ``Resize(96, 96, 96)`` (the 3D DenseNet classification tutorial) ->
  ``DenseNet121(spatial_dims=3)`` (random weights) in torch eager ->
  ``monai.visualize.GradCAM`` on ``class_layers.relu``, upsampled to the model input.

Each repetition of a pipeline is a fresh subprocess (imports and caches do not
leak; peak RSS is that process's ``ru_maxrss``). Inside it: import + model load,
a first call (cold: lazy imports, allocator, page faults), then a warm call, the
per-series time of a server that keeps the model loaded, which is what counts.
The process wall time to the first result (a one-shot CLI) is reported too.
Rounds interleave the pipelines so background load hits both alike.

A third worker times medai's own network on the same preprocessed input, torch
eager (``forward_with_cam``, the checkpoint) against onnxruntime (the exported
``models/medai-ref.onnx``), batch 1, runs interleaved; with ``--threads`` > 1 it
is repeated on one thread as a control (on a busy machine torch's threads wait on
each other and its multi-threaded times balloon far more than onnxruntime's).

Targets (issue 4), checked at the end: medai >= 7x as fast as MONAI per series,
medai <= 1.0 s median per series, medai peak RSS <= 1 GB, onnxruntime >= 2x as
fast as torch eager on medai's network. ``--device cuda`` runs the MONAI pipeline
and the torch side of the network timing on the GPU (medai's ``Classifier`` picks
CUDA by itself when onnxruntime has it).

Usage::

    .venv/bin/python scripts/bench_predict.py [--repeats 5] [--monai-repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "models" / "medai-ref.pt"
ONNX = ROOT / "models" / "medai-ref.onnx"
PIPELINES = ("medai", "monai")
# Controls, run only when named in --pipelines: (the worker they run, its extra options). medai-inline is medai
# with its network part in line rather than on a thread beside the opacity measurement
# (``Classifier.load(network_thread=...)``).
CONTROLS: dict[str, tuple[str, dict[str, Any]]] = {"medai-inline": ("medai", {"network_thread": False})}
MONAI_PIXDIM = (1.5, 1.5, 2.0)  # Project-MONAI tutorials, spleen_segmentation_3d: Spacing(pixdim=(1.5, 1.5, 2.0))
MONAI_SIZE = 96  # Project-MONAI tutorials, 3d_classification/densenet_training_array: Resize((96, 96, 96))


# --- data --------------------------------------------------------------------------------------------


def write_series(workdir: Path, *, slices: int, matrix: int, seed: int) -> Path:
    """Write (once) the benchmark phantom series and return its folder.

    The acquisition is drawn from the held-out ranges; the slice thickness is
    set so that ``slices`` contiguous slices cover the chest (about 1 mm for
    300 slices), since held-out thicknesses (4-5 mm) would make a 300-slice
    series 1.3 m long.
    """
    from medai.phantoms.files import write_dicom
    from medai.phantoms.synthetic import generate, sample_spec

    folder = workdir / f"covid19_seed{seed}_{slices}x{matrix}"
    done = folder.with_suffix(".json")  # beside the folder: the MONAI reader would try every file inside it
    if done.exists() and folder.is_dir():
        return folder
    spec = sample_spec(np.random.default_rng(seed), label="covid19", split="heldout", matrix=matrix)
    acq = spec.acquisition
    thickness = round(min(10.0, 300 * acq.patient_scale / slices), 3)
    spec = replace(spec, acquisition=replace(acq, slice_thickness_mm=thickness, n_slices=slices))
    print(f"writing the benchmark series to {folder} (once) ...", flush=True)
    phantom = generate(spec, fast=matrix <= 192)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.dcm"):
        old.unlink()
    write_dicom(phantom, folder)
    info = {"spec": repr(spec), "lesion_percent": phantom.lesion_percent, "shape": list(phantom.volume.shape)}
    done.write_text(json.dumps(info, indent=1) + "\n")
    return folder


# --- workers (each in a fresh process) ---------------------------------------------------------------


def _peak_rss_bytes() -> int:
    """Peak RSS of this process and of its finished children.

    On Linux the process's own peak is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` survives
    ``exec`` and so includes the launching process's RSS (a big parent, e.g. a test runner, inflated it
    past 1 GiB for a 40-slice series).
    """
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            hwm = next(line for line in status if line.startswith("VmHWM:"))
        own = int(hwm.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return max(own, children)


def _worker_medai(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    from medai.inference.classifier import Classifier

    imported = time.perf_counter()
    clf = Classifier.load(threads=int(opts["threads"]), network_thread=opts.get("network_thread"))
    loaded = time.perf_counter()
    calls = []
    for _ in range(2):
        t = time.perf_counter()
        pred = clf.predict_path(folder)
        calls.append((time.perf_counter() - t, dict(pred.timings), time.time()))
    return {
        "first_result_at": calls[0][2],
        "import_s": imported - start,
        "load_s": loaded - imported,
        "first_s": calls[0][0],
        "warm_s": calls[1][0],
        "stages": calls[1][1],
        "first_stages": calls[0][1],
        "label": pred.label,
        "model": pred.model_id,
        "providers": list(clf.providers),
        "network_thread": clf.network_thread,
        "saliency_shape": list(pred.saliency.map.shape),
        "lesion_percent": float(pred.lesion_percent),
    }


def _worker_monai(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    import torch
    from monai.networks.nets import DenseNet121
    from monai.transforms import (
        Compose,
        EnsureChannelFirst,
        LoadImage,
        Orientation,
        Resize,
        ScaleIntensityRange,
        Spacing,
    )
    from monai.visualize import GradCAM

    imported = time.perf_counter()
    torch.set_num_threads(int(opts["threads"]))
    device = torch.device(opts["device"])
    size = int(opts["monai_size"])
    load = LoadImage(reader="PydicomReader", image_only=True)
    transforms = Compose(
        [
            EnsureChannelFirst(),
            Orientation(axcodes="RAS"),
            Spacing(pixdim=MONAI_PIXDIM, mode="bilinear"),
            ScaleIntensityRange(a_min=-1000.0, a_max=400.0, b_min=0.0, b_max=1.0, clip=True),
            Resize(spatial_size=(size, size, size)),
        ]
    )
    torch.manual_seed(0)
    model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=3).to(device).eval()
    cam = GradCAM(nn_module=model, target_layers="class_layers.relu")
    loaded = time.perf_counter()

    def predict() -> tuple[float, dict[str, float], tuple[int, ...]]:
        t0 = time.perf_counter()
        image = load(str(folder))
        t1 = time.perf_counter()
        x = transforms(image).as_tensor()[None].to(device)
        t2 = time.perf_counter()
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)
        label = int(probs.argmax())
        if device.type == "cuda":
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        saliency = cam(x, class_idx=label).detach().cpu().numpy()
        t4 = time.perf_counter()
        stages = {"load": t1 - t0, "preprocess": t2 - t1, "inference": t3 - t2, "saliency": t4 - t3}
        return t4 - t0, stages, tuple(saliency.shape)

    first = predict()
    first_result_at = time.time()
    warm = predict()
    return {
        "first_result_at": first_result_at,
        "import_s": imported - start,
        "load_s": loaded - imported,
        "first_s": first[0],
        "warm_s": warm[0],
        "stages": warm[1],
        "first_stages": first[1],
        "saliency_shape": list(warm[2]),
        "device": str(device),
    }


def _interleaved_medians(fns: dict[str, Any], runs: int) -> dict[str, float]:
    """Median seconds per function over ``runs`` rounds, the functions alternating (after one warm-up each)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(values) for name, values in times.items()}


def _worker_net(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """medai's network on one preprocessed input: torch eager against onnxruntime (batch 1, interleaved)."""
    import onnxruntime as ort
    import torch

    from medai.inference.network_input import network_input
    from medai.ingest.load import load_series
    from medai.preprocess import PreprocessParams
    from medai.training.network import load_checkpoint

    torch.set_num_threads(int(opts["threads"]))
    device = torch.device(opts["device"])
    model, ckpt = load_checkpoint(CHECKPOINT, device=device)
    x = network_input(load_series(folder), PreprocessParams.from_dict(ckpt["preprocess"]))[0].array[None]
    tensor = torch.from_numpy(x).to(device)

    def run_torch() -> None:
        with torch.inference_mode():
            logits, cam = model.forward_with_cam(tensor)
            logits.cpu(), cam.cpu()

    fns: dict[str, Any] = {"torch": run_torch}
    out: dict[str, Any] = {"input_shape": list(x.shape), "runs": int(opts["net_runs"]), "device": str(device)}
    out["threads"] = int(opts["threads"])
    onnx_path = Path(opts["onnx"])
    if onnx_path.is_file():
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(opts["threads"])
        so.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        feed = {session.get_inputs()[0].name: x}
        fns["onnx"] = lambda: session.run(None, feed)
        out["onnx_providers"] = session.get_providers()
    else:
        out["onnx_error"] = f"no ONNX model at {onnx_path}"
    medians = _interleaved_medians(fns, int(opts["net_runs"]))
    out["torch_s"] = medians["torch"]
    if "onnx" in medians:
        out["onnx_s"] = medians["onnx"]
        out["speedup"] = medians["torch"] / medians["onnx"]
    return out


WORKERS = {"medai": _worker_medai, "monai": _worker_monai, "net": _worker_net}


def run_worker(name: str, folder: Path, opts: dict[str, Any], *, timeout_s: float = 1800) -> dict[str, Any]:
    """Run one worker in a fresh Python process.

    Adds ``process_s`` (wall time of the whole process: startup, imports, load, both calls)
    and ``cold_s`` (from launching the process to the first result: a one-shot command line).
    """
    launched_at = time.time()
    name, extra = CONTROLS.get(name, (name, {}))
    opts = {**opts, **extra}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--folder", str(folder)]
    cmd += ["--worker-opts", json.dumps(opts)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    process_s = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": err[-1] if err else f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_s"] = process_s
    if "first_result_at" in result:
        result["cold_s"] = float(result.pop("first_result_at")) - launched_at
    return result


# --- summary ---------------------------------------------------------------------------------------


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in runs if "error" not in r]
    if not done:
        return {"error": runs[-1]["error"] if runs else "not run"}
    out: dict[str, Any] = {"n": len(done)}
    for key in ("warm_s", "first_s", "cold_s", "import_s", "load_s", "process_s"):
        values = [float(r[key]) for r in done]
        out[key] = {"median": statistics.median(values), "min": min(values)}
    out["peak_rss_bytes"] = max(int(r["peak_rss_bytes"]) for r in done)
    out["stages"] = {k: statistics.median(float(r["stages"][k]) for r in done) for k in done[0]["stages"]}
    out["last"] = {k: v for k, v in done[-1].items() if k not in ("stages", "first_stages")}
    return out


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "monai", "onnxruntime", "pydicom", "numpy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def _print_report(report: dict[str, Any]) -> None:
    res = report["results"]
    print("\n(seconds: median / min over fresh processes)")
    header = ("pipeline", "warm per series", "first call", "import + load", "start to 1st result", "peak RSS")
    print("{:12s} {:>16s} {:>14s} {:>14s} {:>20s} {:>9s}".format(*header))
    for name in report["pipelines"]:
        s = res[name]
        if "error" in s:
            print(f"{name:12s} unavailable: {s['error']}")
            continue
        cells = [f"{s[k]['median']:.3f} / {s[k]['min']:.3f}" for k in ("warm_s", "first_s")]
        cells.append(f"{s['import_s']['median'] + s['load_s']['median']:.3f}")
        cells.append(f"{s['cold_s']['median']:.3f} / {s['cold_s']['min']:.3f}")
        print(
            f"{name:12s} {cells[0]:>16s} {cells[1]:>14s} {cells[2]:>14s} {cells[3]:>20s} "
            f"{s['peak_rss_bytes'] / 2**30:>5.2f} GiB"
        )
        stages = ", ".join(f"{k} {v:.3f}" for k, v in s["stages"].items())
        print(f"{'':12s} stages (warm call, median s): {stages}")
    labels = (("warm_s", "warm, per series"), ("first_s", "first call"), ("cold_s", "process start to first result"))
    for key, label in labels:
        ratio = report["ratios"].get(key)
        if ratio is not None:
            print(f"medai is {ratio:5.2f}x as fast as the MONAI pipeline ({label})")
    gain = report["ratios"].get("inline_over_thread")
    if gain is not None:
        print(f"medai with its network thread is {gain:.2f}x as fast as with it in line (warm, per series)")
    if report["ratios"].get("peak_rss") is not None:
        print(f"MONAI peak RSS is {report['ratios']['peak_rss']:.2f}x medai's")
    for key in ("net", "net_1thread"):
        net = res.get(key)
        if not net:
            continue
        if "error" in net:
            print(f"medai network torch vs onnxruntime ({key}): unavailable: {net['error']}")
            continue
        line = (
            f"medai network, batch 1, {net['threads']} thread(s), median of {net['runs']}: "
            f"torch eager {net['torch_s'] * 1e3:.1f} ms"
        )
        if "onnx_s" in net:
            line += f", onnxruntime {net['onnx_s'] * 1e3:.1f} ms, onnxruntime {net['speedup']:.2f}x as fast"
        else:
            line += f" ({net.get('onnx_error')})"
        print(line)
    shown = {None: "not measured", True: "met", False: "NOT met"}
    print("targets: " + ", ".join(f"{k} {shown[v]}" for k, v in report["targets"].items()))
    print(f"load average (1, 5, 15 min): before {report['loadavg_before']}, after {report['loadavg_after']}")


# --- main --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes for medai (default: 5)")
    parser.add_argument("--monai-repeats", type=int, default=3, help="fresh processes for MONAI (default: 3)")
    parser.add_argument("--net-runs", type=int, default=20, help="timed network runs per runtime (default: 20)")
    parser.add_argument("--slices", type=int, default=300, help="slices of the phantom series (default: 300)")
    parser.add_argument("--matrix", type=int, default=512, help="rows = columns (default: 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantom spec (default: 0)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "medai-bench-predict"))
    parser.add_argument(
        "--pipelines",
        default=",".join(PIPELINES),
        help="comma-separated subset of medai,monai,medai-inline (medai-inline: the network not on its own thread)",
    )
    parser.add_argument("--no-net", action="store_true", help="skip the torch vs onnxruntime network timing")
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (default: 2)")
    parser.add_argument("--device", default="cpu", help="torch device of the MONAI pipeline (cpu or cuda)")
    parser.add_argument("--monai-size", type=int, default=MONAI_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", default=str(ONNX), help="ONNX model for the network timing")
    parser.add_argument("--json", help="also write the full report to this JSON file")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--worker-opts", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        opts = json.loads(args.worker_opts)
        result = WORKERS[args.worker](Path(args.folder), opts)
        result["peak_rss_bytes"] = _peak_rss_bytes()
        print(json.dumps(result))
        return 0

    pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    known = (*PIPELINES, *CONTROLS)
    bad = [p for p in pipelines if p not in known]
    if bad or not pipelines:
        print(f"bench_predict: --pipelines must be a subset of {','.join(known)}, not {args.pipelines!r}")
        return 2
    opts = {
        "threads": args.threads,
        "device": args.device,
        "monai_size": args.monai_size,
        "net_runs": args.net_runs,
        "onnx": args.onnx,
    }
    loadavg_before = [round(v, 2) for v in os.getloadavg()]
    folder = write_series(Path(args.workdir), slices=args.slices, matrix=args.matrix, seed=args.seed)
    repeats = {"medai": args.repeats, "monai": args.monai_repeats}
    repeats.update({control: repeats[worker] for control, (worker, _) in CONTROLS.items()})
    print(
        f"series {folder} ({args.slices} slices {args.matrix}x{args.matrix}); repeats {repeats}, one fresh process "
        f"each, pipelines interleaved; {os.cpu_count()} cores, load average {loadavg_before}",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pipelines}
    for round_ in range(max(repeats[p] for p in pipelines)):
        for name in pipelines:
            if round_ >= repeats[name] or (runs[name] and "error" in runs[name][-1]):
                continue
            result = run_worker(name, folder, opts)
            runs[name].append(result)
            shown = result.get("error") or f"warm {result['warm_s']:.3f} s, first {result['first_s']:.3f} s"
            print(f"  round {round_ + 1} {name:12s} {shown}", flush=True)
    results: dict[str, Any] = {name: _summary(runs[name]) for name in pipelines}
    if not args.no_net:
        results["net"] = run_worker("net", folder, opts)
        if args.threads != 1:  # control: one thread is far less sensitive to other jobs on a shared machine
            results["net_1thread"] = run_worker("net", folder, {**opts, "threads": 1})
    ratios: dict[str, float | None] = {}
    ours, peer = results.get("medai", {}), results.get("monai", {})
    for key in ("warm_s", "first_s", "cold_s", "process_s"):
        ok = key in ours and key in peer
        ratios[key] = peer[key]["median"] / ours[key]["median"] if ok else None
    inline = results.get("medai-inline", {})
    if "warm_s" in ours and "warm_s" in inline:  # what the network thread saves, in the same run
        ratios["inline_over_thread"] = inline["warm_s"]["median"] / ours["warm_s"]["median"]
    ok = "peak_rss_bytes" in ours and "peak_rss_bytes" in peer
    ratios["peak_rss"] = peer["peak_rss_bytes"] / ours["peak_rss_bytes"] if ok else None
    targets: dict[str, bool | None] = {
        "speedup_vs_monai_ge_7x": None if ratios["warm_s"] is None else ratios["warm_s"] >= 7.0,
        "medai_median_le_1s": ours["warm_s"]["median"] <= 1.0 if "warm_s" in ours else None,
        "medai_peak_rss_le_1gb": ours["peak_rss_bytes"] <= 1e9 if "peak_rss_bytes" in ours else None,
    }
    speedups = [results[k]["speedup"] for k in ("net", "net_1thread") if "speedup" in results.get(k, {})]
    targets["onnxruntime_ge_2x_torch"] = min(speedups) >= 2.0 if speedups else None
    report = {
        "command": " ".join(["scripts/bench_predict.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "series": str(folder),
        "slices": args.slices,
        "matrix": args.matrix,
        "pipelines": pipelines,
        "machine": _machine(),
        "versions": _versions(),
        "options": opts,
        "results": results,
        "runs": runs,
        "ratios": ratios,
        "targets": targets,
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }
    _print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
