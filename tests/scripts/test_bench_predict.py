"""scripts/bench_predict.py stays runnable: its harness on a tiny series, one repetition of each pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script


def _load_script():
    return load_script("bench_predict")


def test_bench_predict_runs_both_pipelines_and_the_network_timing(tmp_path, capsys):
    pytest.importorskip("monai")
    bench = _load_script()
    out = tmp_path / "report.json"
    argv = ["--slices", "40", "--matrix", "128", "--repeats", "1", "--monai-repeats", "1", "--net-runs", "2"]
    argv += ["--monai-size", "32", "--threads", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]

    assert bench.main(argv) == 0

    report = json.loads(out.read_text())
    medai, monai, net = (report["results"][k] for k in ("medai", "monai", "net"))
    assert "error" not in medai, medai
    assert "error" not in monai, monai
    for result in (medai, monai):
        assert result["n"] == 1
        assert 0 < result["warm_s"]["median"] < result["process_s"]["median"]
        assert result["peak_rss_bytes"] > 50 * 2**20
    assert set(medai["stages"]) >= {"load", "preprocess", "inference", "saliency", "quantify", "total"}
    assert set(monai["stages"]) == {"load", "preprocess", "inference", "saliency"}
    assert monai["last"]["saliency_shape"] == [1, 1, 32, 32, 32]
    assert medai["last"]["model"].startswith("medai-ref@")
    assert report["ratios"]["warm_s"] == pytest.approx(monai["warm_s"]["median"] / medai["warm_s"]["median"])
    assert net["torch_s"] > 0 and net["onnx_s"] > 0
    assert net["input_shape"] == [1, 1, 80, 64, 96]
    assert net["threads"] == 1 and "net_1thread" not in report["results"]  # the control runs only for > 1 thread
    assert len(report["loadavg_before"]) == 3
    assert report["targets"]["medai_peak_rss_le_1gb"] is True, medai["peak_rss_bytes"]
    assert set(report["targets"]) == {
        "speedup_vs_monai_ge_7x",
        "medai_median_le_1s",
        "medai_peak_rss_le_1gb",
        "onnxruntime_ge_2x_torch",
    }
    assert "medai is" in capsys.readouterr().out

    # the series is cached: a second run does not rewrite it
    series = Path(report["series"])
    stamp = series.with_suffix(".json").stat().st_mtime_ns
    assert bench.write_series(tmp_path / "work", slices=40, matrix=128, seed=0) == series
    assert series.with_suffix(".json").stat().st_mtime_ns == stamp
    assert sorted({p.suffix for p in series.iterdir()}) == [".dcm"]


def test_bench_predict_refuses_unknown_pipelines(tmp_path, capsys):
    bench = _load_script()
    assert bench.main(["--pipelines", "medai,tensorflow", "--workdir", str(tmp_path)]) == 2
    assert "--pipelines must be a subset of medai,monai,medai-inline, not 'medai,tensorflow'" in capsys.readouterr().out


def test_bench_predict_times_the_network_thread_against_its_control(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "report.json"
    argv = ["--slices", "40", "--matrix", "128", "--repeats", "1", "--no-net", "--threads", "2"]
    argv += ["--pipelines", "medai,medai-inline", "--workdir", str(tmp_path / "work"), "--json", str(out)]

    assert bench.main(argv) == 0

    report = json.loads(out.read_text())
    ours, inline = (report["results"][k] for k in ("medai", "medai-inline"))
    assert "error" not in ours and "error" not in inline, (ours, inline)
    assert ours["last"]["network_thread"] is True and inline["last"]["network_thread"] is False
    assert ours["last"]["label"] == inline["last"]["label"]
    assert ours["last"]["lesion_percent"] == inline["last"]["lesion_percent"]
    ratio = inline["warm_s"]["median"] / ours["warm_s"]["median"]
    assert report["ratios"]["inline_over_thread"] == pytest.approx(ratio)
    assert "as fast as with it in line" in capsys.readouterr().out
