"""The failure drills, short version (``make drills`` runs the full ones and rewrites docs/reliability.md): every
PACS and batch drill of ``scripts/drills.py`` loses nothing and duplicates nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_short_drills_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    page, figures = tmp_path / "reliability.md", tmp_path / "drills.json"
    command = [sys.executable, str(ROOT / "scripts" / "drills.py"), "--short", "--out", str(page), "--json"]
    result = subprocess.run([*command, str(figures)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    drills = json.loads(figures.read_text())
    assert len(drills) == 9 and all(d["passed"] for d in drills)
    assert all(d["lost"] == 0 and d["duplicated"] == 0 and d["delivered"] == d["acknowledged"] > 0 for d in drills)
    load = next(d for d in drills if "concurrent" in d["name"])
    assert load["acknowledged"] == 320 and load["series"] == 16
    disk = next(d for d in drills if d["name"] == "disk nearly full")
    assert disk["sent"] > disk["acknowledged"]  # the full disk did refuse instances, which were sent again
    text = page.read_text()
    assert "**Result: nothing lost, nothing duplicated** over 9 drills." in text and "| kill -9 while sending |" in text
