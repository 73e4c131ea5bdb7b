"""Benchmark the PACS hook against Orthanc in the same run: receive throughput, and last instance -> SR delay.

1. **Receive throughput.** The same CT series (``--slices`` x ``--matrix``², uncompressed) is sent with
   dcmtk ``storescu`` to ``medai pacs serve`` (in-process, the worker idle so only receiving is measured) and
   to Orthanc (Debian package, default settings, its own SQLite index), alternately, ``--rounds`` times each.
   medai fsyncs every instance before acknowledging it (file, folder, queue); Orthanc's default does not.
   Prints MB/s of each (best round) and the ratio medai / Orthanc.
2. **Delay.** medai with ``--idle-seconds`` scores the series and sends the SR and key images to Orthanc; the
   delay is from storescu's return (the last instance acknowledged) to the SR being listed by Orthanc's REST
   API. Target: idle time + 3 s on a 2-core machine. Prints the delay and the margin.

Usage::

    .venv/bin/python scripts/bench_pacs.py [--slices 300] [--matrix 512] [--rounds 3] [--idle-seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _series(folder: Path, *, slices: int, matrix: int) -> tuple[Path, int]:
    import pydicom

    from medai.phantoms import synthetic
    from medai.phantoms.ctwriter import write_ct_series

    acq = synthetic.Acquisition(matrix=matrix, pixel_spacing_mm=350.0 / matrix, slice_thickness_mm=1.0, n_slices=slices)
    volume = synthetic.generate(synthetic.PhantomSpec("covid19", 0.3, 21, acq), fast=True).volume
    attributes = {"StudyInstanceUID": pydicom.uid.generate_uid(), "SeriesInstanceUID": pydicom.uid.generate_uid()}
    write_ct_series(volume, folder, attributes=attributes)
    return folder, sum(p.stat().st_size for p in folder.iterdir())


def _send(port: int, called: str, folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["/usr/bin/storescu", "-aet", "MODALITY", "-aec", called, "+sd", "127.0.0.1", str(port), str(folder)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    from medai.inference.classifier import Classifier
    from medai.pacs.config import build_config
    from medai.pacs.service import PacsService
    from tests.conftest import free_port, start_orthanc

    root = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}; {root}", flush=True)
    folder, size = _series(root / "series", slices=args.slices, matrix=args.matrix)
    megabytes = size / 1e6
    print(f"series: {args.slices} slices of {args.matrix}x{args.matrix}, {megabytes:.1f} MB", flush=True)
    classifier = Classifier.load()
    orthanc = start_orthanc(root / "orthanc")
    services = []
    try:
        # 1. receive throughput, alternating medai and Orthanc
        receiver = PacsService(
            build_config(
                {
                    "port": free_port(),
                    "allow_ae": "*",
                    "spool": str(root / "spool-receive"),
                    "idle_seconds": 1e9,
                    "destination": [f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"],
                    "min_free_mb": 1.0,
                }
            ),
            classifier=classifier,
        )
        services.append(receiver)
        receiver.start()
        times: dict[str, list[float]] = {"medai": [], "orthanc": []}
        for _ in range(args.rounds):
            times["medai"].append(_send(receiver.config.port, "MEDAI", folder))
            times["orthanc"].append(_send(orthanc.dicom_port, "ORTHANC", folder))
        rate = {name: megabytes / min(values) for name, values in times.items()}
        for name, values in times.items():
            print(f"receive {name:8s} best {min(values):6.2f} s  {rate[name]:6.1f} MB/s  (rounds: "
                  f"{', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip
        print(f"receive ratio medai / Orthanc: {rate['medai'] / rate['orthanc']:.2f}", flush=True)
        receiver.stop()
        services.remove(receiver)

        # 2. last instance -> SR in the destination
        scorer = PacsService(
            build_config(
                {
                    "port": free_port(),
                    "allow_ae": "*",
                    "spool": str(root / "spool-score"),
                    "idle_seconds": args.idle_seconds,
                    "destination": [f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"],
                    "min_free_mb": 1.0,
                }
            ),
            classifier=classifier,
        )
        services.append(scorer)
        scorer.start()
        import pydicom

        study = str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID)
        _send(scorer.config.port, "MEDAI", folder)
        sent = time.perf_counter()
        while True:
            found = orthanc.rest("POST", "/tools/lookup", study.encode())
            ids = [f["ID"] for f in found if f["Type"] == "Study"]
            series = orthanc.rest("GET", f"/studies/{ids[0]}/series") if ids else []
            if any(s["MainDicomTags"].get("Modality") == "SR" for s in series):
                break
            if time.perf_counter() - sent > 300:
                print("no SR after 300 s")
                return 1
            time.sleep(0.05)
        delay = time.perf_counter() - sent
        target = args.idle_seconds + 3.0
        verdict = "met" if delay <= target else "MISSED"
        print(
            f"delay last instance -> SR in Orthanc: {delay:.2f} s (idle {args.idle_seconds:.1f} s + "
            f"{delay - args.idle_seconds:.2f} s); target <= {target:.1f} s: {verdict}"
        )
        overview = scorer.queue.jobs_overview()[0]
        waited = overview["scoring_started_at"] - overview["last_received_at"]
        scoring = overview["scored_at"] - overview["scoring_started_at"]
        print(f"of which: idle detection {waited:.2f} s, load + score + encode {scoring:.2f} s, the rest sending")
    finally:
        for service in services:
            service.stop()
        orthanc.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
