"""scripts/eval_variants.py: FP16 and INT8 variants of the shipped model measured against FP32."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


def test_variants_are_built_and_judged_by_the_parity_rule(tmp_path: Path) -> None:
    module = load_script("eval_variants")
    out = tmp_path / "variants.json"
    argv = ["--heldout", "6", "--calibration", "3", "--runs", "2", "--out-dir", str(tmp_path), "--json", str(out)]
    assert module.main(argv) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"fp32", "fp16", "int8"}
    assert "parity" not in results["fp32"]  # the reference
    for name in ("fp16", "int8"):
        row = results[name]
        assert row["file_kb"] < results["fp32"]["file_kb"]
        assert row["parity"] == (row["max_logit_diff"] <= 1e-4 and row["min_cam_corr"] >= 0.999)
        assert 0.0 <= row["label_agreement"] <= 1.0
    assert not list(Path(ROOT / "models").glob("*.int8.onnx"))  # nothing is written next to the shipped model
