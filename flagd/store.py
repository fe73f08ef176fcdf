"""The flag store: merges sources into immutable, versioned snapshots (spec C.4).

Writers (source reloads) build a whole new ``Snapshot`` and swap it in; readers (every RPC,
every stream) just take ``store.current``. Nothing is locked on the read path and a snapshot
never changes after it is published, which is what lets one slow stream never hold up a change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from flagd.definitions import to_sync_payload
from flagd.evaluator import CompiledFlag, compile_flag
from flagd.model import Flag
from flagd.selector import ALL, Selector

FractionalVersion = Literal["v2", "v3"]
ChangeType = Literal["write", "update", "delete"]


@dataclass(frozen=True, slots=True)
class View:
    """The flags one selector can see: key -> compiled flag, plus the sync payload text."""

    flags: Mapping[str, CompiledFlag]
    _payload: list[str] = field(default_factory=list, repr=False, compare=False)

    def sync_payload(self) -> str:
        """The `flag_configuration` JSON for SyncFlags/FetchAllFlags, built once per view."""
        if not self._payload:
            self._payload.append(to_sync_payload(c.flag for c in self.flags.values()))
        return self._payload[0]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One published configuration. ``views`` is a per-selector cache filled on first use."""

    version: int
    applied_at: float  # time.time() when published
    # (flagSetId or "", key) -> (priority, compiled flag); priority = source position.
    entries: Mapping[tuple[str, str], tuple[int, CompiledFlag]]
    _views: dict[Selector, View] = field(default_factory=dict, repr=False, compare=False)

    def view(self, selector: Selector = ALL) -> View:
        """The flags visible to ``selector``; computed once per snapshot and selector."""
        cached = self._views.get(selector)
        if cached is None:
            cached = View(self._select(selector))
            self._views[selector] = cached
        return cached

    def _select(self, selector: Selector) -> dict[str, CompiledFlag]:
        chosen: dict[str, tuple[int, CompiledFlag]] = {}
        for (set_id, key), (priority, compiled) in self.entries.items():
            if selector.flag_set_id is not None and set_id != selector.flag_set_id:
                continue
            if selector.source is not None and compiled.flag.source != selector.source:
                continue
            # Across flag sets the highest-priority (latest) source wins the key.
            held = chosen.get(key)
            if held is None or priority > held[0]:
                chosen[key] = (priority, compiled)
        return {key: compiled for key, (_, compiled) in chosen.items()}


def diff_views(old: View, new: View) -> dict[str, ChangeType]:
    """Per-key change kinds between two views, as EventStream reports them (spec A.9)."""
    changes: dict[str, ChangeType] = {}
    for key, compiled in new.flags.items():
        before = old.flags.get(key)
        if before is None:
            changes[key] = "write"
        elif before.flag != compiled.flag:
            changes[key] = "update"
    for key in old.flags:
        if key not in new.flags:
            changes[key] = "delete"
    return changes


Listener = Callable[[Snapshot], None]


class FlagStore:
    """Holds each source's latest flags plus the admin layer, and publishes merged snapshots.

    Layering (README "How file sources and admin changes combine"): file sources merge by
    position, later wins; an admin override replaces the (flag set, key) it names whatever the
    files say, and a tombstone hides it, until the override is released.
    """

    def __init__(self, source_order: Iterable[str], *, fractional: FractionalVersion = "v3"):
        self._order = {name: i for i, name in enumerate(source_order)}
        self._fractional: FractionalVersion = fractional
        self._by_source: dict[str, list[Flag]] = {}
        self._overrides: dict[tuple[str, str], Flag | None] = {}
        self._listeners: list[Listener] = []
        self.current = Snapshot(version=0, applied_at=time.time(), entries={})

    @property
    def fractional(self) -> FractionalVersion:
        """The fractional hash recipe every flag is compiled with."""
        return self._fractional

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` after every publish; it must not block."""
        self._listeners.append(listener)

    def source_flags(self, source: str) -> list[Flag]:
        """What ``source`` last delivered (empty before its first load)."""
        return list(self._by_source.get(source, []))

    def file_flag(self, ident: tuple[str, str]) -> Flag | None:
        """The highest-priority file definition of (flag set, key), ignoring the admin layer."""
        best: tuple[int, Flag] | None = None
        for source, flags in self._by_source.items():
            for flag in flags:
                if (flag.flag_set_id or "", flag.key) == ident:
                    priority = self._order[source]
                    if best is None or priority > best[0]:
                        best = (priority, flag)
        return best[1] if best else None

    @property
    def overrides(self) -> dict[tuple[str, str], Flag | None]:
        """The admin layer: (flag set, key) -> override, or None for a deleted flag."""
        return dict(self._overrides)

    def replace_source(
        self, source: str, flags: Iterable[Flag], *, version: int | None = None
    ) -> Snapshot | None:
        """Replace everything ``source`` provides; publish if anything changed."""
        if source not in self._order:
            raise KeyError(f"unknown source {source!r}")
        self._by_source[source] = list(flags)
        return self._publish(version)

    def set_overrides(
        self, overrides: Mapping[tuple[str, str], Flag | None], *, version: int | None = None
    ) -> Snapshot | None:
        """Replace the admin layer; publish if anything changed."""
        self._overrides = dict(overrides)
        return self._publish(version)

    def _publish(self, version: int | None) -> Snapshot | None:
        previous = self.current
        if version is not None and version < previous.version:
            version = previous.version  # a late, older reload must not move the version back
        reuse = {(c.flag.source, key): c for key, (_, c) in previous.entries.items()}

        def compiled(flag: Flag, ident: tuple[str, str]) -> CompiledFlag:
            old = reuse.get((flag.source, ident))
            # Compiling is the expensive part; reuse it for flags that did not change.
            if old is not None and old.flag == flag:
                return old
            return compile_flag(flag, self._fractional)

        entries: dict[tuple[str, str], tuple[int, CompiledFlag]] = {}
        for source in sorted(self._by_source, key=self._order.__getitem__):
            priority = self._order[source]
            for flag in self._by_source[source]:
                ident = (flag.flag_set_id or "", flag.key)
                entries[ident] = (priority, compiled(flag, ident))
        top = len(self._order)
        for ident, override in self._overrides.items():
            if override is None:
                entries.pop(ident, None)
            else:
                entries[ident] = (top, compiled(override, ident))
        next_version = previous.version + 1 if version is None else version
        unchanged = self._same_entries(previous.entries, entries)
        if previous.version > 0 and unchanged and next_version == previous.version:
            return None
        if version is None and unchanged and previous.version > 0:
            return None
        snapshot = Snapshot(version=next_version, applied_at=time.time(), entries=entries)
        self.current = snapshot
        for listener in self._listeners:
            listener(snapshot)
        return snapshot

    @staticmethod
    def _same_entries(
        a: Mapping[tuple[str, str], tuple[int, CompiledFlag]],
        b: Mapping[tuple[str, str], tuple[int, CompiledFlag]],
    ) -> bool:
        if a.keys() != b.keys():
            return False
        return all(a[k][1].flag == b[k][1].flag for k in a)
