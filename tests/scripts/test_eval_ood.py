"""scripts/eval_ood.py --from-json: an earlier run's cases summarized again, without scoring anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medai.evaluation.served import ScoredCase, summarize
from tests.conftest import load_script


def _case(i: int, label: str, p_covid: float, predicted: str, lesion: float) -> ScoredCase:
    rest = (1.0 - p_covid) / 2
    probabilities = {"normal": rest, "covid19": p_covid, "other_pneumonia": rest}
    truth = 0.0 if label == "normal" else 10.0
    severity = "CT-0" if lesion < 1 else "CT-1"
    return ScoredCase(f"w-{i:04d}", "w", label, "none", truth, 4000.0, probabilities, predicted, False, lesion,
                      4100.0, severity)  # fmt: skip


def test_from_json_recomputes_every_summary_from_the_cases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = load_script("eval_ood")
    rows = [_case(i, "normal", 0.1 + 0.02 * i, "normal", 0.2 * i) for i in range(10)]
    rows += [_case(10 + i, "covid19", 0.3 + 0.06 * i, "covid19" if i > 2 else "normal", 5.0 + i) for i in range(10)]
    rows.append(ScoredCase("w-0020", "w", "covid19", "covid", 30.0, 4000.0, error="InvalidSeriesError: not axial"))
    old = summarize(rows, n_bootstrap=50)
    del old["ece_if_calibrated"]  # as a run before the metric existed wrote it
    earlier = tmp_path / "earlier.json"
    cases = {"independent-test": [r.to_dict() for r in rows]}
    earlier.write_text(json.dumps({"model": "m@1", "argv": ["--n", "20"], "summary": {"independent-test": {**old,
                       "seconds": 12.5}}, "cases": cases}))  # fmt: skip
    out = tmp_path / "again.json"
    assert script.main(["--from-json", str(earlier), "--bootstrap", "50", "--json", str(out)]) == 0
    again = json.loads(out.read_text())
    summary = again["summary"]["independent-test"]
    assert again["model"] == "m@1" and json.dumps(again["cases"]) == json.dumps(cases)  # NaN != NaN
    assert summary["seconds"] == 12.5 and summary["n_failed"] == 1
    assert {k: v for k, v in summary.items() if k not in ("ece_if_calibrated", "seconds")} == old
    low, high = summary["ece_if_calibrated"]
    assert 0.0 < low < high < 0.5
    printed = capsys.readouterr().out
    assert "ece_if_calibrated" in printed and "independent-test" in printed
