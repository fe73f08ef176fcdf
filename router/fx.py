"""FX quotes: a live HTTP rate provider behind a circuit breaker, and a static fallback table.

``FxService.quote`` returns an immutable ``Quote`` snapshot. It asks the live provider unless
the kill switch is on, and falls back at once to the static table when the kill switch is on
(no network at all), the breaker is open, or the provider times out, errors or answers
nonsense. Every decision is reported as ``on_decision(source, reason, stale)``:

- source: ``live`` | ``static`` | ``none`` (no live quote and the table lacks the pair);
- reason: ``ok`` (live) or why the table served: ``kill_switch``, ``no_provider``,
  ``breaker_open``, ``timeout``, ``error``, ``rejected`` (a 4xx), ``malformed``;
- stale: the static table is older than its ``max_age``. A stale table still serves (a
  payment is never refused for want of a fresh rate), but the quote says so (``Quote.stale``)
  and so does the metric, so the DCC caller can decline to offer conversion on a stale rate
  (payments-domain notes 1.5: the disclosure must be truthful) and the gates can alert.

The HTTP client is the standard library's ``http.client`` on a socket that re-arms its
timeout from one deadline before every send and receive, so a provider that trickles bytes
still costs at most ``timeout`` in total (per-operation timeouts alone would not bound it).
One connection per quote: nothing to pool or poison across threads. Name resolution is not
bounded by the deadline: configure the provider by IP address or a name in /etc/hosts.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from router.money import (
    ROUNDING,
    CurrencyError,
    MoneyError,
    applied_rate,
    convert,
    exponent,
    format_decimal,
    parse_rate,
    validate_amount,
    validate_markup,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from ripcord_pb.ripcord.payments.v1.payments_pb2 import FxQuote

log = logging.getLogger(__name__)

DEFAULT_TABLE = Path(__file__).parent / "rates" / "static-rates.json"
# Elavon treats a daily DCC rate as valid for up to ~30 hours (payments-domain notes 1.4).
DEFAULT_MAX_AGE = timedelta(hours=30)
DEFAULT_TIMEOUT = 0.150
MAX_BODY = 64 * 1024
# Cross rates from the table are rounded to 10 significant digits (providers quote 5-8).
_CROSS = Context(prec=10, rounding=ROUND_HALF_UP)

OnDecision = Callable[[str, str, bool], None]


class FxError(Exception):
    """Base of this module's errors."""


class RateTableError(FxError, ValueError):
    """The static rate table file is missing, malformed or invalid."""


class FxUnavailable(FxError):
    """No live quote and the static table has no rate for the pair: don't offer conversion."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_timestamp(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"timestamp must be a string, not {type(text).__name__}")
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return stamp.astimezone(UTC)


@dataclass(frozen=True, eq=False)
class StaticRates:
    """A versioned table of rates against one base currency, with a freshness bound."""

    version: str
    as_of: datetime
    base: str
    rates: Mapping[str, Decimal]
    max_age: timedelta = DEFAULT_MAX_AGE

    @classmethod
    def load(
        cls, path: Path = DEFAULT_TABLE, *, max_age: timedelta = DEFAULT_MAX_AGE
    ) -> StaticRates:
        """Read a table file (JSON: version, as_of, base, rates as decimal strings)."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RateTableError(f"cannot read rate table {path}: {exc}") from exc
        return cls.from_json(text, max_age=max_age, origin=str(path))

    @classmethod
    def from_json(
        cls, text: str, *, max_age: timedelta = DEFAULT_MAX_AGE, origin: str = "<string>"
    ) -> StaticRates:
        """Parse and validate a table; RateTableError names what is wrong."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("top level must be an object")
            version = doc["version"]
            if not isinstance(version, str) or not version:
                raise ValueError("version must be a non-empty string")
            as_of = _parse_timestamp(doc["as_of"])
            base = doc["base"]
            exponent(base)
            raw = doc["rates"]
            if not isinstance(raw, dict) or not raw:
                raise ValueError("rates must be a non-empty object")
            rates: dict[str, Decimal] = {}
            for code, rate_text in raw.items():
                exponent(code)
                rates[code] = parse_rate(rate_text)
            if rates.setdefault(base, Decimal(1)) != 1:
                raise ValueError(f"the base currency {base} must have rate 1")
        except (KeyError, TypeError, ValueError) as exc:
            raise RateTableError(f"invalid rate table {origin}: {exc!r}") from exc
        if max_age <= timedelta(0):
            raise ValueError("max_age must be positive")
        return cls(version, as_of, base, MappingProxyType(rates), max_age)

    @property
    def currencies(self) -> frozenset[str]:
        """Currencies the table can convert between."""
        return frozenset(self.rates)

    def rate(self, from_ccy: str, to_ccy: str) -> Decimal:
        """Units of ``to_ccy`` per ``from_ccy``; KeyError if the table lacks either."""
        if from_ccy not in self.rates or to_ccy not in self.rates:
            missing = from_ccy if from_ccy not in self.rates else to_ccy
            raise KeyError(f"static table {self.version} has no rate for {missing}")
        return _CROSS.divide(self.rates[to_ccy], self.rates[from_ccy])

    def age(self, now: datetime) -> timedelta:
        """How old the table is at ``now``."""
        return now - self.as_of

    def is_stale(self, now: datetime) -> bool:
        """True when the table is older than ``max_age``: still served, but flagged."""
        return self.age(now) > self.max_age


class BreakerState(StrEnum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> one half-open probe after a cool-down.

    A pure state machine over an injectable monotonic clock; thread-safe. While half-open only
    one probe is let through; if its result never arrives it expires after another cool-down.
    Results that arrive while open (calls started before it opened) are ignored.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        cool_down: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or cool_down <= 0:
            raise ValueError("failure_threshold must be >= 1 and cool_down > 0")
        self.failure_threshold = failure_threshold
        self.cool_down = cool_down
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None

    @property
    def state(self) -> BreakerState:
        """The current state (open stays open until a call asks to probe)."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def _move(self, state: BreakerState) -> BreakerState | None:
        if state is self._state:
            return None
        self._state = state
        return state

    def _notify(self, changed: BreakerState | None) -> None:
        # Outside the lock: a callback that reads the breaker must not deadlock.
        if changed is not None and self._on_change is not None:
            self._on_change(changed)

    def allow(self) -> bool:
        """May a call go to the provider now? Starts a probe when the cool-down is over."""
        changed = None
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if now - self._opened_at < self.cool_down:
                    return False
                changed = self._move(BreakerState.HALF_OPEN)
            elif self._probe_started is not None and now - self._probe_started < self.cool_down:
                return False
            self._probe_started = now
        self._notify(changed)
        return True

    def record_success(self) -> None:
        """A call succeeded: reset the count; a successful probe closes the breaker."""
        changed = None
        with self._lock:
            if self._state is BreakerState.OPEN:
                return
            self._failures = 0
            self._probe_started = None
            changed = self._move(BreakerState.CLOSED)
        self._notify(changed)

    def record_failure(self) -> None:
        """A call failed: open after the threshold; a failed probe reopens at once."""
        changed = None
        with self._lock:
            if self._state is BreakerState.OPEN:
                return
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
                self._probe_started = None
                changed = self._move(BreakerState.OPEN)
        self._notify(changed)


class FxProviderError(FxError):
    """The live provider gave no usable rate; ``reason`` is the decision label."""

    reason = "error"


class ProviderTimeout(FxProviderError):
    """No complete answer within the total timeout."""

    reason = "timeout"


class ProviderUnavailable(FxProviderError):
    """Connection refused or reset, or a 5xx/429 answer."""

    reason = "error"


class ProviderRejected(FxProviderError):
    """A 4xx answer: the provider is up but refused this pair (doesn't trip the breaker)."""

    reason = "rejected"


class ProviderMalformed(FxProviderError):
    """A 200 answer that isn't a valid rate for the pair asked."""

    reason = "malformed"


class BreakerOpen(FxProviderError):
    """The breaker is open: the provider was not called."""

    reason = "breaker_open"


@dataclass(frozen=True)
class LiveRate:
    """A rate as the live provider returned it."""

    from_currency: str
    to_currency: str
    rate: Decimal
    as_of: datetime
    fetched_at: datetime
    latency_s: float


class _DeadlineSocket(socket.socket):
    """A socket whose every send/receive gets only the time left until one deadline."""

    deadline = 0.0

    def _arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("FX provider deadline exceeded")
        self.settimeout(remaining)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        """Receive, bounded by the deadline."""
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        """Send, bounded by the deadline."""
        self._arm()
        super().sendall(data, flags)


class _DeadlineConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, deadline: float) -> None:
        super().__init__(host, port)
        self._deadline = deadline

    def connect(self) -> None:
        last: OSError | None = None
        for family, kind, proto, _, address in socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        ):
            sock = _DeadlineSocket(family, kind, proto)
            sock.deadline = self._deadline
            try:
                sock._arm()
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                if isinstance(exc, TimeoutError):
                    raise
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
            return
        raise last or OSError(f"cannot resolve {self.host}")


class FxProvider:
    """HTTP client of an FX rate provider (``GET {base}/rates?from=EUR&to=USD``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FX provider URL must be http://host[:port][/path], got {base_url!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url
        self.timeout = timeout
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/rates"
        self._clock = clock

    def quote(self, from_ccy: str, to_ccy: str) -> LiveRate:
        """Fetch a live rate; raise an FxProviderError (never hang past ``timeout``)."""
        if not self.breaker.allow():
            raise BreakerOpen("circuit breaker is open")
        try:
            live = self._fetch(from_ccy, to_ccy)
        except ProviderRejected:
            self.breaker.record_success()
            raise
        except BaseException:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return live

    def _fetch(self, from_ccy: str, to_ccy: str) -> LiveRate:
        started = time.monotonic()
        conn = _DeadlineConnection(self._host, self._port, started + self.timeout)
        query = urlencode({"from": from_ccy, "to": to_ccy})
        try:
            conn.request("GET", f"{self._path}?{query}", headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read(MAX_BODY + 1)
            status = response.status
        except TimeoutError as exc:
            raise ProviderTimeout(f"no answer within {self.timeout * 1000:.0f} ms") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ProviderUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        latency = time.monotonic() - started
        if status >= 500 or status == 429:
            raise ProviderUnavailable(f"provider answered HTTP {status}")
        if 400 <= status < 500:
            raise ProviderRejected(f"provider answered HTTP {status}")
        if status != 200:
            raise ProviderMalformed(f"unexpected HTTP {status}")
        if len(body) > MAX_BODY:
            raise ProviderMalformed(f"response larger than {MAX_BODY} bytes")
        return self._parse(body, from_ccy, to_ccy, latency)

    def _parse(self, body: bytes, from_ccy: str, to_ccy: str, latency: float) -> LiveRate:
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("from") != from_ccy or doc.get("to") != to_ccy:
                raise ValueError(f"answer is for {doc.get('from')}/{doc.get('to')}")
            rate = parse_rate(doc["rate"])
            as_of = _parse_timestamp(doc["as_of"])
        except (KeyError, TypeError, ValueError) as exc:
            # MoneyError and JSONDecodeError are ValueErrors; TypeError is a float rate.
            raise ProviderMalformed(f"{type(exc).__name__}: {exc}") from exc
        return LiveRate(from_ccy, to_ccy, rate, as_of, self._clock(), latency)


@dataclass(frozen=True)
class Quote:
    """An immutable FX quote snapshot: what the customer was offered and how it was computed."""

    quote_id: str
    from_currency: str
    to_currency: str
    amount_minor: int
    rate: Decimal
    markup: Decimal
    source: str
    reason: str
    converted_amount_minor: int
    as_of: datetime
    created_at: datetime
    table_version: str | None = None
    stale: bool = False
    rounding: str = field(default=ROUNDING)

    @property
    def applied_rate(self) -> Decimal:
        """``rate * (1 + markup)``: the rate the customer pays."""
        return applied_rate(self.rate, self.markup)

    def to_proto(self) -> FxQuote:
        """The API's ``ripcord.payments.v1.FxQuote``."""
        from ripcord_pb.ripcord.payments.v1 import payments_pb2

        message = payments_pb2.FxQuote(
            quote_id=self.quote_id,
            from_currency=self.from_currency,
            to_currency=self.to_currency,
            rate=format_decimal(self.rate),
            markup=format_decimal(self.markup),
            source=self.source,
            converted_amount_minor=self.converted_amount_minor,
        )
        message.as_of.FromDatetime(self.as_of)
        return message


class FxService:
    """Quotes for conversion: live when possible, the static table otherwise, never silently."""

    def __init__(
        self,
        table: StaticRates,
        provider: FxProvider | None = None,
        *,
        on_decision: OnDecision | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.table = table
        self.provider = provider
        self._on_decision = on_decision
        self._clock = clock

    def quote(
        self,
        from_ccy: str,
        to_ccy: str,
        amount_minor: int,
        merchant_markup: Decimal,
        *,
        kill_switch: bool,
    ) -> Quote:
        """Quote ``amount_minor`` of ``from_ccy`` in ``to_ccy`` with the merchant's markup.

        Raises MoneyError for invalid input (before any network call), FxUnavailable when
        neither the provider nor the table has the pair.
        """
        validate_amount(amount_minor, from_ccy)
        exponent(to_ccy)
        validate_markup(merchant_markup)
        if from_ccy == to_ccy:
            raise CurrencyError(
                f"nothing to convert: both currencies are {from_ccy}", field="currency"
            )
        if kill_switch:
            return self._static(from_ccy, to_ccy, amount_minor, merchant_markup, "kill_switch")
        if self.provider is None:
            return self._static(from_ccy, to_ccy, amount_minor, merchant_markup, "no_provider")
        try:
            live = self.provider.quote(from_ccy, to_ccy)
        except FxProviderError as exc:
            return self._static(from_ccy, to_ccy, amount_minor, merchant_markup, exc.reason)
        except Exception:
            # A bug in the client must cost a fallback, not a payment.
            log.warning("FX provider raised unexpectedly; using the static table", exc_info=True)
            return self._static(from_ccy, to_ccy, amount_minor, merchant_markup, "error")
        converted = convert(amount_minor, from_ccy, to_ccy, live.rate, merchant_markup)
        self._emit("live", "ok", False)
        return Quote(
            quote_id=str(uuid.uuid4()),
            from_currency=from_ccy,
            to_currency=to_ccy,
            amount_minor=amount_minor,
            rate=live.rate,
            markup=merchant_markup,
            source="live",
            reason="ok",
            converted_amount_minor=converted,
            as_of=live.as_of,
            created_at=live.fetched_at,
        )

    def _static(
        self, from_ccy: str, to_ccy: str, amount_minor: int, markup: Decimal, reason: str
    ) -> Quote:
        table = self.table  # one read: a concurrent table swap can't mix two versions
        now = self._clock()
        try:
            rate = table.rate(from_ccy, to_ccy)
        except KeyError as exc:
            self._emit("none", reason, False)
            raise FxUnavailable(f"no live quote ({reason}) and {exc.args[0]}") from None
        stale = table.is_stale(now)
        converted = convert(amount_minor, from_ccy, to_ccy, rate, markup)
        self._emit("static", reason, stale)
        return Quote(
            quote_id=str(uuid.uuid4()),
            from_currency=from_ccy,
            to_currency=to_ccy,
            amount_minor=amount_minor,
            rate=rate,
            markup=markup,
            source="static",
            reason=reason,
            converted_amount_minor=converted,
            as_of=table.as_of,
            created_at=now,
            table_version=table.version,
            stale=stale,
        )

    def _emit(self, source: str, reason: str, stale: bool) -> None:
        if self._on_decision is not None:
            self._on_decision(source, reason, stale)


__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_TABLE",
    "DEFAULT_TIMEOUT",
    "BreakerOpen",
    "BreakerState",
    "CircuitBreaker",
    "FxError",
    "FxProvider",
    "FxProviderError",
    "FxService",
    "FxUnavailable",
    "LiveRate",
    "MoneyError",
    "OnDecision",
    "ProviderMalformed",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Quote",
    "RateTableError",
    "StaticRates",
]
