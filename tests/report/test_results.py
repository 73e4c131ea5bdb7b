"""Result files: durable append, torn-line recovery, compaction, Parquet journal, column checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medai.errors import MedaiError
from medai.quantify.measure import Side, Zone
from medai.report.results import COLUMNS, ResultFormat, ResultStore, coerce_row, latest_rows, read_results, row_key


def _row(uid: str, status: str = "ok", p: float = 0.5, model: str = "m@1") -> dict[str, object]:
    return {"series_uid": uid, "status": status, "p_covid19": p, "model_id": model, "message": "a\nb,c"}


def test_format_comes_from_the_extension() -> None:
    assert ResultFormat.for_path("x/r.PARQUET") is ResultFormat.PARQUET
    with pytest.raises(ValueError, match=r"must end with \.csv, \.jsonl or \.parquet, not 'r.txt'"):
        ResultFormat.for_path("r.txt")


def test_zone_columns_follow_quantify() -> None:
    for side in Side:
        for zone in Zone:
            assert f"{side.value}_{zone.value}_lesion_percent" in COLUMNS


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_rows_round_trip_typed(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    with ResultStore(path) as store:
        store.append(_row("1.2", p=0.25))
        store.append({**_row("1.3", "error"), "n_slices": 40, "indeterminate": True, "p_covid19": None})
    rows = read_results(path)
    assert [r["series_uid"] for r in rows] == ["1.2", "1.3"]
    assert rows[0]["p_covid19"] == 0.25 and rows[0]["message"] == "a b,c"  # one line per row
    assert rows[1]["n_slices"] == 40 and rows[1]["indeterminate"] is True and rows[1]["p_covid19"] is None
    assert ResultStore(path).existing == rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_torn_tail_is_cut_and_appending_continues(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    with ResultStore(path) as store:
        store.append(_row("1.2"))
    target = ResultStore.journal_path(path) if suffix == ".parquet" else path
    with open(target, "ab") as f:
        f.write(b'{"series_uid": "1.3", "sta' if suffix != ".csv" else b",1.3,,,")
    with ResultStore(path) as store:
        assert [r["series_uid"] for r in store.existing] == ["1.2"]
        store.append(_row("1.4"))
    assert [r["series_uid"] for r in read_results(path)] == ["1.2", "1.4"]


def test_parquet_is_rebuilt_from_its_journal(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    with ResultStore(path) as store:
        store.append(_row("1.2"))
    store = ResultStore(path)
    store.append(_row("1.3"))  # killed before close: the parquet file still has one row
    import pyarrow.parquet as pq

    assert pq.read_table(path).num_rows == 1
    assert [r["series_uid"] for r in read_results(path)] == ["1.2", "1.3"]  # the journal is newer
    store.close()
    assert pq.read_table(path).num_rows == 2
    ResultStore.journal_path(path).unlink()  # a parquet file alone seeds a new journal
    assert [r["series_uid"] for r in ResultStore(path).existing] == ["1.2", "1.3"]


def test_compact_keeps_the_newest_row_per_series_and_model(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        for row in (_row("1.2", p=0.1), _row("1.3"), _row("1.2", p=0.9), _row("1.2", model="m@2")):
            store.append(row)
        store.compact()
    rows = read_results(path)
    assert [(r["series_uid"], r["model_id"], r["p_covid19"]) for r in rows] == [
        ("1.3", "m@1", 0.5),
        ("1.2", "m@1", 0.9),
        ("1.2", "m@2", 0.5),
    ]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_foreign_csv_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(MedaiError, match="must have the columns of this medai version"):
        ResultStore(path)


def test_row_helpers() -> None:
    assert row_key({"model_id": "m", "source": "/x.zip"}) == ("m", "/x.zip")
    assert coerce_row({"pseudonymized": "false", "series_number": "3"})["series_number"] == 3
    assert latest_rows([_row("1"), _row("2"), _row("1", p=0.7)])[-1]["p_covid19"] == 0.7
    with pytest.raises(ValueError, match="boolean must be true or false, not 'maybe'"):
        coerce_row({"indeterminate": "maybe"})
