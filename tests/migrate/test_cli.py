"""`ripcord migrate …` end to end: router.migrate.main against real databases and a real daemon."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flagd.process import DaemonProcess
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb
from router.contract import overrides
from router.ledger import Ledger, LedgerDatabase, open_database
from router.migrate import main
from tests.migrate.conftest import OPERATOR_TOKEN, seed_legacy


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main(list(argv), prog="ripcord migrate")
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def backfill_flag_on(admin: Callable[[str, Any], Any]) -> Iterator[None]:
    """payments.fx-backfill.enabled on for the test, off afterwards."""

    def set_flag(variant: str) -> None:
        request = pb.SetDefaultVariantRequest(
            key="payments.fx-backfill.enabled", variant=variant, reason="cli test"
        )
        admin("SetDefaultVariant", request)

    set_flag("on")
    yield
    set_flag("off")


def test_the_whole_migration_from_the_command_line(
    db: LedgerDatabase,
    db_url: str,
    daemon: DaemonProcess,
    backfill_flag_on: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_legacy(db, 120)
    code, out, _ = run(capsys, "expand", "--db", db_url, "--actor", "alice")
    assert code == 0 and "expand: ADD COLUMN fx_rate_snapshot (nullable, no default): ok" in out
    code, out, err = run(
        capsys,
        "backfill", "--db", db_url, "--flagd", f"127.0.0.1:{daemon.sync_port}",
        "--batch-size", "25", "--sleep-ms", "1", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "backfill complete: 120 rows in 5 batches" in out
    monkeypatch.setenv("RIPCORD_TOKEN", OPERATOR_TOKEN)
    contract = ("contract", "--db", db_url, "--admin", f"127.0.0.1:{daemon.port}", "--actor", "bob")
    code, out, err = run(capsys, *contract)
    assert code == 3 and "contract refused (see --override)" in err
    assert "refused: payments.new-router.enabled is not at 100%" in out
    assert "refused: the backfill completed 0 h ago only (needs 72 h)" in out
    code, out, err = run(capsys, *contract, "--override", "INC-9: staging rehearsal")
    assert code == 0, err
    assert "guard overridden by bob: 'INC-9: staging rehearsal' (recorded in the journal)" in out
    assert "contracted: fx_rate_snapshot is NOT NULL" in out
    [override] = overrides(db)
    assert override["actor"] == "bob" and override["reason"] == "INC-9: staging rehearsal"
    code, out, _ = run(capsys, *contract)
    assert code == 0 and "already contracted" in out
    with Ledger.open(db_url) as ledger:
        assert ledger.schema_phase() == "contracted"


def test_status_lists_every_database(
    db: LedgerDatabase, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    Ledger.open(other).close()
    seed_legacy(db, 10)
    assert run(capsys, "expand", "--db", db_url)[0] == 0
    code, out, _ = run(capsys, "status", "--db", db_url, "--db", other, "--count")
    assert code == 0
    assert "expanded, backfill not started" in out and "legacy (before expand)" in out
    assert "rows without snapshot" in out
    code, out, _ = run(capsys, "status", "--db", db_url, "--db", other, "--count", "--json")
    data = json.loads(out)
    assert [d["phase"] for d in data] == ["expanded", "legacy"]
    assert data[0]["rows_without_snapshot"] == 10
    assert data[0]["head"]["revision"] == "0001_fx_snapshot_expand"


def test_rollbacks_and_refusals(
    db: LedgerDatabase, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_legacy(db, 10)
    code, _, err = run(capsys, "rollback", "backfill", "--db", db_url)
    assert code == 0  # nothing to undo on a legacy table
    assert run(capsys, "expand", "--db", db_url)[0] == 0
    code, out, err = run(capsys, "contract", "--db", db_url, "--admin", "127.0.0.1:1")
    assert code == 3 and "BLOCKED: rows without fx_rate_snapshot remain" in out
    assert "contract refused" in err and "--override" not in err  # no override for that
    code, out, _ = run(capsys, "rollback", "expand", "--db", db_url, "--grace", "0")
    assert code == 0 and "expand rolled back" in out
    db2 = open_database(db_url)
    try:
        with db2.engine.connect() as conn:
            from router.schema import snapshot_column_state

            assert snapshot_column_state(conn, db2.schema) == "absent"
    finally:
        db2.engine.dispose()
    code, _, err = run(
        capsys, "backfill", "--db", db_url, "--flagd", "127.0.0.1:1", "--no-progress"
    )
    assert code == 1 and "run `migrate expand` first" in err
    with pytest.raises(SystemExit) as usage:
        main(["rollback", "contract", "--db", db_url])
    assert usage.value.code == 2
