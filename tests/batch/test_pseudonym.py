"""Keyed pseudonyms (HMAC-SHA256) and key sources."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medai.batch.pseudonym import Pseudonymizer, read_key

KEY = b"0123456789abcdef-secret"


def test_pseudonyms_are_stable_keyed_and_field_separated() -> None:
    p = Pseudonymizer(KEY)
    value = p("PatientID", "SYN000000042")
    assert value == Pseudonymizer(KEY)("PatientID", "SYN000000042")
    assert value.startswith("ps-") and len(value) == 35 and "SYN" not in value
    assert value != Pseudonymizer(KEY + b"x")("PatientID", "SYN000000042")
    assert value != p("AccessionNumber", "SYN000000042")
    assert value != "ps-" + hashlib.sha256(b"SYN000000042").hexdigest()[:32]  # not an unkeyed hash
    assert p("PatientID", "") == ""
    assert "secret" not in repr(p)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes long, not 5"):
        Pseudonymizer(b"short")
    with pytest.raises(ValueError, match="at least 16 bytes long, not 3"):
        read_key("abc")


def test_keys_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key").write_bytes(KEY + b"\n")
    assert read_key(f"@{tmp_path / 'key'}") == KEY
    monkeypatch.setenv("MEDAI_TEST_KEY", KEY.decode())
    assert read_key("env:MEDAI_TEST_KEY") == KEY
    with pytest.raises(ValueError, match="variable must be set"):
        read_key("env:MEDAI_NO_SUCH_KEY")
    with pytest.raises(ValueError, match="key file must exist"):
        read_key(f"@{tmp_path / 'nope'}")
