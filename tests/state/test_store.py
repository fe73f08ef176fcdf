"""The StateStore API on both backends: overrides, audit records, versions and their errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from flagd.state import NoOverrideError, StaleVersionError, StateSnapshot, StateStore
from tests.state.conftest import OpenStore, all_changes, assert_gapless, flag, put


def everything(store: StateStore) -> tuple[StateSnapshot, list[Any]]:
    """All observable state, to prove that a failed call changed nothing."""
    return store.snapshot(), all_changes(store)


def test_fresh_store_is_empty(store: StateStore) -> None:
    assert store.head_version() == 0
    assert store.overrides() == {}
    assert store.last_changes() == {}
    assert store.changes() == []
    assert store.snapshot() == StateSnapshot(0, {}, {})


def test_commit_change_records_overrides_and_versions(store: StateStore) -> None:
    first = put(store, "checkout", flag(), reason="open the gate")
    assert first.version == 1
    assert (first.actor, first.action, first.flag_set_id, first.flag_key) == (
        "alice", "put", "", "checkout",
    )  # fmt: skip
    assert first.reason == "open the gate"
    assert (first.before, first.after) == (None, flag())
    assert first.at.tzinfo is UTC

    second = put(
        store, "checkout", flag("DISABLED"), action="set_state", before=flag(), actor="bob"
    )
    assert second.version == 2
    assert store.head_version() == 2
    assert store.overrides() == {("", "checkout"): flag("DISABLED")}
    assert store.last_changes() == {("", "checkout"): second}
    # What commit_change returned is exactly what was stored.
    assert store.changes() == [first, second]
    assert store.snapshot() == StateSnapshot(
        2, {("", "checkout"): flag("DISABLED")}, {("", "checkout"): second}
    )


def test_delete_leaves_a_tombstone(store: StateStore) -> None:
    put(store, "old", flag())
    deleted = put(store, "old", None, before=flag())
    assert (deleted.action, deleted.before, deleted.after) == ("delete", flag(), None)
    assert store.overrides() == {("", "old"): None}


def test_flag_sets_are_separate(store: StateStore) -> None:
    a = put(store, "k", flag(owner="a"), flag_set_id="payments")
    b = put(store, "k", flag(owner="b"), flag_set_id="")
    assert store.overrides() == {("payments", "k"): flag(owner="a"), ("", "k"): flag(owner="b")}
    assert store.last_changes() == {("payments", "k"): a, ("", "k"): b}
    # expected_version is per flag: each set's own last version.
    put(store, "k", flag(), flag_set_id="payments", expected_version=a.version)


def test_definitions_round_trip_exactly(store: StateStore) -> None:
    definition = {
        "state": "ENABLED",
        "variants": {"zeta": {"nested": [1, 2.5, None, True, "ü✓"]}, "alpha": -3},
        "defaultVariant": "alpha",
        "targeting": {"fractional": [{"var": "id"}, ["alpha", 90], ["zeta", 10]]},
        "metadata": {"owner": "payments-oncall", "flagSetId": "x"},
    }
    record = put(store, "rich", definition)
    assert record.after == definition
    assert store.changes()[0].after == definition
    assert store.overrides()[("", "rich")] == definition


def test_expected_version_matches_the_flags_last_change(store: StateStore) -> None:
    # Never changed: 0.
    first = put(store, "a", flag(), expected_version=0)
    put(store, "other", flag())  # moves the head, not flag a
    second = put(store, "a", flag("DISABLED"), expected_version=first.version)
    assert second.version == 3


@pytest.mark.parametrize("expected", [0, 2, 99])
def test_stale_expected_version_changes_nothing(store: StateStore, expected: int) -> None:
    put(store, "a", flag())
    put(store, "b", flag())
    before = everything(store)
    with pytest.raises(StaleVersionError) as info:
        put(store, "a", flag("DISABLED"), expected_version=expected)
    assert info.value.current == 1
    assert info.value.expected == expected
    assert "version 1" in str(info.value)
    assert f"expected version {expected}" in str(info.value)
    assert everything(store) == before
    # The next change still gets the next version: the failed one used none.
    assert put(store, "a", flag("DISABLED"), expected_version=1).version == 3
    assert_gapless(store)


@pytest.mark.parametrize(
    "bad",
    [
        {"reason": ""},
        {"reason": "   "},
        {"actor": ""},
        {"action": ""},
        {"key": ""},
        {"action": "file"},
        {"action": "release"},
    ],
)
def test_invalid_change_is_refused(store: StateStore, bad: dict[str, str]) -> None:
    put(store, "a", flag())
    before = everything(store)
    kwargs: dict[str, Any] = {"key": "a", "definition": flag("DISABLED"), **bad}
    with pytest.raises(ValueError):
        put(store, **kwargs)
    assert everything(store) == before


def test_definitions_must_be_json_objects(store: StateStore) -> None:
    with pytest.raises(TypeError):
        put(store, "a", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        put(store, "a", {"variants": {"x": float("nan")}})
    assert store.head_version() == 0


def test_release_override(store: StateStore) -> None:
    put(store, "a", flag("DISABLED"))
    put(store, "b", flag())
    released = store.release_override(
        flag_set_id="", key="a", actor="carol", reason="back to the file", after=flag()
    )
    assert released.version == 3
    assert (released.action, released.actor, released.reason) == (
        "release", "carol", "back to the file",
    )  # fmt: skip
    assert (released.before, released.after) == (flag("DISABLED"), flag())
    assert store.overrides() == {("", "b"): flag()}
    assert store.last_changes()[("", "a")] == released
    assert store.changes(flag_key="a")[-1] == released
    # The flag can be overridden again, against the release's version.
    put(store, "a", flag(), expected_version=released.version)


def test_release_of_a_tombstone(store: StateStore) -> None:
    put(store, "a", None)
    released = store.release_override(flag_set_id="", key="a", actor="x", reason="undelete")
    assert (released.before, released.after) == (None, None)
    assert store.overrides() == {}


def test_release_without_override_changes_nothing(store: StateStore) -> None:
    store.record_file_changes(source="f.json", digest="d1", changes=[("", "a", None, flag())])
    put(store, "b", flag())
    before = everything(store)
    for key in ("a", "never-seen"):
        with pytest.raises(NoOverrideError, match=key):
            store.release_override(flag_set_id="", key=key, actor="x", reason="r")
    with pytest.raises(StaleVersionError):
        store.release_override(flag_set_id="", key="b", actor="x", reason="r", expected_version=1)
    with pytest.raises(ValueError):
        store.release_override(flag_set_id="", key="b", actor="x", reason="")
    assert everything(store) == before


def test_file_changes_are_audited_but_leave_overrides_alone(store: StateStore) -> None:
    override = put(store, "a", flag("DISABLED"), action="set_state")
    records = store.record_file_changes(
        source="/etc/flags.json",
        digest="sha256:1",
        changes=[("", "a", flag(), flag(default="off")), ("pay", "b", None, flag())],
    )
    assert [r.version for r in records] == [2, 3]
    for record in records:
        assert (record.action, record.actor, record.reason) == (
            "file", "file:/etc/flags.json", "file changed",
        )  # fmt: skip
    assert (records[0].before, records[0].after) == (flag(), flag(default="off"))
    assert (records[1].flag_set_id, records[1].flag_key) == ("pay", "b")
    # The override still wins: a file reload never reverts an admin change.
    assert store.overrides() == {("", "a"): flag("DISABLED")}
    assert store.last_changes() == {("", "a"): records[0], ("pay", "b"): records[1]}
    # The flag's last change is now the file change: a writer that saw the override is stale.
    with pytest.raises(StaleVersionError):
        put(store, "a", flag(), expected_version=override.version)
    put(store, "a", flag(), expected_version=records[0].version)
    assert_gapless(store)


def test_file_changes_are_written_once_per_digest(open_store: OpenStore) -> None:
    one, two = open_store(), open_store()
    edit = [("", "a", None, flag())]
    written = one.record_file_changes(source="f.json", digest="A", changes=edit)
    assert len(written) == 1
    # Another replica (another instance) reporting the same edit writes nothing.
    assert two.record_file_changes(source="f.json", digest="A", changes=edit) == []
    assert one.record_file_changes(source="f.json", digest="A", changes=edit) == []
    # Same content in another file is another edit.
    assert len(two.record_file_changes(source="g.json", digest="A", changes=edit)) == 1
    # A -> B -> A: going back to earlier content is a real edit and is recorded.
    back = [("", "a", flag(), flag("DISABLED"))]
    assert len(two.record_file_changes(source="f.json", digest="B", changes=back)) == 1
    assert one.record_file_changes(source="f.json", digest="B", changes=back) == []
    forth = [("", "a", flag("DISABLED"), flag())]
    assert len(one.record_file_changes(source="f.json", digest="A", changes=forth)) == 1
    assert two.record_file_changes(source="f.json", digest="A", changes=forth) == []
    # Nothing changed: no record, no version.
    assert one.record_file_changes(source="f.json", digest="C", changes=[]) == []
    records = assert_gapless(one)
    assert len(records) == 4
    assert one.overrides() == {}


def test_file_definitions_is_what_each_file_last_said(store: StateStore) -> None:
    assert store.file_definitions("f.json") == {}
    store.record_file_changes(
        source="f.json",
        digest="1",
        changes=[("", "a", None, flag()), ("", "b", None, flag()), ("s", "a", None, flag())],
    )
    store.record_file_changes(source="g.json", digest="1", changes=[("", "a", None, flag(g=1))])
    # Admin changes and releases do not count: this is about the file's own content.
    put(store, "a", flag("DISABLED"))
    store.release_override(flag_set_id="", key="a", actor="x", reason="r", after=flag())
    store.record_file_changes(
        source="f.json",
        digest="2",
        changes=[("", "a", flag(), flag(default="off")), ("", "b", flag(), None)],
    )
    assert store.file_definitions("f.json") == {
        ("", "a"): flag(default="off"),
        ("s", "a"): flag(),
    }
    assert store.file_definitions("g.json") == {("", "a"): flag(g=1)}
    assert store.file_definitions("nope") == {}


def test_changes_filters(store: StateStore) -> None:
    for i in range(10):
        put(store, "a" if i % 2 == 0 else "b", flag(i=i))
    versions = lambda **kw: [r.version for r in store.changes(**kw)]  # noqa: E731
    assert versions() == list(range(1, 11))
    assert versions(from_version=3) == list(range(4, 11))  # exclusive
    assert versions(to_version=3) == [1, 2, 3]  # inclusive
    assert versions(from_version=3, to_version=7) == [4, 5, 6, 7]
    assert versions(from_version=3, to_version=3) == []
    assert versions(flag_key="b") == [2, 4, 6, 8, 10]
    assert versions(flag_key="b", from_version=4, limit=2) == [6, 8]
    assert versions(flag_key="nope") == []
    assert versions(limit=3) == [1, 2, 3]
    with pytest.raises(ValueError):
        store.changes(from_version=-1)
    with pytest.raises(ValueError):
        store.changes(limit=-1)


def test_changes_limit_zero_means_100(store: StateStore) -> None:
    edit = [("", f"f{i}", None, flag()) for i in range(105)]
    assert len(store.record_file_changes(source="big.json", digest="1", changes=edit)) == 105
    assert len(store.changes(limit=0)) == 100
    assert len(store.changes()) == 100
    assert len(store.changes(limit=1000)) == 105


def test_clock_injection(open_store: OpenStore) -> None:
    now = [datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)]
    store = open_store(clock=lambda: now[0])
    first = put(store, "a", flag())
    assert first.at == now[0]
    # Another zone is stored and returned as the same instant in UTC.
    now[0] = datetime(2030, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    second = put(store, "a", flag("DISABLED"))
    assert second.at == datetime(2030, 6, 1, 10, 0, tzinfo=UTC)
    assert second.at.tzinfo is UTC
    (file_record,) = store.record_file_changes(
        source="f", digest="d", changes=[("", "b", None, flag())]
    )
    assert file_record.at == second.at
    stored = store.changes()
    assert [r.at for r in stored] == [first.at, second.at, second.at]
    assert all(r.at.tzinfo is UTC for r in stored)
    # A naive clock is a bug: refused, nothing written.
    now[0] = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="tz-aware"):
        put(store, "a", flag())
    assert store.head_version() == 3


def test_default_clock_is_now(store: StateStore) -> None:
    before = datetime.now(UTC)
    record = put(store, "a", flag())
    assert before <= record.at <= datetime.now(UTC)


def test_state_survives_reopen(open_store: OpenStore, state_url: str) -> None:
    store = open_store()
    put(store, "a", flag("DISABLED"))
    put(store, "b", None)
    store.record_file_changes(source="f", digest="d", changes=[("", "c", None, flag())])
    expected = everything(store)
    store.close()
    again = open_store(state_url)
    assert everything(again) == expected
    assert put(again, "a", flag()).version == 4


def test_closed_store_refuses_calls(store: StateStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.head_version()
    with pytest.raises(RuntimeError, match="closed"):
        put(store, "a", flag())
    with pytest.raises(RuntimeError, match="closed"):
        store.subscribe(lambda _v: None)
