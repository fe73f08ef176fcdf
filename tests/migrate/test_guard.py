"""The contract guard: 100 % for 72 h from the daemon's audit trail, backfill complete for 72 h,
a controllable clock; the recorded override; and the backfill's flag gate on a real daemon."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from flagd.process import DaemonProcess
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb
from router.backfill import BackfillSettings, BackfillWorker, BatchDone, FlagGate, count_nulls
from router.contract import (
    RELEASE_FLAG,
    AdminAuditSource,
    AuditRecord,
    GuardVerdict,
    check_guard,
    full_rollout,
    overrides,
    record_override,
    release_full_since,
)
from router.ledger import LedgerDatabase
from router.migrate import Migrator
from tests.migrate.conftest import OPERATOR_TOKEN, seed_legacy

H = timedelta(hours=1)
T = datetime(2026, 4, 1, tzinfo=UTC)


def flag(
    on: float | None = None, *, state: str = "ENABLED", default: str = "off"
) -> dict[str, Any]:
    """The release flag's definition: a fractional split with ``on`` percent, or none."""
    definition: dict[str, Any] = {
        "state": state,
        "variants": {"on": True, "off": False},
        "defaultVariant": default,
    }
    if on is not None:
        definition["targeting"] = {"fractional": [["on", on], ["off", 100 - on]]}
    return definition


def rec(
    version: int, at: datetime, action: str, after: Any, flag_set: str = "payments"
) -> AuditRecord:
    """An audit record of the release flag."""
    return AuditRecord(version, at, action, flag_set, RELEASE_FLAG, "alice", after)


class Trail:
    """An AuditSource with fixed records."""

    def __init__(self, records: list[AuditRecord] | Exception) -> None:
        self.records = records

    def changes(self, flag_key: str) -> list[AuditRecord]:
        if isinstance(self.records, Exception):
            raise self.records
        return [r for r in self.records if r.flag_key == flag_key]


# ---- "at 100 %" -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "full"),
    [
        (None, False),
        (flag(100), True),
        (flag(100.0), True),  # weights arrive as floats from a protobuf Struct
        (flag(99), False),
        (flag(0), False),
        (flag(100, state="DISABLED"), False),
        (flag(default="on"), True),
        (flag(default="off"), False),
        (
            {**flag(), "targeting": {"fractional": [{"var": "merchant"}, ["on", 5], ["off", 0]]}},
            True,
        ),
        ({**flag(), "targeting": {"fractional": [["on"], ["off"]]}}, False),  # default weight 1
        ({**flag(), "targeting": {"fractional": [["off", 0]]}}, False),
        ({**flag(), "targeting": {"if": [True, "on", "off"]}}, False),  # not provable
        ({**flag(100), "variants": {"on": "yes", "off": False}}, False),
    ],
)
def test_full_rollout(definition: Any, full: bool) -> None:
    assert full_rollout(definition)[0] is full


def test_the_100_percent_stretch_is_replayed_from_the_trail() -> None:
    records = [
        rec(1, T, "file", flag(0)),
        rec(2, T + 1 * H, "set_rollout", flag(50)),
        rec(3, T + 2 * H, "set_rollout", flag(100)),
        rec(4, T + 3 * H, "set_state", flag(100)),  # still 100 %: the stretch goes on
        rec(5, T + 4 * H, "file", flag(0)),  # the file changed under an override: no effect
    ]
    assert release_full_since(records)[0] == T + 2 * H
    dip = [
        *records,
        rec(6, T + 5 * H, "set_rollout", flag(90)),
        rec(7, T + 6 * H, "put", flag(100)),
    ]
    assert release_full_since(dip)[0] == T + 6 * H  # a dip restarts the clock
    released = [*records, rec(6, T + 5 * H, "release", flag(0))]
    assert release_full_since(released) == (None, "on=0% off=100%")  # the file's 0 % applies
    deleted = [*records, rec(6, T + 5 * H, "delete", None)]
    assert release_full_since(deleted) == (None, "absent")
    assert release_full_since([]) == (None, "no audit record")
    with pytest.raises(ValueError, match="unknown action"):
        release_full_since([rec(1, T, "teleport", flag(100))])
    other_set = [*records, rec(9, T, "file", flag(100), flag_set="")]
    with pytest.raises(ValueError, match="several flag sets"):
        release_full_since(other_set)
    assert release_full_since(other_set, "payments")[0] == T + 2 * H


# ---- the verdict with a controllable clock -------------------------------------------------


def completed_backfill(db: LedgerDatabase, at: datetime) -> None:
    """Seed, expand and complete the backfill at ``at`` (the worker's clock)."""
    seed_legacy(db, 20)
    Migrator(db).expand()
    assert BackfillWorker(db, clock=lambda: at).run() == "complete"


def test_guard_refuses_inside_72_hours_and_accepts_after(db: LedgerDatabase) -> None:
    completed_backfill(db, T + 10 * H)
    trail = Trail([rec(1, T, "file", flag(0)), rec(2, T + 5 * H, "set_rollout", flag(100))])

    def judge(now: datetime) -> GuardVerdict:
        return check_guard(db, trail, now=now)

    early = judge(T + 10 * H + 71 * H)
    assert not early.allowed and early.overridable
    assert early.refusals == ("the backfill completed 71 h ago only (needs 72 h)",)
    assert early.earliest == T + 82 * H
    both = judge(T + 76 * H)
    assert len(both.refusals) == 2 and "at 100% for 71 h only" in both.refusals[0]
    ok = judge(T + 82 * H)
    assert ok.allowed and ok.release_since == T + 5 * H and ok.backfill_since == T + 10 * H
    assert "guard passed" in ok.explain()[-1]
    assert not check_guard(db, trail, now=T + 82 * H, min_age=timedelta(hours=100)).allowed


def test_guard_refusals_for_flag_backfill_and_unreadable_trail(db: LedgerDatabase) -> None:
    seed_legacy(db, 5)
    late = T + 1000 * H
    verdict = check_guard(db, Trail([rec(1, T, "file", flag(100))]), now=late)
    assert verdict.blocking == (
        "fx_rate_snapshot does not exist (or is not the migration's): expand first",
    )
    Migrator(db).expand()
    verdict = check_guard(db, Trail([rec(1, T, "file", flag(50))]), now=late)
    assert "payments.new-router.enabled is not at 100% (on=50% off=50%)" in verdict.refusals
    assert "the backfill has not completed" in verdict.refusals
    assert verdict.blocking == (
        "rows without fx_rate_snapshot remain: run the backfill to completion",
    )
    assert not verdict.overridable
    with pytest.raises(ValueError, match="cannot override"):
        record_override(db, verdict, actor="alice", reason="no", at=late)
    BackfillWorker(db, clock=lambda: T).run()
    unreadable = check_guard(
        db, AdminAuditSource("127.0.0.1:1", timeout=0.5), now=late
    )  # no one there
    assert unreadable.refusals[0].startswith(
        "cannot read the audit trail of payments.new-router.enabled"
    )
    assert unreadable.overridable


def test_the_override_is_recorded_before_the_contract(db: LedgerDatabase) -> None:
    completed_backfill(db, T)
    verdict = check_guard(db, Trail([rec(1, T, "file", flag(100))]), now=T + 1 * H)
    assert verdict.overridable
    with pytest.raises(ValueError, match="reason"):
        record_override(db, verdict, actor="alice", reason="  ", at=T + H)
    record_override(db, verdict, actor="alice", reason="INC-7: disk full, contract now", at=T + H)
    [override] = overrides(db)
    assert override["actor"] == "alice" and override["reason"] == "INC-7: disk full, contract now"
    assert override["at"] == T + H and override["revision"] == "0002_fx_snapshot_contract"
    assert len(override["overridden"]) == 2
    assert Migrator(db).status().journal[-1]["action"] == "guard-override"


# ---- against the real daemon ---------------------------------------------------------------


def test_guard_reads_the_daemons_audit_trail(
    db: LedgerDatabase, daemon: DaemonProcess, admin: Callable[[str, Any], Any]
) -> None:
    def rollout(on: int) -> Any:
        weights = [
            pb.RolloutWeight(variant="on", weight=on),
            pb.RolloutWeight(variant="off", weight=100 - on),
        ]
        return admin(
            "SetRollout",
            pb.SetRolloutRequest(key=RELEASE_FLAG, weights=weights, reason=f"step {on}"),
        )

    audit = AdminAuditSource(f"127.0.0.1:{daemon.port}", token=OPERATOR_TOKEN)
    records = audit.changes(RELEASE_FLAG)
    assert records[0].action == "file" and not full_rollout(records[0].after)[0]  # loaded at 0 %
    rollout(25)
    at_full = rollout(100).change.at.ToDatetime(tzinfo=UTC)
    completed_backfill(db, datetime.now(UTC))
    now = datetime.now(UTC)
    since, state = release_full_since(audit.changes(RELEASE_FLAG))
    assert since == at_full and state == "on=100% off=0%"
    assert not check_guard(db, audit, now=now + 71 * H).allowed
    assert check_guard(db, audit, now=now + 73 * H).allowed
    rollout(0)  # back where the file put it, for the other tests
    with pytest.raises(grpc.RpcError):
        AdminAuditSource(f"127.0.0.1:{daemon.port}", token="not-a-valid-token-at-all").changes(
            RELEASE_FLAG
        )


class Observed:
    """Wraps a gate: remembers when it first answered False after having answered True."""

    def __init__(self, gate: FlagGate) -> None:
        self.gate = gate
        self.was_on = False
        self.first_off: float | None = None

    def enabled(self) -> bool:
        on = self.gate.enabled()
        if on:
            self.was_on = True
        elif self.was_on and self.first_off is None:
            self.first_off = time.perf_counter()
        return on

    def wait(self, timeout: float) -> None:
        self.gate.wait(timeout)

    def describe(self) -> str:
        return self.gate.describe()


def test_the_backfill_flag_pauses_the_worker_within_one_batch(
    db: LedgerDatabase, daemon: DaemonProcess, admin: Callable[[str, Any], Any]
) -> None:
    def set_flag(variant: str) -> float:
        admin(
            "SetDefaultVariant",
            pb.SetDefaultVariantRequest(
                key="payments.fx-backfill.enabled", variant=variant, reason="test"
            ),
        )
        return time.perf_counter()

    seed_legacy(db, 1500)
    Migrator(db).expand()
    commits: list[tuple[float, BatchDone]] = []
    with FlagGate(f"127.0.0.1:{daemon.sync_port}") as flag_gate:
        assert not flag_gate.enabled()  # the file says off
        gate = Observed(flag_gate)
        worker = BackfillWorker(
            db,
            settings=BackfillSettings(batch_size=50, sleep_s=0.005),
            gate=gate,
            on_batch=lambda b: commits.append((time.perf_counter(), b)),
        )
        thread = threading.Thread(target=worker.run)
        thread.start()
        time.sleep(0.3)
        assert commits == [] and worker.progress.metrics.paused._value.get() == 1
        set_flag("on")
        deadline = time.monotonic() + 10
        while len(commits) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        turned_off = set_flag("off")
        time.sleep(0.5)
        assert gate.first_off is not None
        started_after = [b.seq for t, b in commits if t - b.seconds > gate.first_off]
        committed_after = [b.seq for t, b in commits if t > gate.first_off]
        assert started_after == [] and len(committed_after) <= 1  # within one batch
        assert gate.first_off - turned_off < 0.5  # the change arrived over the stream
        paused_at = len(commits)
        time.sleep(0.2)
        assert len(commits) == paused_at and count_nulls(db) > 0
        set_flag("on")
        thread.join(30)
        set_flag("off")
    assert not thread.is_alive() and count_nulls(db) == 0
