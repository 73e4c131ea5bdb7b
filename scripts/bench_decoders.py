"""Benchmark medai's decoder plugin choice against gdcm on compressed series decoded in one process.

Frames decoded in medai's own process (where forking is not safe: another thread runs, as in the PACS service
and the viewer) go to pylibjpeg / pyjpegls, and to gdcm only for syntaxes nothing else decodes
(``medai.ingest.pixels.SAFE_PLUGINS``): gdcm took the process down on corrupt streams. Forked worker
processes (a large series in a single-threaded process: ``medai score``) keep gdcm first, where a crash only
breaks the pool. This measures what that safety costs in one process: ``load_series`` with a second thread
alive, medai's plugin against gdcm, interleaved rounds, medians, the ratio printed.

    .venv/bin/python scripts/bench_decoders.py [--slices 60] [--syntaxes jpeg2000 jpeg-lossless] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=60, help="slices of 512x512 (default: 60)")
    parser.add_argument("--syntaxes", nargs="+", default=["jpeg2000", "jpeg-lossless"], help="transfer syntaxes")
    parser.add_argument("--repeats", type=int, default=3, help="timed loads per plugin (default: 3)")
    args = parser.parse_args(argv)

    import medai.ingest.pixels as pixels
    from medai.ingest.load import load_series
    from medai.phantoms.ctwriter import TransferSyntax, write_ct_series
    from medai.volume import Volume

    rng = np.random.default_rng(0)
    body = np.where(np.hypot(*np.mgrid[-256:256, -256:256]) < 220, 40.0, -1000.0)
    hu = (rng.normal(0, 30, (args.slices, 512, 512)) + body[None]).clip(-1024, 3000).astype(np.int16)
    chosen = pixels._plugin
    stop = threading.Event()
    keeper = threading.Thread(target=stop.wait)  # a second thread: no forked workers, as in the PACS listener
    keeper.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.syntaxes:
                folder = Path(tmp) / name
                write_ct_series(Volume(hu, spacing_mm=(2.5, 0.7, 0.7)), folder, transfer_syntax=TransferSyntax(name))
                times: dict[str, list[float]] = {"medai": [], "gdcm": []}
                for _ in range(args.repeats):
                    for side in times:
                        pixels._plugin = chosen if side == "medai" else (lambda syntax: "gdcm")
                        start = time.perf_counter()
                        volume = load_series(folder)
                        times[side].append(time.perf_counter() - start)
                        if not np.array_equal(volume.hu, hu):
                            raise AssertionError(f"{side} decoded {name} wrongly")
                mine, gdcm = statistics.median(times["medai"]), statistics.median(times["gdcm"])
                plugin = chosen(TransferSyntax(name).uid)
                print(
                    f"{name:14s} {args.slices}x512x512 in one process: medai ({plugin}) {mine:.2f} s, "
                    f"gdcm {gdcm:.2f} s, medai {gdcm / mine:.2f}x as fast",
                    flush=True,
                )
    finally:
        pixels._plugin = chosen
        stop.set()
        keeper.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
