"""scripts/bench_viewer.py stays runnable: the whole benchmark on a tiny series."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_viewer_prints_the_reruns_the_peer_ratio_and_the_webgl_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("bench_viewer", ROOT / "scripts" / "bench_viewer.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--slices", "40", "--matrix", "96", "--repeats", "2", "--workdir", str(tmp_path)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    for line in ("slider move (3 views)", "overlay toggle (3 views)", "one view from scratch", "WebGL component"):
        assert line in out
    assert out.count("x\n") >= 2  # two peer ratios
