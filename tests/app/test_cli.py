"""``medai app``: the streamlit command line it runs (loopback by default) and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from medai.cli import app_command, build_parser, main


def test_medai_app_binds_to_loopback_unless_told_and_passes_the_studies(tmp_path: Path) -> None:
    args = build_parser().parse_args(["app", "--data", str(tmp_path), "--port", "8601"])
    command = app_command(args)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("app/viewer.py")
    assert Path(command[4]).is_file()
    options = dict(zip(command[5::2], command[6::2], strict=False))
    assert options["--server.address"] == "127.0.0.1" and options["--server.port"] == "8601"
    assert options["--browser.gatherUsageStats"] == "false" and options["--client.showErrorDetails"] == "none"
    assert command[command.index("--") + 1 :] == ["--data", str(tmp_path.resolve())]
    anywhere = app_command(build_parser().parse_args(["app", "--host", "0.0.0.0"]))
    assert anywhere[anywhere.index("--server.address") + 1] == "0.0.0.0"
    audited = app_command(build_parser().parse_args(["app", "--audit-log", str(tmp_path / "a.jsonl")]))
    assert audited[audited.index("--") + 1 :] == ["--audit-log", str((tmp_path / "a.jsonl").resolve())]


def test_medai_app_refuses_a_missing_folder_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["app", "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medai: error: --data must be an existing path") and err.count("\n") == 1
