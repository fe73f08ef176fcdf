"""`ripcord demo` from start to finish: the whole rehearsal on real processes (about 100 s).

The demo exits non-zero when a step does not behave as a release must (pass 1 not at 100%,
pass 2 not rolled back with a page and an audited reason, a flip that does not converge, a
lost or doubled payment); the report must then show each of those outcomes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flagd.process import REPO
from ripcord import demo


def test_a_workdir_that_is_not_the_demos_own_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert demo.main(["--workdir", str(tmp_path)]) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.timeout(480)
def test_the_rehearsal_releases_catches_the_regression_and_reports(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "ripcord.cli", "demo", "--workdir", str(work)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    text = (work / "report.md").read_text()
    assert "| pass 1: healthy new engine | reached 100% | 5 gates passed" in text
    # The regression is caught by the first gate (the 1% step) on p99, and the audit says so.
    assert re.search(
        r"\| pass 2: \+300 ms regression \| rolled back at step 2/11 \| canary abort at step "
        r"2/11 \(setWeight 1\): p99-latency = [0-9.]+ >= 0\.2",
        text,
    ), text
    # Shadowing is on: the mismatch gate judged real comparisons, not "no data".
    assert re.search(r"\| shadow-status-mismatch \| Successful \| [0-9.e-]+ \|", text), text
    assert '"event": "canary.aborted"' in text and '"flag_weight": 0' in text
    flip = re.search(r"\| kill switch under load \| all traffic to legacy \| ([0-9.]+) ms", text)
    assert flip, text
    assert re.search(r"\| DCC experiment \| (TREATMENT-WINS|CONTROL-WINS|NO-DIFFERENCE|"
                     r"INSUFFICIENT-DATA|BLOCKED-SRM) \|", text), text  # fmt: skip
    assert "lost 0, charged twice 0" in text
    # The 100,000 rows from before the migration and every one written before the router
    # dual-wrote were filled, beside the canary.
    filled = re.search(r"\| expand \+ backfill \| expanded, backfill complete \| backfill "
                       r"complete: ([0-9,]+) rows", text)  # fmt: skip
    assert filled and int(filled.group(1).replace(",", "")) >= 100_000, text
    for mark in ("1%", "5%", "25%", "50%", "100%", "circuit open", "rollback → 0%"):
        assert f": {mark} (" in text, mark
    png = work / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
