"""What the load test was told about each payment, and its reconciliation with the router's
database at the end of the run.

Every idempotency key ends in one of three states (the last attempt decides):

- acknowledged: the router answered APPROVED or DECLINED with a payment id. The database
  must hold exactly one payment row for it: 0 is a lost payment, 2 or more a double charge.
  A replay that answers with a different payment id is a double charge too.
- refused: the router answered UNAVAILABLE (a failing card) on every attempt. Nothing may be
  recorded: a row is a charge the client was told did not happen.
- unknown: the outcome never arrived (deadline exceeded, connection lost, cut off at the end
  of the run). 0 or 1 rows are both correct; more is a double charge.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (merchant_id, idempotency_key)

__all__ = ["Key", "PaymentBook", "Reconciliation", "reconcile"]


@dataclass
class PaymentBook:
    """One process's (or, merged, the whole run's) payment outcomes by idempotency key."""

    acknowledged: dict[Key, str] = field(default_factory=dict)  # -> payment_id
    refused: set[Key] = field(default_factory=set)
    unknown: set[Key] = field(default_factory=set)
    mismatches: list[str] = field(default_factory=list)

    def ack(self, key: Key, payment_id: str) -> str | None:
        """Record an answer with a payment id; returns a problem when it contradicts one."""
        self.refused.discard(key)
        self.unknown.discard(key)
        known = self.acknowledged.setdefault(key, payment_id)
        if known != payment_id:
            problem = f"{key[0]}/{key[1]}: answered with payment {payment_id}, earlier {known}"
            self.mismatches.append(problem)
            return problem
        return None

    def refuse(self, key: Key) -> None:
        """The router refused the payment (UNAVAILABLE): nothing may be recorded."""
        if key not in self.acknowledged:
            self.unknown.discard(key)
            self.refused.add(key)

    def lose_track(self, key: Key) -> None:
        """The outcome never arrived."""
        if key not in self.acknowledged:
            self.refused.discard(key)
            self.unknown.add(key)

    def clear(self) -> None:
        """Forget everything (a new test run)."""
        self.acknowledged.clear()
        self.refused.clear()
        self.unknown.clear()
        self.mismatches.clear()

    def chunks(self, size: int = 20_000) -> Iterator[dict[str, Any]]:
        """The book as Locust message payloads of at most ``size`` keys each."""
        acked = [[m, k, p] for (m, k), p in self.acknowledged.items()]
        refused = [list(key) for key in self.refused]
        unknown = [list(key) for key in self.unknown]
        yield {"mismatches": list(self.mismatches)}
        for name, items in (("acknowledged", acked), ("refused", refused), ("unknown", unknown)):
            for start in range(0, len(items), size):
                yield {name: items[start : start + size]}

    def merge(self, data: dict[str, Any]) -> None:
        """Add one payload of `chunks` (from another process) to this book."""
        for merchant, key, payment_id in data.get("acknowledged", []):
            self.ack((merchant, key), payment_id)
        for merchant, key in data.get("refused", []):
            self.refuse((merchant, key))
        for merchant, key in data.get("unknown", []):
            self.lose_track((merchant, key))
        self.mismatches.extend(data.get("mismatches", []))


@dataclass
class Reconciliation:
    """The end-of-run check of the book against the database."""

    acknowledged: int = 0
    refused: int = 0
    unknown: int = 0
    unknown_recorded: int = 0  # unknown outcomes the router did record (fine: at most once)
    lost: list[Key] = field(default_factory=list)
    duplicated: list[tuple[Key, int]] = field(default_factory=list)
    charged_when_refused: list[Key] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """No payment lost or charged twice (and the check itself ran)."""
        return not (
            self.lost
            or self.duplicated
            or self.charged_when_refused
            or self.mismatches
            or self.error
        )

    def text(self, limit: int = 20) -> str:
        """The console report."""
        if self.error:
            return f"Reconciliation FAILED to run: {self.error}"
        head = (
            f"Reconciliation: {self.acknowledged} acknowledged payments, {self.refused} refused, "
            f"{self.unknown} with unknown outcome ({self.unknown_recorded} of them recorded); "
            f"lost {len(self.lost)}, charged twice {len(self.duplicated)}, recorded although "
            f"refused {len(self.charged_when_refused)}, contradicting replays "
            f"{len(self.mismatches)}: {'ok' if self.ok else 'FAILED'}"
        )
        lines = [head]
        lines += [f"  lost: {m}/{k}" for m, k in self.lost[:limit]]
        lines += [f"  charged {n} times: {m}/{k}" for (m, k), n in self.duplicated[:limit]]
        lines += [f"  recorded although refused: {m}/{k}" for m, k in self.charged_when_refused]
        lines += [f"  {m}" for m in self.mismatches[:limit]]
        return "\n".join(lines)


def reconcile(book: PaymentBook, db_url: str) -> Reconciliation:
    """Count the database rows of every key in ``book`` (`router.ledger.Ledger.reconcile`)."""
    from router.ledger import Ledger  # SQLAlchemy only where the check runs

    result = Reconciliation(
        acknowledged=len(book.acknowledged),
        refused=len(book.refused),
        unknown=len(book.unknown),
        mismatches=list(book.mismatches),
    )
    try:
        with Ledger.open(db_url) as ledger:
            counts = ledger.reconcile([*book.acknowledged, *book.refused, *book.unknown])
    except Exception as exc:  # an unreachable database must fail the run, loudly
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    for key in book.acknowledged:
        n = counts.get(key, 0)
        if n == 0:
            result.lost.append(key)
        elif n > 1:
            result.duplicated.append((key, n))
    for key in book.refused:
        if counts.get(key, 0):
            result.charged_when_refused.append(key)
    for key in book.unknown:
        n = counts.get(key, 0)
        result.unknown_recorded += n > 0
        if n > 1:
            result.duplicated.append((key, n))
    return result
