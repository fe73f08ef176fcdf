"""`ripcord.payments.v1.PaymentRouter`: one payment, top to bottom.

Authorize reads like the data flow in DESIGN.md section 3:

1. validate (money, card, idempotency key): INVALID_ARGUMENT naming the field;
2. replay: the same key and request answer from storage before anything is charged;
3. decide: the flag snapshot says which engine (circuit first; pure, no lock, no I/O);
4. route: the chosen engine picks the acquirer (and the other one runs in its shadow if asked);
5. FX: a DCC quote for opted-in customers in the treatment group (live, else static);
6. commit: payment row and idempotency record in one transaction, then answer;
7. record: span attributes and metrics by engine and status.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc

from ripcord_pb.ripcord.payments.v1 import payments_pb2 as pb
from router import money
from router.engines import (
    Engine,
    Faults,
    LegacyEngine,
    NewEngine,
    PaymentInput,
    Route,
    shadow_mismatch,
)
from router.flags import FlagClient
from router.fx import FxError, FxService, Quote
from router.ledger import (
    ConversionConflict,
    FxQuoteRecord,
    IdempotencyConflict,
    Ledger,
    PaymentNotFound,
    PaymentRecord,
    request_fingerprint,
)
from router.routing import decide
from router.telemetry import Instruments

log = logging.getLogger("router")
Context = Any  # grpc.aio.ServicerContext; grpc ships no usable type stubs

DEFAULT_MARKUP = Decimal("0.03")
RETRY_HINT = "retry with the same idempotency_key"
RETRY_MESSAGE = f"internal error; {RETRY_HINT}"
PAN_MESSAGE = (
    "looks like a full card number (PAN); send a vault token, the BIN and the last four digits"
)


def _no_payment(payment_id: str) -> str:
    return f"payment_id: no payment {payment_id!r}"


class Invalid(Exception):
    """A request field the API refuses; the message starts with the field's name."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.code = grpc.StatusCode.INVALID_ARGUMENT


class Refused(Exception):
    """Any other deterministic refusal with its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every real card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def looks_like_pan(text: str) -> bool:
    """13-19 digits (spaces and dashes ignored) passing Luhn: a full card number."""
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits.isdigit() and luhn_ok(digits)


def validate(request: Any) -> dict[str, Any]:
    """Check every field; returns the canonical fields the idempotency fingerprint covers."""
    card = request.card
    # A PAN is refused before anything else looks at the request, and never echoed back.
    for name, value in (
        ("card.token", card.token),
        ("card.bin", card.bin),
        ("card.last4", card.last4),
    ):
        if looks_like_pan(value):
            raise Invalid(name, PAN_MESSAGE)
    if not request.idempotency_key:
        raise Invalid("idempotency_key", "required: retries must reuse the first attempt's key")
    if len(request.idempotency_key) > 255:
        raise Invalid("idempotency_key", "at most 255 characters")
    if not request.merchant_id:
        raise Invalid("merchant_id", "required")
    if not card.token:
        raise Invalid("card.token", "required")
    if not (card.bin.isdigit() and 6 <= len(card.bin) <= 8):
        raise Invalid("card.bin", "the first 6 to 8 digits of the card")
    if not (card.last4.isdigit() and len(card.last4) == 4):
        raise Invalid("card.last4", "exactly the last 4 digits of the card")
    try:
        money.validate_amount(request.amount_minor, request.currency)
    except money.MoneyError as exc:
        name = "currency" if isinstance(exc, money.CurrencyError) else "amount_minor"
        raise Invalid(name, str(exc)) from exc
    if card.currency:
        try:
            money.exponent(card.currency)
        except money.MoneyError as exc:
            raise Invalid("card.currency", str(exc)) from exc
    return {
        "merchant_id": request.merchant_id,
        "customer_id": request.customer_id,
        "amount_minor": request.amount_minor,
        "currency": request.currency,
        "card": [card.token, card.bin, card.last4, card.currency],
        "dcc_opt_in": request.dcc_opt_in,
    }


@dataclass
class RouterConfig:
    """Knobs of one router process."""

    markups: Mapping[str, Decimal] = field(default_factory=dict)
    faults: Mapping[str, Faults] = field(default_factory=dict)


class PaymentRouterService:
    """The gRPC servicer. Every dependency is passed in, so tests can wire real ones."""

    def __init__(
        self,
        flags: FlagClient,
        ledger: Ledger,
        fx: FxService,
        telemetry: Instruments,
        config: RouterConfig | None = None,
    ):
        self.flags = flags
        self.ledger = ledger
        self.fx = fx
        self.t = telemetry
        self.config = config or RouterConfig()
        self.engines: dict[str, Engine] = {"legacy": LegacyEngine(), "new": NewEngine()}
        self._rng = random.Random()

    async def Authorize(self, request: Any, context: Context) -> Any:
        """Authorize one payment exactly once per idempotency key."""
        started = time.perf_counter()
        engine_name, status = "none", grpc.StatusCode.OK
        with self.t.tracer.start_as_current_span("authorize") as span:
            try:
                response, engine_name = await self._authorize(request, span)
                return response
            except (Invalid, Refused) as exc:
                status = exc.code
                await context.abort(exc.code, str(exc))
            except Exception:
                status = grpc.StatusCode.INTERNAL
                log.exception("authorize failed")
                await context.abort(grpc.StatusCode.INTERNAL, RETRY_MESSAGE)
            finally:
                labels = {"engine": engine_name, "status": status.name}
                self.t.duration.record(time.perf_counter() - started, labels)
                self.t.requests.add(1, labels)
                span.set_attribute("payments.engine", engine_name)
                span.set_attribute("rpc.grpc.status_code", status.value[0])

    async def _authorize(self, request: Any, span: Any) -> tuple[Any, str]:
        tracer = self.t.tracer
        # 1. validate
        fingerprint = request_fingerprint(validate(request))
        merchant, key = request.merchant_id, request.idempotency_key
        # 2. replay before anything is charged
        with tracer.start_as_current_span("db.find_replay"):
            try:
                replay = await asyncio.to_thread(
                    self.ledger.find_replay, merchant, key, fingerprint
                )
            except IdempotencyConflict as exc:
                raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"idempotency_key: {exc}") from exc
        if replay is not None:
            self.t.replays.add(1)
            response = pb.AuthorizeResponse.FromString(replay.response)
            response.replayed = True
            return response, response.engine
        # 3. decide (pure; reads the snapshot swapped in by the flag stream)
        with tracer.start_as_current_span("flag_decision") as s:
            decision = decide(
                self.flags.snapshot,
                merchant_id=merchant,
                customer_id=request.customer_id,
                dcc_opt_in=request.dcc_opt_in,
            )
            s.set_attribute("payments.route_reason", decision.reason)
        span.set_attribute("payments.flag_version", decision.flag_version)
        span.set_attribute("payments.variant", decision.experiment_variant)
        # 4. route
        with tracer.start_as_current_span("engine") as s:
            s.set_attribute("payments.engine", decision.engine)
            route = await self._route(decision.engine, request, decision.shadow)
        if route.status == "FAILED":
            # Not recorded: a retry with the same key tries again (the acquirer dedups it).
            raise Refused(
                grpc.StatusCode.UNAVAILABLE,
                f"acquirer {route.acquirer}: {route.decline_reason}; {RETRY_HINT}",
            )
        # 5. FX for the DCC experiment
        quote = None
        if decision.experiment_variant:
            self.t.exposures.add(1, {"variant": decision.experiment_variant})
        if (
            decision.dcc_offered
            and request.card.currency
            and request.card.currency != request.currency
        ):
            with tracer.start_as_current_span("fx") as s:
                quote = await self._quote(request, decision.fx_kill_switch)
                s.set_attribute("payments.fx_source", quote.source if quote else "none")
        # 6. commit
        payment_id = str(uuid.uuid4())
        response = pb.AuthorizeResponse(
            payment_id=payment_id,
            status=route.status,
            decline_reason=route.decline_reason,
            engine=decision.engine,
            acquirer=route.acquirer,
            flag_version=decision.flag_version,
            experiment_variant=decision.experiment_variant,
        )
        if quote is not None:
            response.fx_quote.CopyFrom(quote.to_proto())
        record = PaymentRecord(
            payment_id=payment_id,
            idempotency_key=key,
            merchant_id=merchant,
            customer_id=request.customer_id,
            amount_minor=request.amount_minor,
            currency=request.currency,
            status=route.status,
            engine=decision.engine,
            acquirer=route.acquirer,
            card_bin=request.card.bin,
            card_last4=request.card.last4,
            flag_version=decision.flag_version,
            decline_reason=route.decline_reason,
            experiment_variant=decision.experiment_variant,
            fx=_fx_record(quote),
        )
        with tracer.start_as_current_span("db.record_payment"):
            outcome = await asyncio.to_thread(
                self.ledger.record_payment, record, fingerprint, response.SerializeToString()
            )
        if outcome.replayed:  # a concurrent duplicate won the race: answer as it did
            self.t.replays.add(1)
            response = pb.AuthorizeResponse.FromString(outcome.response)
            response.replayed = True
        return response, response.engine

    async def _route(self, engine_name: str, request: Any, shadow: bool) -> Route:
        faults = self.config.faults.get(engine_name)
        if faults is not None and faults.active:
            if faults.latency_s:
                await asyncio.sleep(faults.latency_s)
            if faults.should_fail(self._rng):
                raise Refused(
                    grpc.StatusCode.UNAVAILABLE,
                    f"engine {engine_name}: injected fault (--inject-faults)",
                )
        payment = PaymentInput(
            merchant_id=request.merchant_id,
            amount_minor=request.amount_minor,
            currency=request.currency,
            card_bin=request.card.bin,
        )
        route = self.engines[engine_name].route(payment)
        if shadow:
            # Scientist-style: the other engine decides too, with no side effects.
            other = self.engines["new" if engine_name == "legacy" else "legacy"].route(payment)
            self.t.shadow.add(1, {"kind": shadow_mismatch(route, other) or "match"})
        return route

    async def _quote(self, request: Any, kill_switch: bool) -> Quote | None:
        markup = self.config.markups.get(request.merchant_id, DEFAULT_MARKUP)
        args = (request.currency, request.card.currency, request.amount_minor, markup)
        try:
            if kill_switch:  # no network at all: answer from the table on this thread
                quote = self.fx.quote(*args, kill_switch=True)
            else:
                quote = await asyncio.to_thread(self.fx.quote, *args, kill_switch=False)
        except (FxError, money.MoneyError) as exc:
            log.info("no DCC offer: %s", exc)
            return None
        if quote.stale:
            return None  # never disclose a stale rate to a customer (payments-domain 1.5)
        return quote

    async def GetPayment(self, request: Any, context: Context) -> Any:
        """One recorded payment."""
        if not request.payment_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "payment_id: required")
        stored = await asyncio.to_thread(self.ledger.get_payment, request.payment_id)
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, _no_payment(request.payment_id))
        assert stored is not None  # abort raised
        p = stored.payment
        out = pb.Payment(
            payment_id=p.payment_id,
            idempotency_key=p.idempotency_key,
            merchant_id=p.merchant_id,
            customer_id=p.customer_id,
            amount_minor=p.amount_minor,
            currency=p.currency,
            status=p.status,
            engine=p.engine,
            acquirer=p.acquirer,
            card_bin=p.card_bin,
            card_last4=p.card_last4,
            experiment_variant=p.experiment_variant,
            conversion=stored.conversion,
        )
        out.created_at.FromDatetime(stored.created_at)
        if p.fx is not None:
            q = out.fx_quote
            q.quote_id, q.from_currency, q.to_currency = p.fx.quote_id, p.currency, p.fx.to_currency
            q.rate, q.markup, q.source = p.fx.rate, p.fx.markup, p.fx.source
            q.converted_amount_minor = p.fx.converted_amount_minor
            if p.fx.as_of is not None:
                q.as_of.FromDatetime(p.fx.as_of)
        return out

    async def RecordConversion(self, request: Any, context: Context) -> Any:
        """The experiment's outcome event: the customer accepted or abandoned the payment."""
        if request.outcome not in ("ACCEPTED", "ABANDONED"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "outcome: ACCEPTED or ABANDONED")
        try:
            result = await asyncio.to_thread(
                self.ledger.record_conversion, request.payment_id, request.outcome
            )
        except PaymentNotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, _no_payment(request.payment_id))
        except ConversionConflict as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"outcome: {exc}")
        if result.newly_recorded and result.variant:
            self.t.conversions.add(1, {"variant": result.variant, "outcome": result.outcome})
        return pb.RecordConversionResponse(
            payment_id=request.payment_id,
            experiment_variant=result.variant,
            outcome=result.outcome,
        )


def _fx_record(quote: Quote | None) -> FxQuoteRecord | None:
    if quote is None:
        return None
    return FxQuoteRecord(
        quote_id=quote.quote_id,
        to_currency=quote.to_currency,
        rate=money.format_decimal(quote.rate),
        markup=money.format_decimal(quote.markup),
        source=quote.source,
        converted_amount_minor=quote.converted_amount_minor,
        as_of=quote.as_of,
        table_version=quote.table_version,
    )


__all__ = ["PaymentRouterService", "RouterConfig"]
