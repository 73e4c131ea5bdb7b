"""scripts/bench_viewer.py stays runnable: the whole benchmark on a tiny series."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script


def test_bench_viewer_prints_the_reruns_the_peer_ratio_and_the_webgl_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_script("bench_viewer")
    argv = ["--slices", "40", "--matrix", "96", "--repeats", "2", "--workdir", str(tmp_path)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    for line in ("slider move (3 views)", "overlay toggle (3 views)", "one view from scratch", "WebGL component"):
        assert line in out
    assert out.count("x\n") >= 2  # two peer ratios
