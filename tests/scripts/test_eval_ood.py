"""scripts/eval_ood.py --from-json: an earlier run's cases summarized again, without scoring anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medai.evaluation.served import ScoredCase, compare, summarize
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


def test_compare_sets_two_runs_of_the_same_cases_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = load_script("eval_ood")
    before = [_case(i, "normal", 0.1 + 0.05 * i, "normal" if i < 6 else "covid19", 0.3 * i) for i in range(10)]
    before += [_case(10 + i, "covid19", 0.3 + 0.06 * i, "covid19", 5.0 + i) for i in range(10)]
    # after: the four normals that were called covid19 read lower and are called normal; nothing else changes
    after = [_case(i, "normal", 0.1 + 0.02 * i, "normal", 0.1 * i) if i >= 6 else r for i, r in enumerate(before[:10])]
    after += before[10:]
    paths = []
    for name, rows in (("before", before), ("after", after)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"model": f"m@{name}", "argv": [], "summary": {},
                                    "cases": {"w": [r.to_dict() for r in rows]}}))  # fmt: skip
        paths.append(str(path))
    out = tmp_path / "compare.json"
    assert script.main(["--compare", *paths, "--bootstrap", "200", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["compare"]["w"]
    called = result["normals_called_normal"]
    assert (called["before"], called["after"], called["difference"]) == (0.6, 1.0, 0.4)
    low, high = called["difference_ci"]
    assert 0.0 < low <= 0.4 <= high  # a paired gain these cases can show
    auc = result["covid19_auc"]
    assert auc["difference"] == pytest.approx(auc["after"] - auc["before"], abs=1e-4) and auc["difference"] > 0
    assert result["lesion_mae_points"]["difference"] < 0
    assert "normals_called_normal" in capsys.readouterr().out
    with pytest.raises(ValueError, match="same cases"):
        compare(before, after[:-1], n_bootstrap=0)


def test_compare_of_a_run_with_itself_shows_no_difference() -> None:
    rows = [_case(i, "normal", 0.1 + 0.03 * i, "normal", 0.2 * i) for i in range(8)]
    rows += [_case(8 + i, "covid19", 0.4 + 0.05 * i, "covid19", 4.0 + i) for i in range(8)]
    for metric in compare(rows, rows, n_bootstrap=100).values():
        assert metric["difference"] == 0.0 and metric["difference_ci"] == [0.0, 0.0]


def test_from_json_pools_the_runs_of_several_seed_sets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = load_script("eval_ood")
    rows = [_case(i, "normal", 0.1 + 0.02 * i, "normal" if i < 8 else "covid19", 0.2 * i) for i in range(12)]
    rows += [_case(12 + i, "covid19", 0.3 + 0.05 * i, "covid19" if i > 2 else "normal", 5.0 + i) for i in range(12)]
    paths = []
    for k, part in enumerate((rows[:6] + rows[12:18], rows[6:12] + rows[18:])):  # two seed sets of one model
        path = tmp_path / f"s{k}.json"
        summary = {"w": {"seconds": 10.0 + k}}
        path.write_text(json.dumps({"model": "m@1", "argv": [], "summary": summary,
                                    "cases": {"w": [r.to_dict() for r in part]}}))  # fmt: skip
        paths.append(str(path))
    out = tmp_path / "pooled.json"
    assert script.main(["--from-json", *paths, "--bootstrap", "50", "--json", str(out)]) == 0
    pooled = json.loads(out.read_text())
    summary = pooled["summary"]["w"]
    assert summary["n_cases"] == 24 and summary["seconds"] == 21.0
    assert summary["covid19_auc"] == summarize(rows, n_bootstrap=50)["covid19_auc"]  # the pooled cases, not a mean
    assert sorted(c["case_id"] for c in pooled["cases"]["w"]) == sorted(r.case_id for r in rows)
    assert capsys.readouterr().out.count("cases of") == 2

    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads((tmp_path / "s1.json").read_text()), "model": "m@2"}))
    with pytest.raises(SystemExit, match="must score one model"):
        script.main(["--from-json", paths[0], str(other)])
    with pytest.raises(SystemExit, match="must not share cases, but w-0000"):
        script.main(["--from-json", paths[0], paths[0]])
