"""One gRPC payment client: a channel, a deadline on every call, idempotency keys, retries that
reuse the key, and a report of every call.

It knows nothing about Locust: ``report`` is called once per RPC with Locust's request-event
fields, the `PaymentBook` learns each key's outcome, the `Recorder` every answered Authorize
(which engine served it, under which flag version). The locustfile plugs Locust in.

What counts as a failed call (``exception`` set): anything the payment's test card does not
explain. A failing card (BIN 400119) answered UNAVAILABLE with the router's "retry with the
same idempotency_key" is the documented answer, so it is reported under its own name as a
success; an approving card that is declined, a replay with another payment id, a deadline or
transport error on the last attempt are failures. An attempt that ends in an unknown outcome
(RETRYABLE) and is retried with the same key gets its own row, "Authorize [retried after
CODE]": counted and timed, but the payment fails only if its last attempt does.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from loadtest.book import Key, PaymentBook
from loadtest.drill import Recorder
from loadtest.mix import ACCEPT_RATES, FAIL_SHARE, PaymentSpec, next_payment
from ripcord_pb.ripcord.payments.v1 import payments_pb2 as pb
from ripcord_pb.ripcord.payments.v1 import payments_pb2_grpc

Report = Callable[..., None]  # Locust's request event: fire(request_type=..., name=..., ...)

AUTHORIZE = "Authorize"
RETRY = "Authorize [retry]"
REPLAY = "Authorize [replay]"
FAILING_CARD = "Authorize [failing card: UNAVAILABLE expected]"
GET = "GetPayment"
CONVERT = "RecordConversion"
ROUTER_RETRY_HINT = "retry with the same idempotency_key"
# Outcomes the client cannot know (the router may or may not have recorded the payment): retried
# with the same key, which the router's idempotency makes safe. CANCELLED is what a call racing
# a router's shutdown gets (a rolling deploy) when this client did not cancel it.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    }
)

__all__ = ["Payer", "UnexpectedAnswer", "channel_to"]


class UnexpectedAnswer(Exception):
    """The router answered, but not what the request's test card calls for."""


def channel_to(target: str) -> grpc.Channel:
    """A channel with its own TCP connection (grpcio shares one between same-target channels,
    which would pin every user of a process to one SO_REUSEPORT router process)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


@dataclass
class Sent:
    """A payment the router acknowledged, kept for replays and read-backs."""

    spec: PaymentSpec
    request: Any
    payment_id: str
    status: str


class Payer:
    """Sends payments over one channel; see the module docstring."""

    def __init__(
        self,
        target: str,
        *,
        report: Report,
        book: PaymentBook,
        recorder: Recorder,
        source: str,
        key_prefix: str,
        deadline_s: float = 2.0,
        max_retries: int = 2,
        rng: random.Random | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        label: str = "",
        fail_share: float = FAIL_SHARE,
        accept_rates: Mapping[str, float] | None = None,
    ) -> None:
        self.channel = channel_to(target)
        self.stub = payments_pb2_grpc.PaymentRouterStub(self.channel)
        self.report = report
        self.book = book
        self.recorder = recorder
        self.source = source
        self.key_prefix = key_prefix
        self.deadline_s = deadline_s
        self.max_retries = max_retries
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.label = label  # appended to every stat name (" (drill probe)")
        self.fail_share = fail_share
        self.accept_rates = dict(ACCEPT_RATES if accept_rates is None else accept_rates)
        self.recent: deque[Sent] = deque(maxlen=64)
        self.count = 0
        self.in_flight = 0

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    # ---- one RPC ---------------------------------------------------------------------

    def _rpc(self, method: Any, request: Any, *, observe: bool) -> tuple[Any, Any, float, float]:
        """(response or None, RpcError or None, start wall time, elapsed ms)."""
        token, start = self.recorder.begin() if observe else (0, time.time())
        self.in_flight += 1
        t0 = time.perf_counter()
        response = error = None
        try:
            response = method(request, timeout=self.deadline_s)
        except grpc.RpcError as exc:
            error = exc
        finally:
            elapsed = 1000 * (time.perf_counter() - t0)
            self.in_flight -= 1
            if observe:
                if response is not None and not response.replayed:
                    engine, version = response.engine, int(response.flag_version)
                    self.recorder.end(token, engine, version, self.source)
                else:
                    self.recorder.end(token)
        return response, error, start, elapsed

    def _fire(
        self,
        name: str,
        start: float,
        elapsed_ms: float,
        response: Any,
        exception: BaseException | None,
        **context: Any,
    ) -> None:
        self.report(
            request_type="grpc",
            name=name + self.label,
            response_time=elapsed_ms,
            response_length=response.ByteSize() if response is not None else 0,
            response=response,
            exception=exception,
            context=context,
            start_time=start,
        )

    # ---- payments --------------------------------------------------------------------

    def new_key(self) -> str:
        """A fresh idempotency key, unique across processes and runs."""
        self.count += 1
        return f"{self.key_prefix}-{self.count}"

    @staticmethod
    def request_for(spec: PaymentSpec, key: str) -> Any:
        """The AuthorizeRequest for ``spec``."""
        return pb.AuthorizeRequest(
            idempotency_key=key,
            merchant_id=spec.merchant_id,
            customer_id=spec.customer_id,
            amount_minor=spec.amount_minor,
            currency=spec.currency,
            card=pb.Card(
                token=spec.card_token,
                bin=spec.card_bin,
                last4=spec.card_last4,
                currency=spec.card_currency,
            ),
            dcc_opt_in=spec.dcc_opt_in,
        )

    def pay(self, spec: PaymentSpec | None = None) -> Sent | None:
        """One payment with a fresh key, retried (same key) on UNAVAILABLE, deadline or
        INTERNAL; returns it when acknowledged."""
        spec = spec or next_payment(self.rng, fail_share=self.fail_share)
        key = self.new_key()
        request = self.request_for(spec, key)
        book_key: Key = (spec.merchant_id, key)
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.sleep(0.05 * 2**attempt * (0.5 + self.rng.random()))
            response, error, start, elapsed = self._rpc(self.stub.Authorize, request, observe=True)
            name = RETRY if attempt else AUTHORIZE
            if response is not None:
                problem = self.book.ack(book_key, response.payment_id)
                expected = spec.expected_status
                if problem is None and response.status != expected:
                    problem = f"{spec.kind} card {spec.card_bin} answered {response.status}"
                if problem is None and response.replayed and attempt == 0:
                    problem = "a fresh key was answered as a replay"
                exc = UnexpectedAnswer(problem) if problem else None
                self._fire(name, start, elapsed, response, exc, key=key, engine=response.engine)
                sent = Sent(spec, request, response.payment_id, response.status)
                self.recent.append(sent)
                if response.experiment_variant:
                    self.convert(response.payment_id, response.experiment_variant)
                return sent
            assert error is not None
            code = error.code()
            refused = (
                code == grpc.StatusCode.UNAVAILABLE
                and ROUTER_RETRY_HINT in (error.details() or "")
                and "acquirer" in (error.details() or "")
            )
            if refused:
                self.book.refuse(book_key)
            else:
                self.book.lose_track(book_key)
            if refused and spec.kind == "fail":
                self._fire(FAILING_CARD, start, elapsed, None, None, key=key, code=code.name)
                continue
            if code not in RETRYABLE:
                self._fire(name, start, elapsed, None, error, key=key, code=code.name)
                return None  # not retryable: INVALID_ARGUMENT, ALREADY_EXISTS, ...
            if attempt == self.max_retries:
                self._fire(name, start, elapsed, None, error, key=key, code=code.name)
                return None
            # An attempt the client recovers from by retrying with the same key: its own row
            # in the stats (count and latency visible), not a failed payment. The payment fails
            # only if the last attempt does.
            self._fire(f"{AUTHORIZE} [retried after {code.name}]", start, elapsed, None, None,
                       key=key, code=code.name)  # fmt: skip
        return None

    def replay(self) -> None:
        """Send an acknowledged payment again with its key (a client that lost the answer):
        the router must replay the very same payment."""
        if not self.recent:
            return
        sent = self.rng.choice(self.recent)
        response, error, start, elapsed = self._rpc(
            self.stub.Authorize, sent.request, observe=False
        )
        if response is None:
            self._fire(REPLAY, start, elapsed, None, error, key=sent.request.idempotency_key)
            return
        problem = self.book.ack((sent.spec.merchant_id, sent.request.idempotency_key),
                                response.payment_id)  # fmt: skip
        if problem is None and not response.replayed:
            problem = f"payment {sent.payment_id} was not answered as a replay"
        if problem is None and response.status != sent.status:
            problem = f"replay of {sent.payment_id} answered {response.status}, not {sent.status}"
        exc = UnexpectedAnswer(problem) if problem else None
        self._fire(REPLAY, start, elapsed, response, exc, key=sent.request.idempotency_key)

    def read_back(self) -> None:
        """GetPayment of an acknowledged payment: the stored payment matches the request."""
        if not self.recent:
            return
        sent = self.rng.choice(self.recent)
        request = pb.GetPaymentRequest(payment_id=sent.payment_id)
        response, error, start, elapsed = self._rpc(self.stub.GetPayment, request, observe=False)
        exc: BaseException | None = error
        if response is not None:
            s = sent.spec
            got = (response.amount_minor, response.currency, response.status, response.card_last4)
            want = (s.amount_minor, s.currency, sent.status, s.card_last4)
            if got != want:
                exc = UnexpectedAnswer(f"payment {sent.payment_id} stored as {got}, sent {want}")
        self._fire(GET, start, elapsed, response, exc, payment_id=sent.payment_id)

    def convert(self, payment_id: str, variant: str) -> None:
        """The enrolled customer completed (``accept_rates[variant]``) or abandoned the checkout;
        both arms report, or the experiment would compare treatment against nothing."""
        rate = self.accept_rates.get(variant, ACCEPT_RATES.get(variant, 0.7))
        outcome = "ACCEPTED" if self.rng.random() < rate else "ABANDONED"
        request = pb.RecordConversionRequest(payment_id=payment_id, outcome=outcome)
        response, error, start, elapsed = self._rpc(
            self.stub.RecordConversion, request, observe=False
        )
        self._fire(CONVERT, start, elapsed, response, error, payment_id=payment_id)
